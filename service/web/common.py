"""What every console page module shares: the session and CSRF checks, the routers they
hang under, and how a write that failed is answered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from service import jobs
from service.api.auth import request_session
from service.api.errors import status_of
from service.problems import Problem
from service.security import CSRF_HEADER, Session, csrf_matches
from service.web.render import console_session, page

SessionUser = Annotated[Session | None, Depends(console_session)]


def console_write(request: Request, user: SessionUser) -> None:
    """A change from a page must carry the page's CSRF token: the login's, or without
    API_KEY the anonymous session's that the page came with (the gate checks it first,
    before the body; this says the same where the route is reached)."""
    session = user if user is not None else request_session(request)
    sent = request.headers.get(CSRF_HEADER)
    if session is None or not csrf_matches(request.app.state.settings, session, sent):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER}: reload the page")


def console_routers() -> tuple[APIRouter, APIRouter]:
    """A page module's two routers under /console: pages (a session, where the service has
    a key) and writes (the page's CSRF token too)."""
    return (
        APIRouter(prefix="/console", dependencies=[Depends(console_session)]),
        APIRouter(prefix="/console", dependencies=[Depends(console_write)]),
    )


EXPIRED_NOTICE_SECONDS = 7 * 24 * 3600
# Query text, as typed into a form: parsed by forms.split_query, which names what is wrong.
Text = Annotated[str, Query(max_length=40)]


def writing_session(request: Request) -> Iterator[DbSession]:
    """A GET's transaction that may write: the health report measures images stored before
    their facts were kept, and SQLite cannot turn a read transaction into a writing one once
    another writer has committed (as GET /datasets/{id}/report does)."""
    with request.app.state.database.session(write=True) as session:
        yield session


WritingSessionDep = Annotated[DbSession, Depends(writing_session, scope="function")]


def failed(request: Request, error: Exception) -> HTMLResponse:
    """A write that did not work, as a fragment naming why: the spec's own words for what
    fails validation, the problem's status otherwise (404 for what does not exist)."""
    if isinstance(error, ValidationError):
        return page(request, "partials/error.html", 422, message=jobs.what_fails(error))
    assert isinstance(error, Problem)
    return page(request, "partials/error.html", status_of(error), message=str(error))


def redirect_to_job(job_id: str) -> Response:
    return Response(status_code=204, headers={"HX-Redirect": f"/console/jobs/{job_id}"})


async def form_lists(request: Request) -> dict[str, list[str]]:
    """The posted form, every field as the list of its values (a checkbox group repeats)."""
    form = await request.form()
    return {key: [str(value) for value in form.getlist(key)] for key in form}
