from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status

from service.api.deps import SessionDep
from service.api.pagination import LINK_HEADER, PageDep, link_next
from service.models import weights_files
from service.models.schemas import WeightsRead
from service.storage.tables import WeightsFile

router = APIRouter(prefix="/weights", tags=["weights"])

NOT_FOUND = {404: {"description": "Unknown weights file"}}


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
    return weights_files.upload_weights(
        session, data=file.file.read(), filename=file.filename, backbone=backbone
    )


@router.get(
    "",
    response_model=list[WeightsRead],
    summary="Uploaded weights files, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of weights files"}},
)
def list_weights(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[WeightsFile]:
    return link_next(weights_files.list_weights(session, page), page.limit, request, response)


@router.get("/{weights_id}", response_model=WeightsRead, responses=NOT_FOUND)
def read_weights(session: SessionDep, weights_id: str) -> WeightsFile:
    return weights_files.get_weights(session, weights_id)


@router.delete(
    "/{weights_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"description": "A queued or running job uses it"}},
)
def delete_weights(session: SessionDep, weights_id: str) -> Response:
    weights_files.delete_weights(session, weights_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
