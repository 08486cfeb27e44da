"""The console's comparison pages: two models side by side on the same images, the
disagreement gallery, and "promote" when the evidence is there."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from service.api.deps import SessionDep
from service.comparisons import service as comparisons
from service.comparisons.schemas import ComparisonCreate
from service.datasets import service as datasets
from service.models import registry
from service.models import service as models
from service.problems import Problem
from service.storage.pages import Page
from service.storage.tables import ID_LENGTH, TrainedModel
from service.web.common import console_routers, failed
from service.web.render import page

pages, writes = console_routers()


@pages.get("/comparisons", response_class=HTMLResponse)
def comparison_list(
    request: Request, session: SessionDep, cursor: str | None = None, a: str = "", b: str = ""
) -> HTMLResponse:
    """The comparisons, newest first, and the form that asks for one (`a` and `b` chosen)."""
    listed = comparisons.list_comparisons(session, Page(limit=25, cursor=cursor))
    return page(
        request,
        "comparisons.html",
        page_of=listed,
        read=comparisons.comparison_read,
        models=models.list_models(session, Page(limit=100)).rows,
        datasets=datasets.list_datasets(session, Page(limit=100)).rows,
        chosen=(a, b),
    )


@writes.post("/comparisons", response_class=HTMLResponse)
def comparison_create(
    request: Request,
    session: SessionDep,
    model_a: Annotated[str, Form(max_length=ID_LENGTH)],
    model_b: Annotated[str, Form(max_length=ID_LENGTH)],
    dataset_id: Annotated[str, Form(max_length=ID_LENGTH)],
    dataset_version: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Queue a comparison as POST /comparisons does, and show its page."""
    try:
        asked = ComparisonCreate(
            models=[model_a, model_b],
            dataset_id=dataset_id,
            dataset_version=int(dataset_version) if dataset_version.strip() else None,
        )
        record = comparisons.request_comparison(session, asked)
    except (Problem, ValidationError) as error:
        return failed(request, error)
    except ValueError:
        return page(request, "partials/error.html", 422, message="the version is a number")
    return Response(status_code=204, headers={"HX-Redirect": f"/console/comparisons/{record.id}"})


@pages.get("/comparisons/{comparison_id}", response_class=HTMLResponse)
def comparison_page(request: Request, session: SessionDep, comparison_id: str) -> HTMLResponse:
    """One comparison: while it runs, its status (the page polls); then both models side by
    side, the difference and its interval, the per-class table, the images they disagree
    on, and "promote b" where b is better and has a registry name."""
    found = comparisons.comparison_read(*comparisons.get_comparison(session, comparison_id))
    rows = {model_id: session.get(TrainedModel, model_id) for model_id in found.model_ids}
    b = rows[found.model_ids[1]]
    aliases = registry.aliases_of(session, b.name) if b is not None else {}
    return page(
        request,
        "comparison.html",
        comparison=found,
        rows=rows,
        aliases=aliases,
        b_aliases=[alias for alias, version in aliases.items() if b and version == b.version],
        promotable=b if b is not None and found.b_is_better else None,
    )
