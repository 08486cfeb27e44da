"""Strategy advice for a dataset: queued as an advice job, read back once the worker has
measured it (service/advice/service.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.advice import service as advice
from service.advice.schemas import AdviceRead
from service.advice.spec import AdviceRequest
from service.api.deps import SessionDep, SettingsDep
from service.api.pagination import LINK_HEADER, PageDep, link_next
from service.storage.tables import Advice, Job
from service.webhook_addresses import check_submitted

router = APIRouter(prefix="/datasets/{dataset_id}/advice", tags=["datasets"])


def _advice_read(record: Advice, job: Job | None) -> AdviceRead:
    state, error = advice.advice_status(job)
    return AdviceRead.model_validate(
        {
            "id": record.id,
            "dataset_id": record.dataset_id,
            "job_id": record.job_id,
            "status": state,
            "error": error,
            "request": record.request,
            "result": record.result,
            "created_at": record.created_at,
        }
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AdviceRead,
    summary="Measure the dataset against a backbone and advise a strategy",
    responses={
        404: {"description": "Unknown dataset, or unknown stored weights"},
        422: {"description": "Invalid request; `detail` names the field"},
    },
)
def request_advice(
    session: SessionDep, settings: SettingsDep, dataset_id: str, body: AdviceRequest
) -> AdviceRead:
    check_submitted(body.webhook_url, settings.webhook_allowed_networks)
    record = advice.request_advice(session, dataset_id, body)
    return _advice_read(*advice.get_advice(session, dataset_id, record.id))


@router.get(
    "",
    response_model=list[AdviceRead],
    summary="The dataset's advice, newest first, a page at a time",
    responses={
        200: {"headers": LINK_HEADER, "description": "A page of advice"},
        404: {"description": "Unknown dataset"},
    },
)
def list_advice(
    session: SessionDep, dataset_id: str, request: Request, response: Response, page: PageDep
) -> list[AdviceRead]:
    rows = link_next(advice.list_advice(session, dataset_id, page), page.limit, request, response)
    return [_advice_read(record, job) for record, job in rows]


@router.get(
    "/{advice_id}",
    response_model=AdviceRead,
    responses={404: {"description": "Unknown dataset or advice"}},
)
def read_advice(session: SessionDep, dataset_id: str, advice_id: str) -> AdviceRead:
    return _advice_read(*advice.get_advice(session, dataset_id, advice_id))
