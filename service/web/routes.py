"""The console: server-rendered pages over the same service functions as the JSON routes.

Pages are whole documents; htmx swaps the fragments (the layer table of a job preview, a
confusion-matrix cell's images, predictions, a dataset's health report for another split, the
new-job form's leakage warning, a model's exports while they convert). Live views read
`/jobs/{id}/events`. Writes come from the service's own pages only: with a session they carry
its CSRF token. A Problem a route does not catch is answered by the console's handler
(service/web/__init__.py): for htmx, partials/error.html with the API's status for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathPart
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service import jobs, reports
from service.advice import service as advice
from service.advice.kind import ADVICE
from service.advice.schemas import AdviceResult
from service.advice.spec import AdviceRequest
from service.api.deps import SessionDep, SettingsDep
from service.api.errors import status_of
from service.backbones import BACKBONES
from service.datasets import imports
from service.datasets import service as datasets
from service.datasets.schemas import DatasetReport
from service.datasets.spec import ImportRequest
from service.exports import service as exports
from service.exports.kind import EXPORT
from service.exports.spec import EXPORT_FORMATS, ExportRequest
from service.jobs import JobStatus
from service.jobs import presence as workers
from service.models import registry, weights_files
from service.models import service as models
from service.predictions import batch as predictions
from service.predictions.kind import PREDICT
from service.problems import Conflict, Problem
from service.security import COOKIE, CSRF_HEADER, Session, csrf_matches, key_matches, new_session
from service.serving import Image
from service.storage.pages import Page
from service.training import service as training
from service.training.spec import JobSpec
from service.web.forms import (
    SplitQuery,
    advice_from_form,
    block_of,
    head_costs,
    spec_from_form,
    split_query,
)
from service.web.render import console_session, page

SessionUser = Annotated[Session | None, Depends(console_session)]


def console_write(request: Request, user: SessionUser) -> None:
    """A change from a page: with a session, it must carry the page's CSRF token."""
    if user is None:
        return
    sent = request.headers.get(CSRF_HEADER)
    if not csrf_matches(request.app.state.settings, user, sent):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER}: reload the page")


router = APIRouter(include_in_schema=False)
pages = APIRouter(prefix="/console", dependencies=[Depends(console_session)])
writes = APIRouter(prefix="/console", dependencies=[Depends(console_write)])

EXPIRED_NOTICE_SECONDS = 7 * 24 * 3600
# Query text, as typed into a form: parsed by forms.split_query, which names what is wrong.
Text = Annotated[str, Query(max_length=40)]


def _writing_session(request: Request) -> Iterator[DbSession]:
    """A GET's transaction that may write: the health report measures images stored before
    their facts were kept, and SQLite cannot turn a read transaction into a writing one once
    another writer has committed (as GET /datasets/{id}/report does)."""
    with request.app.state.database.session(write=True) as session:
        yield session


WritingSessionDep = Annotated[DbSession, Depends(_writing_session, scope="function")]


def _failed(request: Request, error: Exception) -> HTMLResponse:
    """A write that did not work, as a fragment naming why: the spec's own words for what
    fails validation, the problem's status otherwise (404 for what does not exist)."""
    if isinstance(error, ValidationError):
        return page(request, "partials/error.html", 422, message=jobs.what_fails(error))
    assert isinstance(error, Problem)
    return page(request, "partials/error.html", status_of(error), message=str(error))


def _redirect_to_job(job_id: str) -> Response:
    return Response(status_code=204, headers={"HX-Redirect": f"/console/jobs/{job_id}"})


async def _form_lists(request: Request) -> dict[str, list[str]]:
    """The posted form, every field as the list of its values (a checkbox group repeats)."""
    form = await request.form()
    return {key: [str(value) for value in form.getlist(key)] for key in form}


# -- login ------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    return target if target.startswith("/console") and "//" not in target else "/console"


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/console", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(
    request: Request, settings: SettingsDep, next: str = "/console", expired: bool = False
) -> Response:
    if settings.api_key is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    message = "Your session has expired: sign in again." if expired else None
    return page(request, "login.html", next=_safe_next(next), message=message)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=2000)] = "/console",
) -> Response:
    if settings.api_key is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    if not key_matches(settings, api_key):
        return page(
            request, "login.html", 401, next=_safe_next(next), message="That is not the API key."
        )
    _, cookie = new_session(settings)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        # Kept past its expiry, so that the page can say "expired" rather than nothing.
        max_age=settings.session_seconds + EXPIRED_NOTICE_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", dependencies=[Depends(console_write)])
def logout() -> Response:
    response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    response.delete_cookie(COOKIE)
    return response


# -- overview and datasets ------------------------------------------------------------------


@pages.get("", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    return page(
        request,
        "home.html",
        datasets=datasets.list_datasets(session, Page(limit=5)).rows,
        jobs=jobs.list_jobs(session, Page(limit=5)).rows,
        models=models.list_models(session, Page(limit=5)).rows,
        # The workers' section: what GET /workers lists, the stopped ones left out.
        workers=[
            view
            for view in workers.list_workers(session, lease_seconds=settings.lease_seconds)
            if view.status != workers.WorkerStatus.STOPPED
        ],
    )


@pages.get("/datasets", response_class=HTMLResponse)
def dataset_list(
    request: Request, session: SessionDep, settings: SettingsDep, cursor: str | None = None
) -> HTMLResponse:
    listed = datasets.list_datasets(session, Page(limit=25, cursor=cursor))
    importing = settings.import_root is not None  # the import form only where it can work
    return page(request, "datasets.html", page_of=listed, importing=importing)


@writes.post("/datasets", response_class=HTMLResponse)
def dataset_upload(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    file: UploadFile,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    try:
        dataset = datasets.create_dataset(
            session,
            upload=file.file,
            filename=file.filename,
            name=name or None,
            limits=datasets.upload_limits(settings),
        )
    except Problem as problem:
        return _failed(request, problem)
    return Response(status_code=201, headers={"X-Location": f"/console/datasets/{dataset.id}"})


@writes.post("/datasets/import", response_class=HTMLResponse)
def dataset_import(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    path: Annotated[str, Form(max_length=4000)],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    """Queue a server-side import (service/imports.py) and show its job's page."""
    try:
        body = ImportRequest(path=path, name=name or None)
        job = imports.submit_import(session, settings, body)
    except (ValidationError, Problem) as error:
        return _failed(request, error)
    return _redirect_to_job(job.id)


@writes.post("/datasets/{dataset_id}/images", response_class=HTMLResponse)
def dataset_add_images(
    request: Request, session: SessionDep, settings: SettingsDep, dataset_id: str, file: UploadFile
) -> Response:
    """Append a zip to the dataset (as POST /datasets/{id}/images), then reload its page."""
    try:
        datasets.append_images(
            session,
            dataset_id,
            upload=file.file,
            filename=file.filename,
            limits=datasets.upload_limits(settings),
        )
    except Problem as problem:  # nothing of the zip was kept: append_images' savepoint
        return page(request, "partials/error.html", status_of(problem), message=str(problem))
    return Response(status_code=201, headers={"X-Location": f"/console/datasets/{dataset_id}"})


@pages.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(
    request: Request,
    session: WritingSessionDep,
    dataset_id: str,
    seed: Text = "",
    validation_split: Text = "",
    input_size: Text = "",
) -> HTMLResponse:
    """The dataset: its classes, its health report (for the split asked, by default a job's
    default one), its latest strategy advice and the form that asks for more."""
    dataset = datasets.get_dataset(session, dataset_id)
    query = split_query(seed, validation_split, input_size)
    return page(
        request,
        "dataset.html",
        dataset=dataset,
        samples=_thumbnails(session, dataset_id, [entry["name"] for entry in dataset.classes]),
        query=query,
        report=_report(session, dataset_id, query),
        advice=_latest_advice(session, dataset_id),
        **_backbone_choices(session),
    )


@pages.get("/datasets/{dataset_id}/health", response_class=HTMLResponse)
def dataset_health(
    request: Request,
    session: WritingSessionDep,
    dataset_id: str,
    seed: Text = "",
    validation_split: Text = "",
    input_size: Text = "",
) -> HTMLResponse:
    """The health section of the dataset page, for the seed, split and input size asked."""
    query = split_query(seed, validation_split, input_size)
    report = _report(session, dataset_id, query)
    return page(request, "partials/health.html", dataset_id=dataset_id, report=report)


def _report(session: DbSession, dataset_id: str, query: SplitQuery) -> DatasetReport:
    return reports.dataset_report(
        session,
        dataset_id,
        seed=query.seed,
        validation_split=query.validation_split,
        input_size=query.input_size,
    )


def _latest_advice(session: DbSession, dataset_id: str) -> dict[str, Any] | None:
    """The dataset's newest advice with its job's status, and its result once measured."""
    rows = advice.list_advice(session, dataset_id, Page(limit=1)).rows
    if not rows:
        return None
    record, job = rows[0]
    state, error = advice.advice_status(job)
    return {
        "record": record,
        "job": job,
        "status": state,
        "error": error,
        "result": AdviceResult.model_validate(record.result) if record.result else None,
    }


async def _advice_body(request: Request) -> dict[str, Any]:
    return advice_from_form(await _form_lists(request))


@writes.post("/datasets/{dataset_id}/advice", response_class=HTMLResponse)
def advice_create(
    request: Request,
    session: SessionDep,
    dataset_id: str,
    body: Annotated[dict[str, Any], Depends(_advice_body)],
) -> Response:
    """Queue an advice job for the dataset, and follow it on its job page."""
    try:
        record = advice.request_advice(session, dataset_id, AdviceRequest.model_validate(body))
    except (ValidationError, Problem) as error:
        return _failed(request, error)
    assert record.job_id is not None
    return _redirect_to_job(record.job_id)


@writes.post("/datasets/{dataset_id}/advice/{advice_id}/train", response_class=HTMLResponse)
def advice_train(
    request: Request, session: SessionDep, dataset_id: str, advice_id: str
) -> Response:
    """Queue the training job the advice's spec describes, as POST /jobs would."""
    try:
        record, _ = advice.get_advice(session, dataset_id, advice_id)
        if record.result is None:
            raise Conflict(f"advice {advice_id} has no result yet: its job has not succeeded")
        job = training.submit(session, JobSpec.model_validate(record.result["spec"]))
    except (ValidationError, Problem) as error:
        return _failed(request, error)
    return _redirect_to_job(job.id)


def _backbone_choices(session: DbSession) -> dict[str, list[Any]]:
    """What a backbone's form offers: every backbone, and the stored models and weights files
    its weights can come from."""
    return {
        "backbones": list(BACKBONES.values()),
        "models": models.list_models(session, Page(limit=100)).rows,
        "weights": weights_files.list_weights(session, Page(limit=100)).rows,
    }


def _thumbnails(session: Any, dataset_id: str, labels: list[str]) -> dict[str, list[Any]]:
    """A few images per class, for the dataset page."""
    return {
        label: datasets.list_images(session, dataset_id, label=label, limit=6, after=None)[0]
        for label in labels
    }


@writes.post("/datasets/{dataset_id}/delete")
def dataset_delete(session: SessionDep, dataset_id: str) -> Response:
    datasets.delete_dataset(session, dataset_id)
    return Response(status_code=204, headers={"HX-Redirect": "/console/datasets"})


# -- jobs ---------------------------------------------------------------------------------------


@pages.get("/jobs", response_class=HTMLResponse)
def job_list(
    request: Request,
    session: SessionDep,
    status: JobStatus | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    listed = jobs.list_jobs(session, Page(limit=25, cursor=cursor), status)
    return page(request, "jobs.html", page_of=listed, status=status, statuses=list(JobStatus))


@pages.get("/jobs/new", response_class=HTMLResponse)
def job_form(request: Request, session: SessionDep, dataset_id: str | None = None) -> HTMLResponse:
    return page(
        request,
        "job_new.html",
        dataset_id=dataset_id,
        datasets=datasets.list_datasets(session, Page(limit=100)).rows,
        **_backbone_choices(session),
    )


@pages.get("/jobs/leakage", response_class=HTMLResponse)
def job_leakage(
    request: Request,
    session: WritingSessionDep,
    dataset_id: Annotated[str, Query(max_length=100)] = "",
    seed: Text = "",
    validation_split: Text = "",
) -> HTMLResponse:
    """The new-job form's warning: images whose copies the job's split would put on both
    sides. Empty when none, and while the form names no dataset or an out-of-bounds split
    (the form's own submission says what is wrong with those)."""
    try:
        query = split_query(seed, validation_split)
        report = _report(session, dataset_id, query) if dataset_id else None
    except Problem:
        report = None
    leakage = report.leakage if report is not None and report.leakage.count else None
    return page(request, "partials/leakage.html", dataset_id=dataset_id, leakage=leakage)


async def _form_spec(request: Request) -> dict[str, Any]:
    return spec_from_form(await _form_lists(request))


@writes.post("/jobs/preview", response_class=HTMLResponse)
def job_preview(
    request: Request, session: SessionDep, body: Annotated[dict[str, Any], Depends(_form_spec)]
) -> HTMLResponse:
    try:
        spec = JobSpec.model_validate(body)
        stages = training.preview(session, spec)
    except (ValidationError, Problem) as error:
        return _failed(request, error)
    rows = [{**row, "block": _block(row)} for row in stages[-1]["layers"]]
    backbone_rows = [row for row in rows if row["block"] not in ("input", "head")]
    classes = len(datasets.get_dataset(session, spec.dataset_id).classes)
    units = spec.head.dense[0] if spec.head.dense else classes
    return page(
        request,
        "partials/layers_preview.html",
        stages=stages,
        rows=rows,
        costs=head_costs(backbone_rows[-1]["output_shape"], units) if backbone_rows else {},
        backbone_names=[row["name"] for row in backbone_rows],
    )


def _block(row: dict[str, Any]) -> str:
    """Where a layer sits: the backbone's block, or the input side, or the head."""
    if "/" in row["path"]:
        return block_of(row["name"])
    return "head" if row["name"].startswith(("head_", "predictions")) else "input"


@writes.post("/jobs", response_class=HTMLResponse)
def job_create(
    request: Request, session: SessionDep, body: Annotated[dict[str, Any], Depends(_form_spec)]
) -> Response:
    try:
        job = training.submit(session, JobSpec.model_validate(body))
    except (ValidationError, Problem) as error:
        return _failed(request, error)
    return _redirect_to_job(job.id)


@pages.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, session: SessionDep, job_id: str) -> HTMLResponse:
    job, model_id = jobs.get_job(session, job_id)
    finished = job.status in jobs.FINISHED
    return page(
        request,
        "job.html",
        job=job,
        model_id=model_id,
        finished=finished,
        advice=job.kind == ADVICE.name,  # measures a dataset: no epochs, no model
        # converts a model ({"model_id", "format"}): no epochs; its figures are on the model page
        export=job.spec if job.kind == EXPORT.name else None,
        # classifies a batch ({"prediction_id", "model_id", …}): its results download here
        batch=job.spec if job.kind == PREDICT.name else None,
    )


@writes.post("/jobs/{job_id}/cancel")
def job_cancel(session: SessionDep, job_id: str) -> Response:
    job, _ = jobs.get_job(session, job_id)
    jobs.cancel(session, job)
    return Response(status_code=204, headers={"HX-Refresh": "true"})


# -- models -------------------------------------------------------------------------------------


@pages.get("/models", response_class=HTMLResponse)
def model_list(request: Request, session: SessionDep, cursor: str | None = None) -> HTMLResponse:
    listed = models.list_models(session, Page(limit=25, cursor=cursor))
    return page(request, "models.html", page_of=listed)


@pages.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, session: SessionDep, model_id: str) -> HTMLResponse:
    model = models.get_model(session, model_id)
    try:
        evaluation: dict[str, Any] | None = models.model_evaluation(session, model_id)
    except Problem:
        evaluation = None
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
        **_export_rows(session, model_id),
    )


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
        return _failed(request, error)
    record = exports.request_export(session, model_id, body)
    assert record.job_id is not None
    return _redirect_to_job(record.job_id)


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
    label: Annotated[str, Query(max_length=200)],
    predicted: Annotated[str, Query(max_length=200)],
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
        return _failed(request, problem)
    tops = result.top(min(top_k, len(result.classes)))
    return page(request, "partials/predictions.html", answers=list(zip(images, tops, strict=True)))


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
    alias: Annotated[str, Form(max_length=200)],
    version: Annotated[str, Form(max_length=20)],
) -> Response:
    """Set an alias, or move it, as PUT /registry/{name}/aliases/{alias} does."""
    number = version.strip()
    if not number.isdigit() or not 1 <= int(number) <= 2**31 - 1:
        message = f"{version!r} is not a version: pick one of the versions listed"
        return page(request, "partials/error.html", 422, message=message)
    registry.set_alias(session, name, alias.strip(), int(number))
    return Response(status_code=204, headers={"HX-Refresh": "true"})


@writes.post("/registry/{name:path}/aliases/{alias}/delete")
def alias_delete(session: SessionDep, name: str, alias: str) -> Response:
    """Remove an alias, as DELETE /registry/{name}/aliases/{alias} does; its version stays."""
    registry.delete_alias(session, name, alias)
    return Response(status_code=204, headers={"HX-Refresh": "true"})


# -- batch prediction ---------------------------------------------------------------------------


@pages.get("/predictions", response_class=HTMLResponse)
def batch_list(
    request: Request,
    session: SessionDep,
    cursor: str | None = None,
    model_id: Annotated[str | None, Query(max_length=32)] = None,
) -> HTMLResponse:
    """The batch predictions, newest first, and the form that asks for one."""
    return page(
        request,
        "predictions.html",
        page_of=predictions.list_batches(session, Page(limit=25, cursor=cursor)),
        models=models.list_models(session, Page(limit=100)).rows,
        datasets=datasets.list_datasets(session, Page(limit=100)).rows,
        chosen=model_id,
        status_of=predictions.batch_status,
    )


@writes.post("/predictions", response_class=HTMLResponse)
def batch_create(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    model_id: Annotated[str, Form(max_length=32)],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
    explain: Annotated[bool, Form()] = False,
    dataset_id: Annotated[str, Form(max_length=32)] = "",
    file: UploadFile | None = None,
) -> Response:
    """Queue a batch prediction as POST /predictions does, and follow its job."""
    upload = file if file is not None and file.filename else None  # no file chosen: ""
    try:
        asked = predictions.BatchRequest(
            model=registry.reference(model_id=model_id or None),
            top_k=top_k,
            explain=explain,
            dataset_id=dataset_id or None,
            archive=upload.file.read() if upload is not None else None,
            filename=upload.filename if upload is not None else None,
        )
        record = predictions.request_batch(session, asked, datasets.upload_limits(settings))
    except Problem as problem:
        return _failed(request, problem)
    return Response(status_code=201, headers={"X-Location": f"/console/jobs/{record.job_id}"})


router.include_router(pages)
router.include_router(writes)
