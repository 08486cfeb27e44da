"""Datasets: create one from an uploaded zip, list, read, delete; list its images and read
one (or a thumbnail of it). The API and the console both call these; neither touches the
tables for it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import IO

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, load_only

from service import jobs, metrics
from service.config import Settings
from service.ingest import BadArchive, Limits, read_image_zip
from service.ml.images import UndecodableImage, thumbnail
from service.problems import BadContent, Invalid, NotFound
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import Dataset, DatasetImage, new_id

# Image ids are a 32-bit INTEGER column on PostgreSQL: a larger one cannot name a row, and
# sending it to the database would fail there rather than answer "no such image".
MAX_IMAGE_ID = 2**31 - 1
THUMBNAIL_SIZES = range(16, 1025)  # longer side, px

# By their first bytes: ingest kept only images that decode as one of these formats.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def upload_limits(settings: Settings) -> Limits:
    return Limits(
        max_files=settings.max_dataset_files,
        max_image_bytes=settings.max_image_bytes,
        max_total_bytes=settings.max_dataset_bytes,
    )


def create_dataset(
    session: Session, *, upload: IO[bytes], filename: str | None, name: str | None, limits: Limits
) -> Dataset:
    """Read the zip (class folders of images) and store every image; BadContent naming the
    file when the upload as a whole is refused, and then nothing is stored."""
    try:
        archive = read_image_zip(upload, limits)
    except BadArchive as error:
        raise BadContent(f"{filename or 'file'}: {error}") from None
    metrics.observe_upload("dataset", upload.seek(0, io.SEEK_END))
    dataset = Dataset(
        id=new_id("d"),
        name=name or (filename or "dataset").removesuffix(".zip"),
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
            sha256=image.facts.sha256,
            phash=image.facts.phash,
            width=image.facts.width,
            height=image.facts.height,
            mode=image.facts.mode,
        )
        for image in archive.images
    )
    session.flush()
    return dataset


def list_datasets(session: Session, page: Page) -> PageOf[Dataset]:
    return fetch_page(session, select(Dataset), Dataset, page)


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset


def delete_dataset(session: Session, dataset_id: str) -> None:
    """Conflict while a queued or running job trains on it."""
    dataset = get_dataset(session, dataset_id)
    jobs.ensure_unused(session, dataset)
    session.execute(delete(DatasetImage).where(DatasetImage.dataset_id == dataset.id))
    session.delete(dataset)
    session.flush()


def list_images(
    session: Session, dataset_id: str, *, label: str | None, limit: int, after: int | None
) -> tuple[Sequence[DatasetImage], int | None]:
    """Up to `limit` of the dataset's images (only `label`'s when given) in upload order,
    after the image `after`; and the id to pass as `after` for the next ones, None when no
    more follow. The rows carry id, label, filename and size, never the bytes (reading
    `data` raises rather than fetching each image's bytes one query at a time).

    Keyed by id, not by an offset: images never change, so a page is stable however deep.
    """
    dataset = get_dataset(session, dataset_id)
    query = (
        select(DatasetImage)
        .options(
            load_only(
                DatasetImage.id,
                DatasetImage.label,
                DatasetImage.filename,
                DatasetImage.size_bytes,
                raiseload=True,
            )
        )
        .where(DatasetImage.dataset_id == dataset.id)
        .order_by(DatasetImage.id)
        .limit(limit + 1)  # one past the page: does another follow?
    )
    if label is not None:
        _check_label(dataset, label)
        query = query.where(DatasetImage.label == label)
    if after is not None:
        query = query.where(DatasetImage.id > max(0, min(after, MAX_IMAGE_ID)))
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], rows[limit - 1].id


def _check_label(dataset: Dataset, label: str) -> None:
    names = [entry["name"] for entry in dataset.classes]
    if label not in names:
        raise Invalid(
            f"{label!r} is not a class of dataset {dataset.id}: {names}",
            field=("label",),
            part="query",
        )


def image_bytes(
    session: Session, dataset_id: str, image_id: int, *, size: int | None
) -> tuple[bytes, str]:
    """One image of the dataset and its media type: the bytes as uploaded, or with `size` a
    JPEG thumbnail whose longer side is `size` px (see `ml.images.thumbnail`). NotFound for
    an image of another dataset too: the pair (dataset, image) names it."""
    if size is not None and size not in THUMBNAIL_SIZES:
        raise Invalid(
            f"a thumbnail's size is {THUMBNAIL_SIZES.start}..{THUMBNAIL_SIZES.stop - 1} px, "
            f"not {size}",
            field=("size",),
            part="query",
        )
    dataset = get_dataset(session, dataset_id)
    data = None
    if 0 < image_id <= MAX_IMAGE_ID:
        data = session.scalar(
            select(DatasetImage.data).where(
                DatasetImage.id == image_id, DatasetImage.dataset_id == dataset.id
            )
        )
    if data is None:
        raise NotFound(f"dataset {dataset.id} has no image {image_id}")
    if size is None:
        return data, media_type(data)
    return _thumbnail(data, size, image_id), "image/jpeg"


def _thumbnail(data: bytes, size: int, image_id: int) -> bytes:
    try:
        return thumbnail(data, size)
    except UndecodableImage as error:  # ingest decoded it once; a later, stricter limit may not
        raise BadContent(f"image {image_id}: {error}") from None


def media_type(data: bytes) -> str:
    """The image's media type, told by its first bytes as ingest told its format by decoding."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
