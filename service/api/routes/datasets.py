from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile, status
from sqlalchemy import delete, select

from service import jobs
from service.api.deps import SessionDep, SettingsDep
from service.api.pagination import LINK_HEADER, PageDep, keyset, one_page
from service.ingest import BadArchive, Limits, read_image_zip
from service.schemas import DatasetRead
from service.storage.tables import Dataset, DatasetImage, new_id

router = APIRouter(prefix="/datasets", tags=["datasets"])

NOT_FOUND = {404: {"description": "Unknown dataset"}}


def get_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise HTTPException(404, f"no dataset {dataset_id!r}")
    return dataset


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    summary="Upload a zip of class folders",
    responses={
        400: {"description": "Not a zip, fewer than 2 classes, or an unsafe member path"},
        413: {"description": "Over the upload size limit"},
    },
)
def create_dataset(
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A .zip: one folder per class, images inside")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> Dataset:
    limits = Limits(
        max_files=settings.max_dataset_files,
        max_image_bytes=settings.max_image_bytes,
        max_total_bytes=settings.max_dataset_bytes,
    )
    try:
        archive = read_image_zip(file.file, limits)
    except BadArchive as error:
        raise HTTPException(400, f"{file.filename or 'file'}: {error}") from None
    dataset = Dataset(
        id=new_id("d"),
        name=name or (file.filename or "dataset").removesuffix(".zip"),
        num_images=len(archive.images),
        classes=[{"name": label, "count": count} for label, count in archive.class_counts.items()],
        skipped=archive.skipped,
    )
    session.add(dataset)
    session.flush()
    session.add_all(
        DatasetImage(
            dataset_id=dataset.id,
            label=image.label,
            filename=image.filename,
            data=image.data,
            size_bytes=len(image.data),
        )
        for image in archive.images
    )
    session.flush()
    return dataset


@router.get(
    "",
    response_model=list[DatasetRead],
    summary="Datasets, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of datasets"}},
)
def list_datasets(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[Dataset]:
    datasets = session.scalars(keyset(select(Dataset), Dataset, page)).all()
    return one_page(datasets, page, request, response)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=NOT_FOUND)
def read_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    return get_dataset(session, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"description": "A queued or running job uses it"}},
)
def delete_dataset(session: SessionDep, dataset_id: str) -> Response:
    dataset = get_dataset(session, dataset_id)
    jobs.ensure_unused(session, dataset)
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset.id))
    session.delete(dataset)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
