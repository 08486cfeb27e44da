from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from service import jobs
from service.api.deps import DatabaseDep, SessionDep, SettingsDep
from service.api.pagination import LINK_HEADER, PageDep, link_next
from service.job_kinds import JobKindName
from service.jobs import FINISHED, JobStatus
from service.models.schemas import LayersRead
from service.schemas import JobRead
from service.storage.db import Database
from service.storage.tables import Job, TrainedModel
from service.training import service as training
from service.training.spec import JobSpec
from service.webhook_addresses import check_submitted

router = APIRouter(prefix="/jobs", tags=["jobs"])

NOT_FOUND = {404: {"description": "Unknown job"}}
SPEC_ERRORS = {
    404: {"description": "The dataset or the source model does not exist"},
    422: {"description": "Invalid spec; `detail` names the field"},
}


def job_read(job: Job, model_id: str | None) -> JobRead:
    fields = {name: getattr(job, name) for name in JobRead.model_fields if name != "model_id"}
    return JobRead.model_validate({**fields, "model_id": model_id})


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Queue a transfer-learning job",
    responses=SPEC_ERRORS,
)
def create_job(session: SessionDep, settings: SettingsDep, spec: JobSpec) -> JobRead:
    check_submitted(spec.webhook_url, settings.webhook_allowed_networks)
    job = training.submit(session, spec)
    return job_read(*jobs.get_job(session, job.id))


@router.post(
    "/preview",
    response_model=LayersRead,
    summary="Build the model and show its layers, without training",
    responses=SPEC_ERRORS,
)
def preview_job(session: SessionDep, spec: JobSpec) -> dict[str, Any]:
    stages = training.preview(session, spec)
    return {"model_id": None, **stages[-1], "stages": stages}


@router.get(
    "",
    response_model=list[JobRead],
    summary="Jobs, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of jobs"}},
)
def list_jobs(
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state")] = None,
    kind: Annotated[
        JobKindName, Query(description='Which kind of job: "train" (the default), "advice"…')
    ] = JobKindName.TRAIN,
) -> list[JobRead]:
    rows = link_next(jobs.list_jobs(session, page, status, kind), page.limit, request, response)
    return [job_read(job, model_id) for job, model_id in rows]


@router.get("/{job_id}", response_model=JobRead, responses=NOT_FOUND)
def read_job(session: SessionDep, job_id: str) -> JobRead:
    return job_read(*jobs.get_job(session, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    summary="Cancel: a queued job at once, a running one at its next step",
    responses={**NOT_FOUND, 409: {"description": "The job has already finished"}},
)
def cancel_job(session: SessionDep, job_id: str) -> JobRead:
    job, _ = jobs.get_job(session, job_id)
    jobs.cancel(session, job)
    return job_read(*jobs.get_job(session, job_id))


# A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class _JobState:
    status: str
    attempts: int
    error: str | None
    progress: dict[str, Any] | None
    history: list[dict[str, Any]]
    model_id: str | None

    @property
    def status_event(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "model_id": self.model_id,
        }


def _read_state(database: Database, job_id: str) -> _JobState | None:
    """What the worker has written so far; a short read of its own, not the request's."""
    with database.session() as session:
        row = session.execute(
            select(Job, TrainedModel.id)
            .outerjoin(TrainedModel, TrainedModel.job_id == Job.id)
            .where(Job.id == job_id)
        ).first()
        if row is None:
            return None
        job, model_id = row
        return _JobState(
            status=job.status,
            attempts=job.attempts,
            error=job.error,
            progress=job.progress,
            history=list(job.history or []),
            model_id=model_id,
        )


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _news(previous: _JobState | None, state: _JobState) -> list[str]:
    """Events that bring a client who saw `previous` up to `state`; the end status last."""
    events = []
    changed = previous is None or (previous.status, previous.attempts) != (
        state.status,
        state.attempts,
    )
    if changed and state.status not in FINISHED:
        events.append(_event("status", state.status_event))
    seen = 0
    if previous is not None and previous.attempts == state.attempts:
        seen = min(len(previous.history), len(state.history))
    events += [_event("epoch", row) for row in state.history[seen:]]
    moved = state.progress and (previous is None or state.progress != previous.progress)
    if moved and state.status == JobStatus.RUNNING:
        events.append(_event("progress", state.progress))
    if state.status in FINISHED:
        events.append(_event("status", state.status_event))
    return events


async def _stream(
    request: Request, database: Database, job_id: str, first: _JobState, poll_seconds: float
) -> AsyncIterator[str]:
    previous: _JobState | None = None
    state: _JobState | None = first
    quiet_since = time.monotonic()
    while state is not None:
        news = _news(previous, state)
        for event in news:
            yield event
        if state.status in FINISHED:
            return
        if news:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_seconds)
        if await request.is_disconnected():
            return
        previous, state = state, await run_in_threadpool(_read_state, database, job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Live progress as Server-Sent Events, ending with the job's final status",
    description="Events: `status` (queued/running, and last the final one), `epoch` (that "
    "epoch's metrics) and `progress` (stage, epoch, step). A client that connects late first "
    "receives the current state: its status, every finished epoch, the latest progress.",
    responses={
        **NOT_FOUND,
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: status\ndata: {"status": "running", "attempts": 1, '
                    '"error": null, "model_id": null}\n\n'
                    'event: progress\ndata: {"stage": 1, "stages": 2, "epoch": 1, '
                    '"epochs": 8, "step": 3, "steps": 20}\n\n'
                    'event: epoch\ndata: {"epoch": 1, "stage": 1, "loss": 0.9, '
                    '"accuracy": 0.6, "val_loss": 0.8, "val_accuracy": 0.7, "seconds": 12.5}\n\n'
                    'event: status\ndata: {"status": "succeeded", "attempts": 1, '
                    '"error": null, "model_id": "m_0123456789abcdef"}\n\n',
                }
            },
            "description": "The event stream",
        },
    },
)
async def job_events(
    request: Request, database: DatabaseDep, settings: SettingsDep, job_id: str
) -> StreamingResponse:
    first = await run_in_threadpool(_read_state, database, job_id)
    if first is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return StreamingResponse(
        _stream(request, database, job_id, first, settings.events_poll_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
