"""The console's model pages: a model, its layers, samples, Try it and exports; the registry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, Query, Request, UploadFile
from fastapi import Path as PathPart
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service import jobs
from service.api.deps import SessionDep
from service.datasets import edits
from service.datasets import service as datasets
from service.datasets.spec import ImageId
from service.exports import service as exports
from service.exports.spec import EXPORT_FORMATS, ExportRequest
from service.ml.multilabel import ranking_metric
from service.models import registry
from service.models import service as models
from service.predictions.serving import Image
from service.problems import NotFound, Problem
from service.storage.pages import Page
from service.storage.tables import MAX_INTEGER, NAME_LENGTH, Dataset, TrainedModel
from service.web.common import (
    console_routers,
    failed,
    redirect_to_job,
)
from service.web.dataset_pages import recent_versions
from service.web.monitoring_pages import monitoring_context, optional_evaluation
from service.web.render import page

pages, writes = console_routers()

# -- models -------------------------------------------------------------------------------------


@pages.get("/models", response_class=HTMLResponse)
def model_list(request: Request, session: SessionDep, cursor: str | None = None) -> HTMLResponse:
    listed = models.list_models(session, Page(limit=25, cursor=cursor))
    return page(request, "models.html", page_of=listed)


@pages.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, session: SessionDep, model_id: str) -> HTMLResponse:
    model = models.get_model(session, model_id)
    evaluation = optional_evaluation(session, model_id)
    job = jobs.get_job(session, model.job_id)[0] if model.job_id else None
    source = (job.spec.get("backbone") or {}).get("weights") if job else None
    aliases = registry.aliases_of(session, model.name)
    return page(
        request,
        "model.html",
        model=model,
        evaluation=evaluation,
        job=job,
        source=source,
        layers=models.model_layers(session, model_id)["layers"],
        aliases=[alias for alias, version in aliases.items() if version == model.version],
        dataset_versions=_versions_of(session, model.dataset_id),
        metric=ranking_metric(model.thresholds is not None),
        **_export_rows(session, model_id),
        **monitoring_context(request, session, model_id, evaluation),
    )


def _versions_of(session: DbSession, dataset_id: str | None) -> list[Any]:
    """The retrain form's choices: the model's dataset's newest versions, newest first."""
    dataset = session.get(Dataset, dataset_id) if dataset_id is not None else None
    return recent_versions(session, dataset) if dataset is not None else []


def _export_rows(session: DbSession, model_id: str) -> dict[str, Any]:
    """Every format with its export, if any: status, error, report (the parity figures) and
    the bar it is held to; `converting` while one is queued or running (the table polls)."""
    made = {record.format: (record, job) for record, job in exports.list_exports(session, model_id)}
    rows = []
    for format in EXPORT_FORMATS:
        record, job = made.get(format, (None, None))
        status, error = exports.export_status(job) if record is not None else (None, None)
        rows.append(
            {
                "format": format,
                "record": record,
                "status": status,
                "error": error,
                "report": record.report if record is not None else None,
                "bar": exports.PARITY_BARS[format],
            }
        )
    return {
        "exports": rows,
        "converting": any(row["status"] in ("queued", "running") for row in rows),
        "onnx_unsupported": exports.onnx_unsupported(),
    }


@pages.get("/models/{model_id}/exports", response_class=HTMLResponse)
def model_exports(request: Request, session: SessionDep, model_id: str) -> HTMLResponse:
    """The model page's exports table, polled while an export converts."""
    model = models.get_model(session, model_id)
    return page(request, "partials/exports.html", model=model, **_export_rows(session, model_id))


@writes.post("/models/{model_id}/exports/{format}", response_class=HTMLResponse)
def export_create(
    request: Request,
    session: SessionDep,
    model_id: str,
    format: Annotated[str, PathPart(max_length=20)],
) -> Response:
    """Queue an export job, as POST /models/{id}/exports does, and follow it on its page."""
    try:
        body = ExportRequest.model_validate({"format": format})
    except ValidationError as error:
        return failed(request, error)
    record = exports.request_export(session, model_id, body)
    assert record.job_id is not None
    return redirect_to_job(record.job_id)


@writes.post("/models/{model_id}/exports/{format}/delete")
def export_delete(
    session: SessionDep, model_id: str, format: Annotated[str, PathPart(max_length=20)]
) -> Response:
    """Delete an export (a queued or running one's job is cancelled), so it can be made again."""
    exports.delete_export(session, model_id, format)
    return Response(status_code=204, headers={"HX-Refresh": "true"})


@pages.get("/models/{model_id}/layers", response_class=HTMLResponse)
def model_layer_rows(
    request: Request, session: SessionDep, model_id: str, trainable: bool | None = None
) -> HTMLResponse:
    layers = models.model_layers(session, model_id, trainable)["layers"]
    return page(request, "partials/model_layers.html", layers=layers)


@pages.get("/models/{model_id}/samples", response_class=HTMLResponse)
def model_samples(
    request: Request,
    session: SessionDep,
    model_id: str,
    label: Annotated[str, Query(max_length=NAME_LENGTH)],
    predicted: Annotated[str, Query(max_length=NAME_LENGTH)],
) -> HTMLResponse:
    model = models.get_model(session, model_id)
    samples = models.evaluation_samples(session, model_id, label=label, predicted=predicted)
    return page(
        request,
        "partials/samples.html",
        model=model,
        samples=samples,
        label=label,
        predicted=predicted,
    )


def _sample_of(
    session: DbSession, model_id: str, image_id: int
) -> tuple[TrainedModel, str, dict[str, Any]]:
    """The model, its dataset and its validation sample of image `image_id`; NotFound when
    the model's evaluation holds no such image."""
    model = models.get_model(session, model_id)
    samples = models.evaluation_samples(session, model_id, label=None, predicted=None)
    sample = next((entry for entry in samples if entry["image_id"] == image_id), None)
    if sample is None or model.dataset_id is None:
        raise NotFound(f"image {image_id} is not one of model {model_id}'s validation images")
    return model, model.dataset_id, sample


@writes.post("/models/{model_id}/samples/{image_id}/relabel", response_class=HTMLResponse)
def sample_relabel(
    request: Request, session: SessionDep, model_id: str, image_id: ImageId
) -> HTMLResponse:
    """Relabel a validation image to the class the model gave it, in its dataset's latest
    version, as PATCH /datasets/{id}/images/{image_id} does (one edit, one new version)."""
    _, dataset_id, sample = _sample_of(session, model_id, image_id)
    edits.relabel_image(session, dataset_id, image_id, sample["predicted"])
    return _edited(request, session, dataset_id, f"Relabelled as {sample['predicted']}")


@writes.post("/models/{model_id}/samples/{image_id}/remove", response_class=HTMLResponse)
def sample_remove(
    request: Request, session: SessionDep, model_id: str, image_id: ImageId
) -> HTMLResponse:
    """Leave a validation image out of its dataset's next version, as DELETE
    /datasets/{id}/images/{image_id} does."""
    _, dataset_id, _ = _sample_of(session, model_id, image_id)
    edits.delete_image(session, dataset_id, image_id)
    return _edited(request, session, dataset_id, "Removed")


def _edited(request: Request, session: DbSession, dataset_id: str, done: str) -> HTMLResponse:
    dataset = datasets.get_dataset(session, dataset_id)
    return page(request, "partials/edited.html", dataset=dataset, done=done)


@writes.post("/models/{model_id}/predict", response_class=HTMLResponse)
async def model_try(
    request: Request,
    model_id: str,
    files: list[UploadFile],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
    explain: Annotated[bool, Form()] = False,
) -> HTMLResponse:
    images = []
    for number, upload in enumerate(files):
        name = upload.filename or f"image {number + 1}"
        images.append(Image(f"files[{number}] {name!r}", name, await upload.read()))
    serving = request.app.state.serving
    try:
        if explain:
            result = await serving.explain(model_id, images, top_k)
        else:
            result = await serving.classify(model_id, images)
    except Problem as problem:
        return failed(request, problem)
    tops = result.top(min(top_k, len(result.classes)))
    answers = list(zip(images, tops, result.unknown(), strict=True))
    return page(request, "partials/predictions.html", answers=answers)


@writes.post("/models/{model_id}/delete")
def model_delete(request: Request, session: SessionDep, model_id: str) -> Response:
    models.delete_model(session, model_id)
    request.app.state.serving.evict(model_id)
    return Response(status_code=204, headers={"HX-Redirect": "/console/models"})


# -- the registry: named models, their versions and aliases -----------------------------------


@pages.get("/registry", response_class=HTMLResponse)
def registry_list(request: Request, session: SessionDep) -> HTMLResponse:
    return page(request, "registry.html", names=registry.list_names(session))


@pages.get("/registry/{name:path}", response_class=HTMLResponse)
def registry_page(request: Request, session: SessionDep, name: str) -> HTMLResponse:
    """A named model: its versions (with their models' metrics) and aliases, and the form
    that sets, moves and removes them."""
    return page(
        request,
        "registry_name.html",
        named=registry.named_model(session, name),
        pattern=registry.ALIAS_PATTERN,
        rule=registry.ALIAS_RULE,
    )


@writes.post("/registry/{name:path}/aliases", response_class=HTMLResponse)
def alias_set(
    request: Request,
    session: SessionDep,
    name: str,
    alias: Annotated[str, Form(max_length=NAME_LENGTH)],
    version: Annotated[str, Form(max_length=20)],
) -> Response:
    """Set an alias, or move it, as PUT /registry/{name}/aliases/{alias} does."""
    number = version.strip()
    if not number.isdigit() or not 1 <= int(number) <= MAX_INTEGER:
        message = f"{version!r} is not a version: pick one of the versions listed"
        return page(request, "partials/error.html", 422, message=message)
    registry.set_alias(session, name, alias.strip(), int(number))
    return Response(status_code=204, headers={"HX-Refresh": "true"})


@writes.post("/registry/{name:path}/aliases/{alias}/delete")
def alias_delete(session: SessionDep, name: str, alias: str) -> Response:
    """Remove an alias, as DELETE /registry/{name}/aliases/{alias} does; its version stays."""
    registry.delete_alias(session, name, alias)
    return Response(status_code=204, headers={"HX-Refresh": "true"})
