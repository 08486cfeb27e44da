"""The console: a browser UI served by the API process, over the same service functions as the
JSON routes (never the JSON API over HTTP from the server). Templates and vendored static
files live beside this module; nothing is fetched from a CDN."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from service.api.errors import problem_answer, status_of
from service.problems import Conflict, NotFound, Problem
from service.web import (
    comparison_pages,
    dataset_pages,
    job_pages,
    model_pages,
    monitoring_pages,
    prediction_pages,
    review_pages,
    search_pages,
    session_pages,
)
from service.web.render import LoginRequired, login_redirect, page

HEADINGS = {NotFound: "Not found", Conflict: "Not now"}


async def _problem(request: Request, error: Exception) -> Response:
    """A problem on a console page is a page (or, for htmx, a fragment); elsewhere JSON."""
    assert isinstance(error, Problem)
    if not request.url.path.startswith("/console"):
        return await problem_answer(request, error)
    status = status_of(error)
    if request.headers.get("HX-Request"):
        return page(request, "partials/error.html", status, message=str(error))
    heading = HEADINGS.get(type(error), "That did not work")
    return page(request, "error.html", status, heading=heading, message=str(error))


# The modules of /console/… pages, each with its `pages` and `writes` routers.
PAGE_MODULES = (
    dataset_pages,
    job_pages,
    model_pages,
    monitoring_pages,
    prediction_pages,
    review_pages,
    comparison_pages,
    search_pages,
)


def install(app: FastAPI) -> None:
    app.include_router(session_pages.router)
    for module in PAGE_MODULES:
        app.include_router(module.pages, include_in_schema=False)
        app.include_router(module.writes, include_in_schema=False)
    app.add_exception_handler(LoginRequired, login_redirect)
    app.add_exception_handler(Problem, _problem)
