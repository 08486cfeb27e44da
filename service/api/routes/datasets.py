from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from sqlalchemy import Row

from service.api.deps import DatabaseDep, SessionDep, SettingsDep
from service.api.pagination import LINK_HEADER, PageDep, link_after, link_next
from service.datasets import actions, edits, imports, pool, versions
from service.datasets import report as reports
from service.datasets import service as datasets
from service.datasets.actions import ReportAction
from service.datasets.schemas import (
    ClassCount,
    DatasetImageRead,
    DatasetImagesAdded,
    DatasetRead,
    DatasetReport,
    DatasetVersionRead,
    DiffImage,
    PoolImagesAdded,
    RelabelledImage,
    SkippedFile,
    VersionDiff,
)
from service.datasets.spec import DatasetEdit, ImageId, ImageLabel, ImportRequest
from service.schemas import JobRead
from service.storage.pages import DEFAULT_LIMIT, MAX_LIMIT
from service.storage.tables import MAX_INTEGER, NAME_LENGTH, Dataset, DatasetVersion, Job
from service.webhook_addresses import check_submitted

router = APIRouter(prefix="/datasets", tags=["datasets"])

NOT_FOUND = {404: {"description": "Unknown dataset"}}
# An image never changes once stored, and (dataset id, image id) never names another.
IMMUTABLE = "max-age=31536000, immutable"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp")


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
    name: Annotated[str | None, Form(max_length=NAME_LENGTH)] = None,
) -> Dataset:
    limits = datasets.upload_limits(settings)
    return datasets.create_dataset(
        session, upload=file.file, filename=file.filename, name=name, limits=limits
    )


@router.post(
    "/{dataset_id}/images",
    response_model=DatasetImagesAdded,
    summary="Add a zip of class folders to a dataset",
    description="The same checks and skip reasons as creating one; classes merge. An image "
    "whose bytes the dataset already holds is skipped (`already in the dataset`), so a large "
    "dataset can be sent in parts and a failed part sent again. Nothing is stored when the "
    "zip as a whole is refused. The images make the dataset's next version; jobs queued or "
    "running on it are not waited for (each trains on the version it named).",
    responses={
        **NOT_FOUND,
        400: {"description": "Not a zip, no image in a class folder, or an unsafe member path"},
        413: {"description": "Over the upload size limit"},
    },
)
def add_images(
    session: SessionDep,
    settings: SettingsDep,
    dataset_id: str,
    file: Annotated[UploadFile, File(description="A .zip: one folder per class, images inside")],
) -> DatasetImagesAdded:
    appended = datasets.append_images(
        session,
        dataset_id,
        upload=file.file,
        filename=file.filename,
        limits=datasets.upload_limits(settings),
    )
    return added_read(appended)


@router.post(
    "/{dataset_id}/pool",
    response_model=PoolImagesAdded,
    summary="Add a zip of unlabelled images to a dataset's pool",
    description="Images in any folders, or none: an upload's checks and skip reasons. They "
    "belong to the dataset but to no version until labelled (an edit's `label` entries); the "
    "review queue of a model trained on the dataset (GET /models/{model_id}/review) offers "
    "them. An image whose bytes the dataset already stores is skipped. Nothing is stored when "
    "the zip as a whole is refused.",
    responses={
        **NOT_FOUND,
        400: {"description": "Not a zip, no image in it, or an unsafe member path"},
        413: {"description": "Over the upload size limit"},
    },
)
def add_to_pool(
    session: SessionDep,
    settings: SettingsDep,
    dataset_id: str,
    file: Annotated[UploadFile, File(description="A .zip of images, in folders or not")],
) -> PoolImagesAdded:
    added = pool.add_to_pool(
        session,
        dataset_id,
        upload=file.file,
        filename=file.filename,
        limits=datasets.upload_limits(settings),
    )
    return PoolImagesAdded(
        dataset_id=added.dataset.id,
        added=added.added,
        pool=added.pool,
        skipped=[SkippedFile(**entry) for entry in added.skipped],
    )


def added_read(appended: datasets.Appended) -> DatasetImagesAdded:
    return DatasetImagesAdded(
        dataset=DatasetRead.model_validate(appended.dataset),
        added=[ClassCount(name=name, count=count) for name, count in appended.added.items()],
        skipped=[SkippedFile(**entry) for entry in appended.skipped],
    )


@router.post(
    "/import",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Import a folder of class folders on the service's host, as a job",
    description="`path` is a directory under IMPORT_ROOT; nothing outside it is read "
    "(symlinks leading out are skipped). The worker checks every file (the job's progress: "
    "a step per file), then stores the images and sets the job's `dataset_id`. With "
    "`dataset_id` the images are added to that dataset, duplicates skipped.",
    responses={
        404: {"description": "Unknown dataset (`dataset_id`)"},
        409: {"description": "Import is off (no IMPORT_ROOT)"},
        422: {"description": "The path is outside IMPORT_ROOT or not a directory"},
    },
)
def import_dataset(
    session: SessionDep, settings: SettingsDep, response: Response, body: ImportRequest
) -> JobRead:
    check_submitted(body.webhook_url, settings.webhook_allowed_networks)
    job = imports.submit_import(session, settings, body)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobRead.model_validate({**_job_fields(job), "model_id": None})


def _job_fields(job: Job) -> dict[str, object]:
    return {name: getattr(job, name) for name in JobRead.model_fields if name != "model_id"}


@router.get(
    "",
    response_model=list[DatasetRead],
    summary="Datasets, newest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of datasets"}},
)
def list_datasets(
    session: SessionDep, request: Request, response: Response, page: PageDep
) -> list[Dataset]:
    return link_next(datasets.list_datasets(session, page), page.limit, request, response)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=NOT_FOUND)
def read_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    return datasets.get_dataset(session, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"description": "A queued or running job uses it"}},
)
def delete_dataset(session: SessionDep, dataset_id: str) -> Response:
    datasets.delete_dataset(session, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset_id}/images",
    response_model=list[DatasetImageRead],
    summary="A version's images (without their bytes) in upload order, a page at a time",
    description="The latest version's unless `version` names another; labels are the "
    "version's. 422 names `label` when it is not a class of that version.",
    responses={200: {"headers": LINK_HEADER, "description": "A page of images"}, **NOT_FOUND},
)
def list_images(
    session: SessionDep,
    request: Request,
    response: Response,
    dataset_id: str,
    label: Annotated[
        str | None, Query(max_length=NAME_LENGTH, description="Only this class")
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_INTEGER, description="The version (default: latest)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Images per page")] = (
        DEFAULT_LIMIT
    ),
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=datasets.MAX_IMAGE_ID,
            description='Only images after this image id; the `Link: <…>; rel="next"` header '
            "of the page before carries it.",
        ),
    ] = None,
) -> Sequence[Row[Any]]:
    rows, next_after = datasets.list_images(
        session, dataset_id, version=version, label=label, limit=limit, after=after
    )
    return link_after(rows, next_after, limit, request, response)


@router.get(
    "/{dataset_id}/images/{image_id}",
    response_class=Response,
    summary="One image as uploaded, or a JPEG thumbnail of it with `size`",
    responses={
        200: {
            "content": {
                kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES
            },
            "description": "The image; a thumbnail is always image/jpeg",
        },
        404: {"description": "Unknown dataset, or no such image in it"},
    },
)
def read_image(
    session: SessionDep,
    dataset_id: str,
    image_id: int,
    size: Annotated[
        int | None,
        Query(
            ge=datasets.THUMBNAIL_SIZES.start,
            le=datasets.THUMBNAIL_SIZES.stop - 1,
            description="A thumbnail whose longer side is this many pixels, aspect kept",
        ),
    ] = None,
) -> Response:
    data, media_type = datasets.image_bytes(session, dataset_id, image_id, size=size)
    headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type=media_type, headers=headers)


@router.get(
    "/{dataset_id}/report",
    response_model=DatasetReport,
    summary="What in the dataset will hurt training or flatter its validation score",
    description="Class balance and small classes; exact and near-duplicate images, and those "
    "that straddle the training/validation split the worker would make for `seed` and "
    "`validation_split`; images upscaled to `input_size`, of extreme aspect ratio, grayscale "
    "or CMYK; the stored label review. `warnings` says each problem in a sentence.",
    responses=NOT_FOUND,
)
def read_report(
    database: DatabaseDep,
    dataset_id: str,
    seed: Annotated[
        int, Query(ge=0, le=MAX_INTEGER, description="The training seed (`training.seed`)")
    ] = 0,
    validation_split: Annotated[
        float, Query(ge=0.0, lt=1.0, description="`training.validation_split`")
    ] = 0.2,
    input_size: Annotated[
        int | None,
        Query(ge=1, le=2048, description="The backbone's input size: smaller images are listed"),
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_INTEGER, description="The version (default: latest)")
    ] = None,
) -> DatasetReport:
    # A GET that may write: images stored before their facts were measured at upload get
    # them now. SQLite cannot make a read transaction a writing one once another writer has
    # committed, so this one takes the write lock up front (storage/db.py).
    with database.session(write=True) as session:
        return reports.dataset_report(
            session,
            dataset_id,
            seed=seed,
            validation_split=validation_split,
            input_size=input_size,
            version=version,
        )


# -- versions and edits ----------------------------------------------------------------------

VERSION_NOT_FOUND = {404: {"description": "Unknown dataset, or no such version of it"}}


@router.get(
    "/{dataset_id}/versions",
    response_model=list[DatasetVersionRead],
    summary="The dataset's versions, oldest first, a page at a time",
    responses={200: {"headers": LINK_HEADER, "description": "A page of versions"}, **NOT_FOUND},
)
def list_versions(
    session: SessionDep,
    request: Request,
    response: Response,
    dataset_id: str,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Versions per page")] = (
        DEFAULT_LIMIT
    ),
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_INTEGER, description="Only versions after this number"),
    ] = None,
) -> list[DatasetVersion]:
    dataset = datasets.get_dataset(session, dataset_id)
    rows, next_after = versions.list_versions(session, dataset, limit=limit, after=after)
    return link_after(rows, next_after, limit, request, response)


@router.get(
    "/{dataset_id}/versions/{number}",
    response_model=DatasetVersionRead,
    responses=VERSION_NOT_FOUND,
)
def read_version(session: SessionDep, dataset_id: str, number: int) -> DatasetVersion:
    return versions.get_version(session, datasets.get_dataset(session, dataset_id), number)


@router.get(
    "/{dataset_id}/versions/{a}/diff/{b}",
    response_model=VersionDiff,
    summary="The images added, removed and relabelled from version a to version b",
    responses=VERSION_NOT_FOUND,
)
def diff_versions(
    session: SessionDep,
    dataset_id: str,
    a: int,
    b: int,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="Entries per list, by image id")
    ] = 1000,
) -> VersionDiff:
    dataset = datasets.get_dataset(session, dataset_id)
    found = versions.diff(session, dataset, a, b, limit=limit)
    return VersionDiff(
        from_version=a,
        to_version=b,
        added=[DiffImage(id=i, filename=f, label=label) for i, f, label in found.added],
        removed=[DiffImage(id=i, filename=f, label=label) for i, f, label in found.removed],
        relabelled=[
            RelabelledImage(id=i, filename=f, from_label=old, to_label=new)
            for i, f, old, new in found.relabelled
        ],
        counts=found.counts,
    )


@router.post(
    "/{dataset_id}/edits",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetVersionRead,
    summary="Relabel and delete images at once: the dataset's next version",
    description="All of it or nothing: 422 names the first entry that is not an image of the "
    "latest version, names an image twice, or would leave fewer than 2 classes. Image bytes "
    "stay stored for the versions that hold them; jobs train on the version they named.",
    responses={
        **NOT_FOUND,
        409: {"description": "`base_version` is no longer the latest"},
    },
)
def edit_dataset(session: SessionDep, dataset_id: str, body: DatasetEdit) -> DatasetVersion:
    return edits.edit_dataset(session, dataset_id, body)


@router.patch(
    "/{dataset_id}/images/{image_id}",
    response_model=DatasetImageRead,
    summary="Relabel one image (a new label makes a new class): the dataset's next version",
    responses={404: {"description": "Unknown dataset, or no such image in its latest version"}},
)
def relabel_image(
    session: SessionDep, dataset_id: str, image_id: ImageId, body: ImageLabel
) -> Row[Any]:
    return edits.relabel_image(session, dataset_id, image_id, body.label)


@router.delete(
    "/{dataset_id}/images/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Leave one image out of the dataset's next version",
    responses={404: {"description": "Unknown dataset, or no such image in its latest version"}},
)
def delete_image(session: SessionDep, dataset_id: str, image_id: ImageId) -> Response:
    edits.delete_image(session, dataset_id, image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{dataset_id}/report/actions/{action}",
    response_model=DatasetEdit,
    summary="What a report action would change, as the edit that applies it",
    description="`remove-duplicates` keeps the first of each group of byte-identical images; "
    "`remove-leakage` removes the validation-side copy of each pair straddling the split for "
    "`seed` and `validation_split`; `accept-suggestions` relabels the images the label review "
    "finds likely mislabelled to the class it suggests. Nothing changes until the answer is "
    "sent to POST /datasets/{dataset_id}/edits; its `base_version` makes that a 409 if the "
    "dataset moved on meanwhile.",
    responses=VERSION_NOT_FOUND,
)
def report_action(
    database: DatabaseDep,
    dataset_id: str,
    action: ReportAction,
    seed: Annotated[
        int, Query(ge=0, le=MAX_INTEGER, description="The training seed (`training.seed`)")
    ] = 0,
    validation_split: Annotated[
        float, Query(ge=0.0, lt=1.0, description="`training.validation_split`")
    ] = 0.2,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_INTEGER, description="The version (default: latest)")
    ] = None,
) -> DatasetEdit:
    with database.session(write=True) as session:  # the report may measure: see read_report
        proposal = actions.propose(
            session,
            dataset_id,
            action,
            seed=seed,
            validation_split=validation_split,
            version=version,
        )
        return proposal.edit
