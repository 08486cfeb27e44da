"""The job queue in the database: claim, heartbeat, finish. Every write after the claim is
fenced by the lease owner, so a worker whose lease was taken over can change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from service.storage.db import Database
from service.storage.tables import Job, ModelLayer, TrainedModel, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class Claim:
    job_id: str
    worker_id: str
    attempt: int
    spec: dict[str, Any]


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
    now: datetime | None = None,
) -> Claim | None:
    """Take the oldest queued job, or a running one whose lease ran out, in one transaction."""
    now = now or utcnow()
    with db.session(write=True) as session:
        while True:
            query = (
                select(Job)
                .where(
                    (Job.status == QUEUED)
                    | ((Job.status == RUNNING) & (Job.lease_expires_at < now))
                )
                .order_by(Job.created_at, Job.id)
                .limit(1)
            )
            if not db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            job = session.scalars(query).first()
            if job is None:
                return None
            if job.status == RUNNING and job.cancel_requested:
                _finish(job, CANCELLED, now, error=None)
                continue
            if job.status == RUNNING and job.attempts >= max_attempts:
                _finish(
                    job,
                    FAILED,
                    now,
                    error=f"its worker stopped renewing the lease {job.attempts} times "
                    f"(max_attempts={max_attempts}); last holder {job.lease_owner}",
                )
                continue
            job.status = RUNNING
            job.attempts += 1
            job.lease_owner = worker_id
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.started_at = now
            job.progress = None
            job.history = []
            job.error = None
            return Claim(job_id=job.id, worker_id=worker_id, attempt=job.attempts, spec=job.spec)


def _finish(job: Job, status: str, now: datetime, *, error: str | None) -> None:
    job.status = status
    job.error = error
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None


def _owned(claim: Claim) -> Any:
    return (Job.id == claim.job_id) & (Job.lease_owner == claim.worker_id) & (Job.status == RUNNING)


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


def end_job(db: Database, claim: Claim, *, status: str, error: str | None = None) -> bool:
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
                status=QUEUED,
                attempts=Job.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                progress=None,
            )
        )
        return result.rowcount == 1


def complete_job(
    db: Database, claim: Claim, *, model: TrainedModel, layers: list[dict[str, Any]]
) -> bool:
    """Store the model, its layers and the job's success in one transaction.

    False (and nothing stored) when the lease is no longer this worker's.
    """
    now = utcnow()
    with db.session(write=True) as session:
        result = session.execute(
            update(Job)
            .where(_owned(claim))
            .values(status=SUCCEEDED, finished_at=now, lease_owner=None, lease_expires_at=None)
        )
        if result.rowcount != 1:
            return False
        session.add(model)
        session.flush()
        session.add_all(ModelLayer(model_id=model.id, **row) for row in layers)
        return True
