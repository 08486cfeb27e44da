"""The job lifecycle, in one place: what a job is and may become.

    queued → running → succeeded | failed | cancelled

Every kind of job (service/job_kinds.py lists them) rides one queue, so all get the same
leases, retries, cancelling and events, and a worker's accelerator serves them in the order
they were asked for. This module knows no kind: a kind's package queues its jobs with
`queue_job` and stores its outcome through `complete`.

The API and the worker both call this module and neither re-implements it:
- the status enum and the transitions (queue, cancel; claim, heartbeat, release, end,
  complete), each one transaction; every write after a claim is fenced by the lease owner,
  so a worker whose lease was taken over can change nothing;
- the "in use" rule: what a queued or running job needs cannot be deleted;
- reading stored specs: leniently for display, strictly where a job is about to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session, object_session

from service import webhooks
from service.problems import Conflict, Invalid, NotFound
from service.storage.db import Database
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import (
    NAME_LENGTH,
    Dataset,
    Job,
    TrainedModel,
    WeightsFile,
    new_id,
    utcnow,
)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


SpecT = TypeVar("SpecT", bound=BaseModel)


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


# -- reading stored specs -----------------------------------------------------------------


def runnable_spec(stored: dict[str, Any], model: type[SpecT]) -> SpecT:
    """The stored spec, validated as a new request would be; Invalid saying what no longer
    validates when the service changed since the job was queued."""
    try:
        return model.model_validate(stored)
    except ValidationError as error:
        raise Invalid(f"the stored spec no longer validates: {what_fails(error)}") from None


def what_fails(error: ValidationError) -> str:
    """A spec's validation errors in one line a person can act on: `field: message; …`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'spec'}: {item['msg']}"
        for item in error.errors(include_url=False)
    )


# -- the "in use" rule --------------------------------------------------------------------

Resource = Dataset | WeightsFile | TrainedModel


def _needs(resource: Resource, dataset_id: str | None, spec: dict[str, Any]) -> bool:
    if isinstance(resource, Dataset):
        return dataset_id == resource.id
    prefix = "model" if isinstance(resource, TrainedModel) else "file"
    if prefix == "model" and resource.id in (spec.get("model_id"), *spec.get("model_ids", ())):
        return True  # an export converts it, a batch prediction or a comparison classifies
    backbone = spec.get("backbone")
    weights = backbone.get("weights") if isinstance(backbone, dict) else None
    return weights == f"{prefix}:{resource.id}"


def ensure_unused(session: Session, resource: Resource) -> None:
    """Conflict naming the jobs when a queued or running job needs `resource`: deleting it
    would fail that job later."""
    active = session.execute(
        select(Job.id, Job.dataset_id, Job.spec)
        .where(Job.status.in_(ACTIVE))
        .order_by(Job.created_at, Job.id)
    )
    users = [job_id for job_id, dataset_id, spec in active if _needs(resource, dataset_id, spec)]
    if users:
        kind = {Dataset: "dataset", WeightsFile: "weights file", TrainedModel: "model"}
        raise Conflict(
            f"{kind[type(resource)]} {resource.id} is used by queued or running "
            f"job(s) {', '.join(users)}"
        )


# -- what the API and the console ask ---------------------------------------------------------


def _with_model_ids(query: Select[Any]) -> Select[Any]:
    return query.add_columns(TrainedModel.id).outerjoin(TrainedModel, TrainedModel.job_id == Job.id)


def list_jobs(
    session: Session, page: Page, status: JobStatus | None = None, kind: str = "train"
) -> PageOf[tuple[Job, str | None]]:
    """A page of jobs of one kind, newest first, each with the id of the model it produced."""
    query = _with_model_ids(select(Job).where(Job.kind == kind))
    if status is not None:
        query = query.where(Job.status == status)
    return fetch_page(session, query, Job, page, scalars=False, key=lambda row: row[0])


def get_job(session: Session, job_id: str) -> tuple[Job, str | None]:
    """The job and the id of the model it produced."""
    row = session.execute(_with_model_ids(select(Job).where(Job.id == job_id))).first()
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    return row[0], row[1]


def status_of(db: Database, job_id: str) -> str:
    """The job's status as committed now ("" for a job that is gone)."""
    with db.session() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) or ""


# -- transitions the API makes --------------------------------------------------------------


def queue_job(
    session: Session,
    *,
    kind: str,
    name: str,
    spec: BaseModel,
    dataset_id: str | None,
    gpus: int = 0,
) -> Job:
    """A new queued job of a registered kind, for a spec whose references were checked.

    `dataset_id`: the dataset it holds against deletion and growth while it waits or runs;
    `gpus`: what a worker needs to claim it (resources.gpus). A spec's `webhook_url`, where
    it has one, is the job's column, not part of what to run (service/webhooks.py)."""
    webhook_url = getattr(spec, "webhook_url", None)
    job = Job(
        id=new_id("j"),
        kind=kind,
        name=name[:NAME_LENGTH],
        status=JobStatus.QUEUED,
        spec=spec.model_dump(mode="json", exclude={"webhook_url"}),
        dataset_id=dataset_id,
        history=[],
        attempts=0,
        cancel_requested=False,
        gpus=gpus,
        webhook_url=str(webhook_url) if webhook_url is not None else None,
    )
    session.add(job)
    session.flush()
    return job


def cancel(session: Session, job: Job) -> None:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    if job.status in FINISHED:
        raise Conflict(f"job {job.id} has already {job.status}")
    if job.status == JobStatus.QUEUED:
        _finish(job, JobStatus.CANCELLED, utcnow(), error=None)
    else:
        job.cancel_requested = True
    session.flush()


# -- transitions the worker makes -----------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    job_id: str
    worker_id: str
    attempt: int
    spec: dict[str, Any]
    name: str = ""
    kind: str = "train"
    created_at: datetime | None = None  # when it was queued: its wait, for the metrics


@dataclass(frozen=True)
class Heartbeat:
    lease_held: bool
    cancel_requested: bool


def claim_next_job(
    db: Database,
    *,
    worker_id: str,
    lease_seconds: float,
    max_attempts: int,
    gpus: int = 0,
    now: datetime | None = None,
) -> Claim | None:
    """Take the oldest queued job, or a running one whose lease ran out, in one transaction
    (SQLite: BEGIN IMMEDIATE; PostgreSQL: FOR UPDATE SKIP LOCKED).

    Only jobs asking for at most `gpus` GPUs (the worker's own count) are taken; a dead
    job that is only to be ended (cancelled, or out of attempts) is ended by any worker.
    """
    now = now or utcnow()
    with db.session(write=True) as session:
        while True:
            job = _next_claimable(session, db, now, gpus=gpus, max_attempts=max_attempts)
            if job is None:
                return None
            if job.status == JobStatus.RUNNING and job.cancel_requested:
                _finish(job, JobStatus.CANCELLED, now, error=None)
                continue
            if job.status == JobStatus.RUNNING and job.attempts >= max_attempts:
                _finish(
                    job,
                    JobStatus.FAILED,
                    now,
                    error=f"its worker stopped renewing the lease {job.attempts} times "
                    f"(max_attempts={max_attempts}); last holder {job.lease_owner}",
                )
                continue
            job.status = JobStatus.RUNNING
            job.attempts += 1
            job.lease_owner = worker_id
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.started_at = now
            job.progress = None
            job.history = []
            job.error = None
            return Claim(
                job_id=job.id,
                worker_id=worker_id,
                attempt=job.attempts,
                spec=job.spec,
                name=job.name,
                kind=job.kind,
                created_at=job.created_at,
            )


def _next_claimable(
    session: Session, db: Database, now: datetime, *, gpus: int, max_attempts: int
) -> Job | None:
    expired = (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at < now)
    # What claim_next_job only ends, never runs: no devices needed for that.
    to_end = expired & (Job.cancel_requested | (Job.attempts >= max_attempts))
    query = (
        select(Job)
        .where(((Job.status == JobStatus.QUEUED) | expired) & ((Job.gpus <= gpus) | to_end))
        .order_by(Job.created_at, Job.id)
        .limit(1)
    )
    if not db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).first()


def _finish(job: Job, status: JobStatus, now: datetime, *, error: str | None) -> None:
    job.status = status
    job.error = error
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    session = object_session(job)
    assert session is not None  # every caller loaded the job in its transaction
    webhooks.announce(session, job)


def _owned(claim: Claim) -> Any:
    return (
        (Job.id == claim.job_id)
        & (Job.lease_owner == claim.worker_id)
        & (Job.status == JobStatus.RUNNING)
    )


def heartbeat(
    db: Database,
    claim: Claim,
    *,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
    history_row: dict[str, Any] | None = None,
) -> Heartbeat:
    """Renew the lease, record progress, and learn whether the job was cancelled."""
    now = utcnow()
    with db.session(write=True) as session:
        job = session.scalars(select(Job).where(_owned(claim))).first()
        if job is None:
            return Heartbeat(lease_held=False, cancel_requested=False)
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        if progress is not None:
            job.progress = progress
        if history_row is not None:
            job.history = [*job.history, history_row]
        return Heartbeat(lease_held=True, cancel_requested=job.cancel_requested)


def restore_history(db: Database, claim: Claim, history: list[dict[str, Any]]) -> bool:
    """Set the history of a job resumed from a checkpoint to the checkpoint's epochs: the
    attempt before may have recorded one more that is now done again, and each epoch is
    listed once. False if the lease is no longer ours."""
    with db.session(write=True) as session:
        job = session.scalars(select(Job).where(_owned(claim))).first()
        if job is None:
            return False
        job.history = list(history)
        return True


def end_job(db: Database, claim: Claim, *, status: JobStatus, error: str | None = None) -> bool:
    """Mark a claimed job failed or cancelled; False if the lease was no longer ours."""
    with db.session(write=True) as session:
        job = session.scalars(select(Job).where(_owned(claim))).first()
        if job is None:
            return False
        _finish(job, status, utcnow(), error=error)
        return True


def release_job(db: Database, claim: Claim) -> bool:
    """Give a job back to the queue at once (the worker is shutting down cleanly)."""
    with db.session(write=True) as session:
        result = session.execute(
            update(Job)
            .where(_owned(claim))
            .values(
                status=JobStatus.QUEUED,
                attempts=Job.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                progress=None,
            )
        )
        return result.rowcount == 1


def _succeed(session: Session, claim: Claim) -> bool:
    """Mark the claimed job succeeded, unless its lease is no longer this worker's."""
    result = session.execute(
        update(Job)
        .where(_owned(claim))
        .values(
            status=JobStatus.SUCCEEDED,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    return result.rowcount == 1


def complete(db: Database, claim: Claim, store: Callable[[Session], None]) -> bool:
    """Run a kind's `store` (what its success leaves behind) and mark the job succeeded, in
    one transaction; False (and nothing stored) when the lease is no longer this worker's."""
    with db.session(write=True) as session:
        if not _succeed(session, claim):
            return False
        store(session)
        job = session.get(Job, claim.job_id, populate_existing=True)
        assert job is not None  # _succeed just updated it
        webhooks.announce(session, job)
        return True


def while_owned(db: Database, claim: Claim, write: Callable[[Session], None]) -> bool:
    """Run `write` in a transaction of its own while the job still runs under this worker's
    lease (an export's parity report, kept when the job then fails); False if it does not."""
    with db.session(write=True) as session:
        if session.scalars(select(Job.id).where(_owned(claim))).first() is None:
            return False
        write(session)
        return True
