"""Capture and drift over HTTP: policies on a model or an alias, the captured images, and a
model's drift. The logic is `service.monitoring`'s."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status

from service.api.deps import SessionDep
from service.api.pagination import link_next
from service.api.routes.registry import AliasPath, NamePath
from service.models import service as models
from service.monitoring import captures
from service.monitoring.captures import Policy
from service.monitoring.schemas import (
    CapturePolicyRead,
    CaptureRead,
    DriftRead,
    capture_read,
)
from service.monitoring.service import drift_report
from service.monitoring.spec import CapturePolicyWrite
from service.monitoring.watch import Monitoring
from service.storage.pages import DEFAULT_LIMIT, MAX_LIMIT, Page
from service.storage.tables import NAME_LENGTH, AliasCapturePolicy, ModelCapturePolicy

router = APIRouter(tags=["monitoring"])

UNKNOWN_MODEL = {404: {"description": "Unknown model"}}
UNKNOWN_ALIAS = {404: {"description": "Unknown name or alias"}}
NO_POLICY = {404: {"description": "Unknown model or alias, or it captures nothing"}}


def _monitoring(request: Request) -> Monitoring:
    return request.app.state.monitoring


def _policy(body: CapturePolicyWrite) -> Policy:
    return Policy(body.rate, body.max_images, body.days)


def _read(row: ModelCapturePolicy | AliasCapturePolicy) -> CapturePolicyRead:
    if isinstance(row, ModelCapturePolicy):
        where: dict[str, str | None] = {"model_id": row.model_id}
    else:
        where = {"name": row.name, "alias": row.alias}
    return CapturePolicyRead(
        **where, rate=row.rate, max_images=row.max_images, days=row.days, updated_at=row.updated_at
    )


@router.put(
    "/models/{model_id}/capture",
    response_model=CapturePolicyRead,
    summary="Capture a sample of what /predict receives for this model",
    description="Each image /predict (or TF Serving's path) answers with this model is kept "
    "with probability `rate`, downscaled (its longer side at most twice the model's input "
    "size), with its scores, ood_score and request id; the oldest go past `max_images`, and "
    "any older than `days`. Off until asked; the request's answer never waits for the store.",
    responses=UNKNOWN_MODEL,
)
def set_model_capture(
    request: Request, session: SessionDep, model_id: str, body: CapturePolicyWrite
) -> CapturePolicyRead:
    answer = _read(captures.set_model_policy(session, model_id, _policy(body)))
    _monitoring(request).recorder.refresh(session)
    return answer


@router.get(
    "/models/{model_id}/capture",
    response_model=CapturePolicyRead,
    summary="The model's own capture policy",
    responses=NO_POLICY,
)
def get_model_capture(session: SessionDep, model_id: str) -> CapturePolicyRead:
    return _read(captures.model_policy(session, model_id))


@router.delete(
    "/models/{model_id}/capture",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Stop capturing for this model (what was captured stays)",
    responses=NO_POLICY,
)
def delete_model_capture(request: Request, session: SessionDep, model_id: str) -> Response:
    captures.clear_model_policy(session, model_id)
    _monitoring(request).recorder.refresh(session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/registry/{name}/aliases/{alias}/capture",
    response_model=CapturePolicyRead,
    summary="Capture for whichever version the alias points to",
    description="The policy follows the alias: captures are kept under the version that "
    "answered, and a version's own policy wins over its alias's. Removing the alias ends it.",
    responses=UNKNOWN_ALIAS,
)
def set_alias_capture(
    request: Request,
    session: SessionDep,
    name: NamePath,
    alias: AliasPath,
    body: CapturePolicyWrite,
) -> CapturePolicyRead:
    answer = _read(captures.set_alias_policy(session, name, alias, _policy(body)))
    _monitoring(request).recorder.refresh(session)
    return answer


@router.get(
    "/registry/{name}/aliases/{alias}/capture",
    response_model=CapturePolicyRead,
    summary="The alias's capture policy",
    responses=NO_POLICY,
)
def get_alias_capture(session: SessionDep, name: NamePath, alias: AliasPath) -> CapturePolicyRead:
    return _read(captures.alias_policy(session, name, alias))


@router.delete(
    "/registry/{name}/aliases/{alias}/capture",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Stop capturing for the alias",
    responses=NO_POLICY,
)
def delete_alias_capture(
    request: Request, session: SessionDep, name: NamePath, alias: AliasPath
) -> Response:
    captures.clear_alias_policy(session, name, alias)
    _monitoring(request).recorder.refresh(session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/models/{model_id}/captures",
    response_model=list[CaptureRead],
    summary="The model's captured predictions",
    description="`sort`: `recent` (newest first), `uncertain` (smallest margin between the "
    "top two scores first) or `unknown` (highest ood_score first; captures without one left "
    'out). Keyset pages: the next page\'s URL is in the `Link: <…>; rel="next"` header.',
    responses={**UNKNOWN_MODEL, 422: {"description": "A bad sort, limit or cursor"}},
)
def list_captures(
    request: Request,
    response: Response,
    session: SessionDep,
    model_id: str,
    sort: Literal["recent", "uncertain", "unknown"] = "recent",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=NAME_LENGTH)] = None,
) -> list[CaptureRead]:
    classes = list(models.get_model(session, model_id).classes)
    page = captures.list_captures(session, model_id, sort, Page(limit=limit, cursor=cursor))
    rows = link_next(page, limit, request, response)
    return [capture_read(row, classes) for row in rows]


@router.get(
    "/models/{model_id}/captures/{capture_id}/image",
    response_class=Response,
    summary="A captured image (JPEG)",
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The stored image"},
        404: {"description": "Unknown model, or no such capture of it"},
    },
)
def capture_image(session: SessionDep, model_id: str, capture_id: str) -> Response:
    data, media_type = captures.capture_image(session, model_id, capture_id)
    return Response(
        data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"}
    )


@router.get(
    "/models/{model_id}/drift",
    response_model=DriftRead,
    summary="Whether what the model is sent drifts from what it learnt from",
    description="This API process's window of the model's last images (their ood_scores), "
    "tested against the validation split's every `test_every` images with a two-sample "
    "Kolmogorov–Smirnov test at `false_alarm_rate` per test.",
    responses={
        **UNKNOWN_MODEL,
        409: {"description": "The model was stored before models carried the score"},
    },
)
def model_drift(request: Request, session: SessionDep, model_id: str) -> DriftRead:
    _, report = models.model_report(session, model_id)
    return drift_report(_monitoring(request).drift, model_id, report)
