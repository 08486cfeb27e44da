"""GET /workers: the worker processes, what they train on, and whether they still beat."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import SessionDep, SettingsDep
from service.jobs import presence as workers
from service.jobs.schemas import WorkerRead

router = APIRouter(prefix="/workers", tags=["workers"])


def worker_read(view: workers.WorkerView) -> WorkerRead:
    row = view.row
    return WorkerRead.model_validate(
        {
            **{name: getattr(row, name) for name in WorkerRead.model_fields if hasattr(row, name)},
            "status": view.status,
            "heartbeat_age_seconds": round(view.heartbeat_age_seconds, 1),
        }
    )


@router.get(
    "",
    response_model=list[WorkerRead],
    summary="Workers, newest first: their devices, GPU count and heartbeat",
)
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerRead]:
    views = workers.list_workers(session, lease_seconds=settings.lease_seconds)
    return [worker_read(view) for view in views]
