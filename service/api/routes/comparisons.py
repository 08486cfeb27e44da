"""Comparisons over HTTP: two models scored on the same dataset version by the worker
(service/comparisons/), with the evidence a promotion needs."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.api.deps import SessionDep
from service.api.pagination import LINK_HEADER, PageDep, link_next
from service.comparisons import service as comparisons
from service.comparisons.schemas import ComparisonCreate, ComparisonRead

router = APIRouter(prefix="/comparisons", tags=["comparisons"])

NOT_FOUND = {404: {"description": "Unknown comparison"}}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ComparisonRead,
    summary="Score two models on the same images (queued; the worker scores them)",
    description="Both models classify every image of the dataset version (default: its "
    "latest), decoded as `/predict` decodes. When done: each model's accuracy and macro F1, "
    "b − a in accuracy with a paired bootstrap 95 % interval, McNemar's exact p-value, the "
    "per-class differences and the images the two answer differently. `b_is_better` is true "
    "only when the whole interval is above zero. Progress: `GET /jobs/{job_id}/events`.",
    responses={
        404: {"description": "Unknown model, dataset or dataset version; `detail` names it"},
        422: {
            "description": "A field is invalid, one model is named twice, or a model knows "
            "none of the dataset's classes"
        },
    },
)
def create_comparison(session: SessionDep, body: ComparisonCreate) -> ComparisonRead:
    record = comparisons.request_comparison(session, body)
    return comparisons.comparison_read(*comparisons.get_comparison(session, record.id))


@router.get(
    "",
    response_model=list[ComparisonRead],
    summary="Comparisons, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of comparisons"}},
)
def list_comparisons(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[ComparisonRead]:
    found = comparisons.list_comparisons(session, page)
    rows = link_next(found, page.limit, request, response)
    return [comparisons.comparison_read(*row) for row in rows]


@router.get("/{comparison_id}", response_model=ComparisonRead, responses=NOT_FOUND)
def read_comparison(session: SessionDep, comparison_id: str) -> ComparisonRead:
    return comparisons.comparison_read(*comparisons.get_comparison(session, comparison_id))
