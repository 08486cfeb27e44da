"""Searches over HTTP: the best spec within a budget, found by the worker on the backbone's
cached features, then fine-tuned (service/searches/)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from service.api.deps import SessionDep
from service.api.pagination import LINK_HEADER, PageDep, link_after, link_next
from service.searches import service as searches
from service.searches.schemas import SearchRead
from service.searches.spec import MAX_TRIALS, SearchCreate

router = APIRouter(prefix="/searches", tags=["searches"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SearchRead,
    summary="Search for the best spec within a budget (queued; the worker searches)",
    description="A learning-rate range test on the head; head configurations (learning "
    "rate, dropout, L2, label smoothing, pooling, dense widths) tried on the frozen "
    "backbone's cached features, Optuna's TPE sampler proposing and its median pruner "
    "stopping the hopeless; then the best `finalists` trained as jobs at each freeze depth, "
    "successive halving sharing the fine-tuning epochs. `best.spec` is a job spec POST /jobs "
    "takes as it is; `train_best` queues it. Trials: `GET /jobs/{job_id}/events` (`epoch` "
    "events), and GET /searches/{id}.",
    responses={
        404: {
            "description": "Unknown dataset, dataset version or stored weights; `detail` names it"
        },
        422: {"description": "A field is invalid (`detail` names it): the budget, the space"},
    },
)
def create_search(session: SessionDep, body: SearchCreate) -> SearchRead:
    record = searches.request_search(session, body)
    return searches.search_read(session, *searches.get_search(session, record.id))


@router.get(
    "",
    response_model=list[SearchRead],
    summary="Searches, newest first, a page at a time (each with its first trials)",
    responses={200: {"headers": LINK_HEADER, "description": "A page of searches"}},
)
def list_searches(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[SearchRead]:
    found = searches.list_searches(session, page)
    rows = link_next(found, page.limit, request, response)
    return [searches.search_read(session, *row) for row in rows]


@router.get(
    "/{search_id}",
    response_model=SearchRead,
    summary="A search: its status, a page of its trials, the best once done",
    responses={
        404: {"description": "Unknown search"},
        200: {"headers": LINK_HEADER, "description": "The search, with a page of its trials"},
    },
)
def read_search(
    session: SessionDep,
    request: Request,
    response: Response,
    search_id: str,
    limit: Annotated[
        int, Query(ge=1, le=searches.TRIALS_PAGE, description="Trials per page")
    ] = searches.TRIALS_PAGE,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_TRIALS * 2,
            description='Only trials after this number; the `Link: <…>; rel="next"` header '
            "of the page before carries it.",
        ),
    ] = None,
) -> SearchRead:
    record, job = searches.get_search(session, search_id)
    trials, next_after = searches.trials_page(session, record.id, limit, after)
    link_after(trials, next_after, limit, request, response)
    return searches.search_read(session, record, job, trials)
