"""The console's production view of a model: capture (start, stop, the captured images by
recency, doubt or strangeness) and drift (its chart), over service.monitoring's functions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service.api.deps import SessionDep
from service.models import service as models
from service.monitoring import captures
from service.monitoring.captures import Policy
from service.monitoring.schemas import capture_read
from service.monitoring.service import drift_report
from service.monitoring.spec import CapturePolicyWrite
from service.problems import NotFound, Problem
from service.storage.pages import Page
from service.web.common import console_routers, failed
from service.web.render import page

pages, writes = console_routers()

SHOWN = 24  # captures per page of the grid
SORTS = {"recent": "Newest", "uncertain": "Least certain", "unknown": "Strangest"}
NO_REFERENCE = (
    "Drift compares what the model is sent with its validation split, and this model was "
    "trained without one."
)


def optional_evaluation(session: DbSession, model_id: str) -> dict[str, Any] | None:
    """The model's report of its kind (`models.model_report`); None for one trained without
    a validation split."""
    try:
        return models.model_report(session, model_id)[1]
    except Problem:
        return None


def monitoring_context(
    request: Request, session: DbSession, model_id: str, evaluation: dict[str, Any] | None
) -> dict[str, Any]:
    """What the model page's production section shows: the model's capture policy (None when
    it captures nothing) and its drift, or why there is none. `evaluation`: the page's own
    (`optional_evaluation`), read once for both."""
    try:
        policy = captures.model_policy(session, model_id)
    except NotFound:
        policy = None
    monitor = request.app.state.monitoring.drift
    drift, why = None, NO_REFERENCE
    if evaluation is not None:
        try:
            drift, why = drift_report(monitor, model_id, evaluation), None
        except Problem as problem:
            why = str(problem)
    return {"policy": policy, "drift": drift, "drift_unavailable": why, "sorts": SORTS}


@pages.get("/models/{model_id}/captures", response_class=HTMLResponse)
def model_captures(
    request: Request,
    session: SessionDep,
    model_id: str,
    sort: Literal["recent", "uncertain", "unknown"] = "recent",
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    """The grid of captures, in the order asked for; "More" loads the next page."""
    classes = list(models.get_model(session, model_id).classes)
    found = captures.list_captures(session, model_id, sort, Page(limit=SHOWN, cursor=cursor))
    shown = [capture_read(row, classes) for row in found.rows]
    return page(
        request,
        "partials/captures.html",
        model_id=model_id,
        captures=shown,
        sort=sort,
        next_cursor=found.next_cursor,
        appended=cursor is not None,
    )


@writes.post("/models/{model_id}/capture", response_class=HTMLResponse)
def start_capture(
    request: Request,
    session: SessionDep,
    model_id: str,
    percent: Annotated[float, Form()],
    max_images: Annotated[int, Form()] = 10_000,
    days: Annotated[int, Form()] = 30,
) -> HTMLResponse:
    try:
        body = CapturePolicyWrite(rate=percent / 100, max_images=max_images, days=days)
        captures.set_model_policy(session, model_id, Policy(body.rate, body.max_images, body.days))
    except (ValidationError, Problem) as error:
        return failed(request, error)
    request.app.state.monitoring.recorder.refresh(session)
    return _section(request, session, model_id)


@writes.post("/models/{model_id}/capture/stop", response_class=HTMLResponse)
def stop_capture(request: Request, session: SessionDep, model_id: str) -> HTMLResponse:
    captures.clear_model_policy(session, model_id)
    request.app.state.monitoring.recorder.refresh(session)
    return _section(request, session, model_id)


def _section(request: Request, session: DbSession, model_id: str) -> HTMLResponse:
    model = models.get_model(session, model_id)
    evaluation = optional_evaluation(session, model_id)
    context = monitoring_context(request, session, model_id, evaluation)
    return page(request, "partials/monitoring.html", model=model, **context)
