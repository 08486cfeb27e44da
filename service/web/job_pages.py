"""The console's job pages: the list, the new-job form with its preview, a job's live page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service import jobs
from service.advice.kind import ADVICE
from service.api.deps import SessionDep
from service.datasets import service as datasets
from service.exports.kind import EXPORT
from service.jobs import JobStatus
from service.ml.multilabel import ranking_metric
from service.predictions.kind import PREDICT
from service.problems import Problem
from service.storage.pages import Page
from service.storage.tables import MAX_INTEGER, Dataset
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
from service.web.dataset_pages import backbone_choices, health_report, recent_versions
from service.web.forms import (
    block_of,
    head_costs,
    spec_from_form,
    split_query,
)
from service.web.render import page

pages, writes = console_routers()

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
def job_form(
    request: Request,
    session: SessionDep,
    dataset_id: str | None = None,
    dataset_version: Annotated[int | None, Query(ge=1, le=MAX_INTEGER)] = None,
) -> HTMLResponse:
    listed = datasets.list_datasets(session, Page(limit=100)).rows
    chosen = dataset_id or (listed[0].id if listed else None)
    return page(
        request,
        "job_new.html",
        dataset_id=dataset_id,
        datasets=listed,
        **_version_choices(session, chosen, dataset_version),
        **backbone_choices(session),
    )


@pages.get("/jobs/versions", response_class=HTMLResponse)
def job_versions(
    request: Request,
    session: SessionDep,
    dataset_id: Annotated[str, Query(max_length=100)] = "",
) -> HTMLResponse:
    """The form's version choices for the dataset picked: its newest versions, the latest
    selected."""
    choices = _version_choices(session, dataset_id or None, None)
    return page(request, "partials/version_options.html", **choices)


def _version_choices(
    session: DbSession, dataset_id: str | None, wanted: int | None
) -> dict[str, Any]:
    """The versions the form offers for `dataset_id` (none for no or an unknown dataset: the
    submission names that) and the one selected: `wanted`, by default the latest."""
    try:
        dataset = datasets.get_dataset(session, dataset_id) if dataset_id else None
    except Problem:
        dataset = None
    if dataset is None:
        return {"versions": [], "chosen_version": None}
    return {
        "versions": recent_versions(session, dataset),
        "chosen_version": wanted or dataset.version,
    }


@pages.get("/jobs/leakage", response_class=HTMLResponse)
def job_leakage(
    request: Request,
    session: WritingSessionDep,
    dataset_id: Annotated[str, Query(max_length=100)] = "",
    seed: Text = "",
    validation_split: Text = "",
    dataset_version: Text = "",
) -> HTMLResponse:
    """The new-job form's warning: images whose copies the job's split would put on both
    sides, in the version picked. Empty when none, and while the form names no dataset, no
    such version or an out-of-bounds split (the form's own submission says what is wrong)."""
    version = int(dataset_version) if dataset_version.strip().isdigit() else None
    try:
        query = split_query(seed, validation_split)
        report = health_report(session, dataset_id, query, version) if dataset_id else None
    except Problem:
        report = None
    leakage = report.leakage if report is not None and report.leakage.count else None
    return page(request, "partials/leakage.html", dataset_id=dataset_id, leakage=leakage)


async def _form_spec(request: Request) -> dict[str, Any]:
    return spec_from_form(await form_lists(request))


@writes.post("/jobs/preview", response_class=HTMLResponse)
def job_preview(
    request: Request, session: SessionDep, body: Annotated[dict[str, Any], Depends(_form_spec)]
) -> HTMLResponse:
    try:
        spec = JobSpec.model_validate(body)
        stages = training.preview(session, spec)
    except (ValidationError, Problem) as error:
        return failed(request, error)
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
        return failed(request, error)
    return redirect_to_job(job.id)


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
        metric=ranking_metric(_multi_label(session, job.dataset_id)),
    )


def _multi_label(session: DbSession, dataset_id: str | None) -> bool:
    """Whether the job's dataset is multi-label: its charts then follow what its model or
    search is ranked by, the labels' mean average precision."""
    dataset = session.get(Dataset, dataset_id) if dataset_id is not None else None
    return dataset is not None and dataset.multi_label


@writes.post("/jobs/{job_id}/cancel")
def job_cancel(session: SessionDep, job_id: str) -> Response:
    job, _ = jobs.get_job(session, job_id)
    jobs.cancel(session, job)
    return Response(status_code=204, headers={"HX-Refresh": "true"})
