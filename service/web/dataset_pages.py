"""The console's overview and dataset pages: upload, import, append, the health report, advice."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Form, Request, UploadFile
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
from service.datasets import imports
from service.datasets import report as reports
from service.datasets import service as datasets
from service.datasets.schemas import DatasetReport
from service.datasets.spec import ImportRequest
from service.jobs import presence as workers
from service.models import service as models
from service.models import weights_files
from service.problems import Conflict, Problem
from service.storage.pages import Page
from service.storage.tables import NAME_LENGTH
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


def health_report(session: DbSession, dataset_id: str, query: SplitQuery) -> DatasetReport:
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
