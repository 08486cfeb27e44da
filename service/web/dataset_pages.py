"""The console's overview and dataset pages: upload, import, append, the health report, advice;
the dataset's versions with their diffs, and its edits (the image grid's selection, the health
report's actions)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service import jobs
from service.advice import service as advice
from service.advice.schemas import AdviceResult
from service.advice.spec import AdviceRequest
from service.api.deps import SessionDep, SettingsDep
from service.api.errors import status_of
from service.backbones import BACKBONES
from service.datasets import actions, edits, imports, versions
from service.datasets import report as reports
from service.datasets import service as datasets
from service.datasets.actions import ReportAction
from service.datasets.schemas import DatasetReport
from service.datasets.spec import DatasetEdit, ImportRequest
from service.jobs import presence as workers
from service.models import service as models
from service.models import weights_files
from service.problems import Conflict, Problem
from service.storage.pages import Page
from service.storage.tables import MAX_INTEGER, NAME_LENGTH, Dataset, DatasetVersion
from service.training import service as training
from service.training.spec import JobSpec
from service.web.common import (
    Text,
    WritingSessionDep,
    console_routers,
    failed,
    form_lists,
    redirect_to_job,
)
from service.web.forms import (
    SplitQuery,
    advice_from_form,
    edit_from_form,
    split_query,
)
from service.web.render import page

pages, writes = console_routers()

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
    name: Annotated[str | None, Form(max_length=NAME_LENGTH)] = None,
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
        return failed(request, problem)
    return Response(status_code=201, headers={"X-Location": f"/console/datasets/{dataset.id}"})


@writes.post("/datasets/import", response_class=HTMLResponse)
def dataset_import(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    path: Annotated[str, Form(max_length=4000)],
    name: Annotated[str | None, Form(max_length=NAME_LENGTH)] = None,
) -> Response:
    """Queue a server-side import (service/datasets/imports.py) and show its job's page."""
    try:
        body = ImportRequest(path=path, name=name or None)
        job = imports.submit_import(session, settings, body)
    except (ValidationError, Problem) as error:
        return failed(request, error)
    return redirect_to_job(job.id)


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
        report=health_report(session, dataset_id, query),
        advice=_latest_advice(session, dataset_id),
        versions=recent_versions(session, dataset),
        **_image_grid(session, dataset, dataset.version, None, None),
        **backbone_choices(session),
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
    report = health_report(session, dataset_id, query)
    return page(request, "partials/health.html", dataset_id=dataset_id, report=report)


def health_report(
    session: DbSession, dataset_id: str, query: SplitQuery, version: int | None = None
) -> DatasetReport:
    return reports.dataset_report(
        session,
        dataset_id,
        seed=query.seed,
        validation_split=query.validation_split,
        input_size=query.input_size,
        version=version,
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
    return advice_from_form(await form_lists(request))


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
        return failed(request, error)
    assert record.job_id is not None
    return redirect_to_job(record.job_id)


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
        return failed(request, error)
    return redirect_to_job(job.id)


def backbone_choices(session: DbSession) -> dict[str, list[Any]]:
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


# -- versions and edits: "fix your data" ---------------------------------------------------------

VERSIONS_SHOWN = 20  # the newest; GET /datasets/{id}/versions lists them all
GRID_PAGE = 60  # images per page of the grid
DIFF_SHOWN = 200  # entries per list of a diff


def recent_versions(session: DbSession, dataset: Dataset) -> list[DatasetVersion]:
    """The dataset's newest versions, newest first (numbered 1 to its latest, none missing)."""
    after = max(0, dataset.version - VERSIONS_SHOWN)
    rows, _ = versions.list_versions(session, dataset, limit=VERSIONS_SHOWN, after=after)
    return rows[::-1]


def _image_grid(
    session: DbSession, dataset: Dataset, version: int, label: str | None, after: int | None
) -> dict[str, Any]:
    """A page of the grid: `version`'s images (only `label`'s when given) after image `after`,
    and the classes the grid's shortcuts and filters name (the version's, in order)."""
    rows, next_after = datasets.list_images(
        session, dataset.id, version=version, label=label, limit=GRID_PAGE, after=after
    )
    shown = versions.get_version(session, dataset, version)
    return {
        "images": rows,
        "grid": {
            "version": version,
            "label": label,
            "after": after,
            "next_after": next_after,
            "classes": [entry["name"] for entry in shown.classes],
        },
    }


@pages.get("/datasets/{dataset_id}/images", response_class=HTMLResponse)
def dataset_images(
    request: Request,
    session: SessionDep,
    dataset_id: str,
    version: Annotated[int, Query(ge=1, le=MAX_INTEGER)],
    label: Annotated[str | None, Query(max_length=NAME_LENGTH)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_INTEGER)] = None,
) -> HTMLResponse:
    """A page of the image grid (a class's, the next one): the version the page shows."""
    dataset = datasets.get_dataset(session, dataset_id)
    grid = _image_grid(session, dataset, version, label or None, after)
    return page(request, "partials/images.html", dataset=dataset, **grid)


@pages.get("/datasets/{dataset_id}/versions/{a}/diff/{b}", response_class=HTMLResponse)
def version_diff(
    request: Request, session: SessionDep, dataset_id: str, a: int, b: int
) -> HTMLResponse:
    """What changed from version a to b (GET /datasets/{id}/versions/{a}/diff/{b})."""
    dataset = datasets.get_dataset(session, dataset_id)
    found = versions.diff(session, dataset, a, b, limit=DIFF_SHOWN)
    return page(
        request, "partials/diff.html", dataset_id=dataset_id, a=a, b=b, diff=found, shown=DIFF_SHOWN
    )


async def _edit_body(request: Request) -> dict[str, Any]:
    return edit_from_form(await form_lists(request))


@writes.post("/datasets/{dataset_id}/edits", response_class=HTMLResponse)
def dataset_edit(
    request: Request,
    session: SessionDep,
    dataset_id: str,
    body: Annotated[dict[str, Any], Depends(_edit_body)],
) -> Response:
    """The grid's selection relabelled or deleted as one edit, as POST /datasets/{id}/edits
    does: one new version, or (a Problem, answered by the console's handler and rolled back)
    nothing at all."""
    try:
        edit = DatasetEdit.model_validate(body)
    except ValidationError as error:
        return failed(request, error)
    edits.edit_dataset(session, dataset_id, edit)
    return Response(status_code=204, headers={"HX-Refresh": "true"})


@pages.get("/datasets/{dataset_id}/actions/{action}", response_class=HTMLResponse)
def action_preview(
    request: Request,
    session: WritingSessionDep,
    dataset_id: str,
    action: ReportAction,
    seed: Text = "",
    validation_split: Text = "",
    version: Annotated[int | None, Query(ge=1, le=MAX_INTEGER)] = None,
) -> HTMLResponse:
    """What a health finding's action would change (GET /datasets/{id}/report/actions/…),
    each image with its thumbnail, and the button that applies it."""
    query = split_query(seed, validation_split)
    proposal = _propose(session, dataset_id, action, query, version)
    return page(
        request,
        "partials/proposal.html",
        dataset_id=dataset_id,
        action=action,
        edit=proposal.edit,
        named=_report_images(proposal.report),
        query=query,
    )


@writes.post("/datasets/{dataset_id}/actions/{action}", response_class=HTMLResponse)
def action_apply(
    request: Request,
    session: SessionDep,
    dataset_id: str,
    action: ReportAction,
    base_version: Annotated[int, Form(ge=1, le=MAX_INTEGER)],
    seed: Annotated[str, Form(max_length=40)] = "",
    validation_split: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Apply the action shown: proposed again on the version it was shown for, so what is
    applied is what was listed; a 409 when the dataset has moved on since."""
    proposal = _propose(
        session, dataset_id, action, split_query(seed, validation_split), base_version
    )
    edits.edit_dataset(session, dataset_id, proposal.edit)
    return Response(status_code=204, headers={"HX-Refresh": "true"})


def _propose(
    session: DbSession,
    dataset_id: str,
    action: ReportAction,
    query: SplitQuery,
    version: int | None,
) -> actions.Proposal:
    return actions.propose(
        session,
        dataset_id,
        action,
        seed=query.seed,
        validation_split=query.validation_split,
        version=version,
    )


def _report_images(report: DatasetReport) -> dict[int, tuple[str, str]]:
    """Image id → (filename, label) of every image the report's actions can name."""
    named = {
        image.id: (image.filename, image.label)
        for group in report.duplicates.exact + report.duplicates.near
        for image in group.images
    }
    for pair in report.leakage.pairs:
        for image in (pair.training, pair.validation):
            named[image.id] = (image.filename, image.label)
    review = report.mislabelled.review
    for issue in review.issues if review is not None else []:
        named[issue.image_id] = (issue.filename, issue.label)
    return named
