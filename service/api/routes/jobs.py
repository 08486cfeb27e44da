from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import Select, select
from starlette.concurrency import run_in_threadpool

from service.api.deps import SessionDep
from service.schemas import JobRead, JobStatus, LayersRead
from service.spec import JobSpec
from service.storage.queue import FINISHED, QUEUED, RUNNING
from service.storage.tables import Dataset, Job, TrainedModel, new_id, utcnow

router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"description": "Unknown job"}}
SPEC_ERRORS = {
    404: {"description": "The dataset or the source model does not exist"},
    422: {"description": "Invalid spec; `detail` names the field"},
}


def invalid(location: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own validation shape, for checks pydantic cannot make alone."""
    return HTTPException(
        422, [{"type": "value_error", "loc": ["body", *location], "msg": message, "input": None}]
    )


async def check_spec(session: SessionDep, spec: JobSpec) -> Dataset:
    """What needs the database or the backbone's layers; the dataset the job trains on."""
    dataset = session.get(Dataset, spec.dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset_id: no dataset {spec.dataset_id!r}")
    source_id = spec.backbone.source_model_id
    if source_id is not None:
        source = session.get(TrainedModel, source_id)
        if source is None:
            raise HTTPException(404, f"backbone.weights: no model {source_id!r}")
        if source.backbone != spec.backbone.name:
            raise invalid(
                ["backbone", "weights"],
                f"model {source_id} has a {source.backbone} backbone, not {spec.backbone.name}",
            )
    if spec.freeze.trainable_from is not None:
        from service.ml.build import backbone_layer_names, trainable_from_index

        names = await run_in_threadpool(backbone_layer_names, spec.backbone.name, spec.input_size)
        try:
            trainable_from_index(names, spec.freeze.trainable_from)
        except ValueError as error:
            raise invalid(["freeze", "trainable_from"], str(error)) from None
    return dataset


def jobs_with_model_ids(session: SessionDep, query: Select[tuple[Job]]) -> list[JobRead]:
    rows = session.execute(
        query.add_columns(TrainedModel.id).outerjoin(TrainedModel, TrainedModel.job_id == Job.id)
    )
    return [
        JobRead.model_validate(
            {
                **{name: getattr(job, name) for name in JobRead.model_fields if name != "model_id"},
                "model_id": model_id,
            }
        )
        for job, model_id in rows
    ]


def job_read(session: SessionDep, job: Job) -> JobRead:
    return jobs_with_model_ids(session, select(Job).where(Job.id == job.id))[0]


def get_job(session: SessionDep, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Queue a transfer-learning job",
    responses=SPEC_ERRORS,
)
async def create_job(session: SessionDep, spec: JobSpec) -> JobRead:
    dataset = await check_spec(session, spec)
    job = Job(
        id=new_id("j"),
        name=spec.name or f"{dataset.name}-{spec.backbone.name}",
        status=QUEUED,
        spec=spec.model_dump(mode="json"),
        dataset_id=dataset.id,
        history=[],
        attempts=0,
        cancel_requested=False,
    )
    session.add(job)
    session.flush()
    return job_read(session, job)


@router.post(
    "/preview",
    response_model=LayersRead,
    summary="Build the model and show its layers, without training",
    responses=SPEC_ERRORS,
)
async def preview_job(session: SessionDep, spec: JobSpec) -> dict[str, Any]:
    dataset = await check_spec(session, spec)
    from service.ml.build import preview_layers

    rows = await run_in_threadpool(preview_layers, spec, len(dataset.classes))
    return {
        "model_id": None,
        "trainable_params": sum(row["trainable_params"] for row in rows),
        "non_trainable_params": sum(row["non_trainable_params"] for row in rows),
        "layers": rows,
    }


@router.get("", response_model=list[JobRead], summary="Jobs, newest first")
def list_jobs(
    session: SessionDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state")] = None,
) -> list[JobRead]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id)
    if status is not None:
        query = query.where(Job.status == status)
    return jobs_with_model_ids(session, query)


@router.get("/{job_id}", response_model=JobRead, responses=NOT_FOUND)
def read_job(session: SessionDep, job_id: str) -> JobRead:
    return job_read(session, get_job(session, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    summary="Cancel: a queued job at once, a running one at its next step",
    responses={**NOT_FOUND, 409: {"description": "The job has already finished"}},
)
def cancel_job(session: SessionDep, job_id: str) -> JobRead:
    job = get_job(session, job_id)
    if job.status in FINISHED:
        raise HTTPException(409, f"job {job_id} has already {job.status}")
    if job.status == QUEUED:
        job.status = "cancelled"
        job.finished_at = utcnow()
    elif job.status == RUNNING:
        job.cancel_requested = True
    session.flush()
    return job_read(session, job)
