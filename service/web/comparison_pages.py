"""The console's loop from a model to its successor: retrain it (from the model page), compare
the two side by side on the same images with the disagreement gallery, and "promote" when the
evidence is there."""

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
from service.problems import Invalid, Problem
from service.storage.pages import Page
from service.storage.tables import ID_LENGTH, TrainedModel
from service.training import service as training
from service.training.spec import RetrainRequest
from service.web.common import console_routers, failed, redirect_to_job
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
            dataset_version=_version(dataset_version),
        )
        record = comparisons.request_comparison(session, asked)
    except (Problem, ValidationError) as error:
        return failed(request, error)
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


@writes.post("/models/{model_id}/retrain", response_class=HTMLResponse)
def model_retrain(
    request: Request,
    session: SessionDep,
    model_id: str,
    dataset_version: Annotated[str, Form(max_length=10)] = "",
    warm_start: Annotated[bool, Form()] = False,
) -> Response:
    """Queue the retraining as POST /models/{model_id}/retrain does, and follow its job."""
    try:
        asked = RetrainRequest(dataset_version=_version(dataset_version), warm_start=warm_start)
        job = training.retrain(session, model_id, asked)
    except (Problem, ValidationError) as error:
        return failed(request, error)
    return redirect_to_job(job.id)


def _version(typed: str) -> int | None:
    """A form's dataset version: empty for the latest, else a whole number."""
    if not typed.strip():
        return None
    if not typed.strip().isdigit():
        raise Invalid(f"{typed!r} is not a version number", field=("dataset_version",))
    return int(typed)
