from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile, status
from sqlalchemy import select

from service import jobs
from service.api.deps import SessionDep
from service.api.errors import invalid
from service.api.pagination import LINK_HEADER, PageDep, keyset, one_page
from service.backbones import BACKBONES
from service.schemas import WeightsRead
from service.storage.tables import WeightsFile, new_id

router = APIRouter(prefix="/weights", tags=["weights"])

NOT_FOUND = {404: {"description": "Unknown weights file"}}


def get_weights_file(session: SessionDep, weights_id: str) -> WeightsFile:
    weights = session.get(WeightsFile, weights_id)
    if weights is None:
        raise HTTPException(404, f"no weights file {weights_id!r}")
    return weights


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WeightsRead,
    summary="Upload a Keras weights file for a backbone (include_top=False)",
    responses={
        400: {"description": "Not a Keras weights file, or it does not fit the backbone"},
        413: {"description": "Over the upload size limit"},
        422: {"description": "Unknown backbone"},
    },
)
def upload_weights(
    session: SessionDep,
    file: Annotated[
        UploadFile, File(description="A .weights.h5 file, or Keras's legacy ..._no_top.h5")
    ],
    backbone: Annotated[str, Form(description="A name from GET /backbones")],
) -> WeightsFile:
    from service.ml.export import sha256
    from service.ml.weights import WeightsMismatch, check_weights

    if backbone not in BACKBONES:
        raise invalid(["backbone"], f"unknown backbone {backbone!r}; GET /backbones lists them")
    data = file.file.read()
    filename = file.filename or "weights.h5"
    try:
        check_weights(backbone, data)
    except WeightsMismatch as error:
        raise HTTPException(400, f"{filename}: {error}") from None
    weights = WeightsFile(
        id=new_id("w"),
        backbone=backbone,
        filename=filename[:255],
        size_bytes=len(data),
        sha256=sha256(data),
        data=data,
    )
    session.add(weights)
    session.flush()
    return weights


@router.get(
    "",
    response_model=list[WeightsRead],
    summary="Uploaded weights files, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of weights files"}},
)
def list_weights(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[WeightsFile]:
    files = session.scalars(keyset(select(WeightsFile), WeightsFile, page)).all()
    return one_page(files, page, request, response)


@router.get("/{weights_id}", response_model=WeightsRead, responses=NOT_FOUND)
def read_weights(session: SessionDep, weights_id: str) -> WeightsFile:
    return get_weights_file(session, weights_id)


@router.delete(
    "/{weights_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"description": "A queued or running job uses it"}},
)
def delete_weights(session: SessionDep, weights_id: str) -> Response:
    weights = get_weights_file(session, weights_id)
    jobs.ensure_unused(session, weights)
    session.delete(weights)
    session.flush()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
