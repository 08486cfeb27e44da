from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.deps import DatabaseDep
from service.schemas import Status

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get(
    "/healthz", response_model=Status, response_model_exclude_none=True, summary="The process is up"
)
def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    response_model_exclude_none=True,
    summary="The database answers, its schema is current and the warm-up is done",
    responses={503: {"model": Status, "description": "Not ready; `detail` says why."}},
)
def readyz(request: Request, database: DatabaseDep) -> Status | JSONResponse:
    try:
        problem = database.schema_problem()
    except Exception:
        # /readyz is open to all, and a driver's message can name hosts, users, even the URL:
        # the reason goes to the log, the answer says only what is wrong.
        log.exception("readiness: the database did not answer")
        problem = "database unavailable"
    if problem:
        return JSONResponse(Status(status="unavailable", detail=problem).model_dump(), 503)
    warming = request.app.state.warmup
    if not warming.finished:
        return JSONResponse(Status(status="warming", detail=warming.detail).model_dump(), 503)
    return Status(status="ok")
