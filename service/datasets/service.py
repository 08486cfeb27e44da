"""Datasets: create one from an uploaded zip, add a zip's images to one, list, read, delete;
list its images and read one (or a thumbnail of it). The API and the console both call
these; neither touches the tables for it."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.orm import Session

from service import jobs, metrics
from service.config import Settings
from service.datasets import versions
from service.datasets.ingest import (
    BadArchive,
    Limits,
    Planned,
    count_labels,
    open_zip,
    require_classes,
    scan_zip,
    zip_images,
)
from service.ml.images import UndecodableImage, thumbnail
from service.problems import BadContent, Invalid, NotFound
from service.storage.pages import Page, PageOf, after_page, fetch_page
from service.storage.tables import (
    MAX_INTEGER,
    Dataset,
    DatasetImage,
    DatasetVersion,
    PoolImage,
    VersionImage,
    new_id,
)

# Image ids are a 32-bit INTEGER column on PostgreSQL: a larger one cannot name a row, and
# sending it to the database would fail there rather than answer "no such image".
MAX_IMAGE_ID = MAX_INTEGER
# Image rows whose bytes one query reads: bounded IN lists.
FETCH = 500
THUMBNAIL_SIZES = range(16, 1025)  # longer side, px
# An insert batch ends at whichever comes first: the API's memory during an upload is about
# one batch, whatever the upload's size.
BATCH_ROWS = 256
BATCH_BYTES = 16 << 20
HASH_CHUNK = 500  # hashes per lookup: well under any database's parameter limit
DUPLICATE = "already in the dataset (the same bytes)"

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
    file when the upload as a whole is refused, and then nothing is stored (the request's
    transaction rolls back the rows already flushed)."""
    try:
        with open_zip(upload, limits) as archive:
            # Pass 1 before the first query: on SQLite a writing session takes the database's
            # write lock with its first statement, and decoding a large zip takes a while.
            plan = scan_zip(archive, limits)
            require_classes(plan.class_counts, multi_label=plan.multi_label)
            dataset = Dataset(
                id=new_id("d"),
                name=name or (filename or "dataset").removesuffix(".zip"),
                num_images=0,
                classes=[],
                skipped=plan.skipped,
                multi_label=plan.multi_label,
            )
            # A savepoint: a caller that answers the error and commits (the console) still
            # keeps none of the rows flushed before it.
            with session.begin_nested():
                session.add(dataset)
                session.flush()
                images = zip_images(archive, plan.images, limits)
                add_images(session, dataset, images, source="upload")
    except BadArchive as error:
        raise BadContent(f"{filename or 'file'}: {error}") from None
    metrics.observe_upload("dataset", upload.seek(0, io.SEEK_END))
    return dataset


@dataclass
class Appended:
    """What an append did: the dataset as it is now, what it added, what it skipped."""

    dataset: Dataset
    added: dict[str, int]
    skipped: list[dict[str, str]]


def append_images(
    session: Session, dataset_id: str, *, upload: IO[bytes], filename: str | None, limits: Limits
) -> Appended:
    """Add a zip's images to a dataset as its next version: the same checks and skip reasons
    as creation, classes merged. An image whose bytes the latest version (or this zip, earlier
    in path order) already holds is skipped as a duplicate, so a part that failed can be sent
    again. Jobs queued or running on the dataset are not waited for: each trains on the
    version it named."""
    try:
        with open_zip(upload, limits) as archive:
            plan = scan_zip(archive, limits)  # before the first query: see create_dataset
            require_classes(plan.class_counts, at_least=1, multi_label=plan.multi_label)
            dataset = locked_dataset(session, dataset_id)
            check_layout(dataset, plan.multi_label)
            new, restored, duplicates = unseen_images(session, dataset, plan.images)
            with session.begin_nested():  # as in create_dataset: all of it or none
                contents = zip_images(archive, new, limits)
                add_images(session, dataset, contents, source="append", restored=restored)
    except BadArchive as error:
        raise BadContent(f"{filename or 'file'}: {error}") from None
    metrics.observe_upload("dataset", upload.seek(0, io.SEEK_END))
    dataset.skipped = [*dataset.skipped, *plan.skipped]
    session.flush()
    labels = [image.label for image in new] + [label for _, label in restored]
    added = count_labels(labels, dataset.multi_label)
    return Appended(dataset, added, plan.skipped + duplicates)


def check_layout(dataset: Dataset, multi_label: bool) -> None:
    """BadArchive when an append's layout is not its dataset's: class folders for a
    single-label dataset, a labels file for a multi-label one."""
    if dataset.multi_label and not multi_label:
        raise BadArchive(
            f"dataset {dataset.id} is multi-label: its images come with a labels.csv or "
            "labels.jsonl at the zip's top, not in class folders"
        )
    if multi_label and not dataset.multi_label:
        raise BadArchive(
            f"dataset {dataset.id} is single-label (class folders): a labels file makes a "
            "multi-label dataset of its own"
        )


def locked_dataset(session: Session, dataset_id: str) -> Dataset:
    """The dataset, its row locked on PostgreSQL until the transaction ends: two writers at
    once would otherwise both number their version from the same latest one and miss each
    other's images. (SQLite's writing session already holds the database's write lock.)"""
    dataset = session.get(Dataset, dataset_id, with_for_update=True)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return dataset


def unseen_images(
    session: Session, dataset: Dataset, images: list[Planned]
) -> tuple[list[Planned], list[tuple[int, str]], list[dict[str, str]]]:
    """Split an upload's images by their bytes: new to the dataset (to store); stored before
    but not in its latest version (restored: their image id with the upload's label, nothing
    stored again); and the others, skipped as duplicates. Looked up by hash a chunk at a time
    (ix_dataset_images_dataset_id_sha256)."""
    stored: dict[str, int] = {}
    hashes = sorted({image.facts.sha256 for image in images})
    for start in range(0, len(hashes), HASH_CHUNK):
        chunk = hashes[start : start + HASH_CHUNK]
        rows = session.execute(
            select(DatasetImage.sha256, DatasetImage.id).where(
                DatasetImage.dataset_id == dataset.id, DatasetImage.sha256.in_(chunk)
            )
        )
        stored.update((sha256, image_id) for sha256, image_id in rows if sha256 is not None)
    latest = versions.get_version(session, dataset, None)
    held = versions.manifest_labels(session, latest.id, list(stored.values()))
    new: list[Planned] = []
    restored: list[tuple[int, str]] = []
    duplicates: list[dict[str, str]] = []
    seen: set[str] = set()
    for image in images:
        sha256 = image.facts.sha256
        image_id = stored.get(sha256)
        if sha256 in seen or (image_id is not None and image_id in held):
            duplicates.append({"path": image.path, "reason": DUPLICATE})
        elif image_id is not None:
            restored.append((image_id, image.label))
        else:
            new.append(image)
        seen.add(sha256)
    return new, restored, duplicates


def add_images(
    session: Session,
    dataset: Dataset,
    contents: Iterable[tuple[Planned, bytes]],
    *,
    source: str,
    restored: Sequence[tuple[int, str]] = (),
    message: str = "",
) -> DatasetVersion:
    """Insert `contents` (new images and their bytes, read one at a time) in bounded batches,
    so memory stays flat whatever the dataset's size, and make the dataset's next version:
    the last one's manifest, these images and the `restored` ones. Nothing is committed
    here: the caller's transaction keeps all or nothing."""
    after = versions.last_image_id(session, dataset.id)
    insert_images(session, dataset.id, contents)

    def fill(session: Session, version_id: int, previous: int | None) -> None:
        versions.copy_manifest(session, version_id, previous)
        versions.add_stored(session, version_id, dataset.id, after, restored)

    return versions.new_version(session, dataset, source=source, message=message, fill=fill)


def insert_images(
    session: Session,
    dataset_id: str,
    contents: Iterable[tuple[Planned, bytes]],
    *,
    pool: bool = False,
) -> None:
    """Insert `contents` in bounded batches (plain INSERTs: no ORM object keeps an image's
    bytes once its batch is sent); with `pool`, into the dataset's unlabelled pool."""
    batch: list[dict[str, Any]] = []
    size = 0
    for image, data in contents:
        batch.append(image_row(dataset_id, image, data))
        size += len(data)
        if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
            _insert_batch(session, dataset_id, batch, pool)
            batch, size = [], 0
    if batch:
        _insert_batch(session, dataset_id, batch, pool)


def _insert_batch(
    session: Session, dataset_id: str, rows: list[dict[str, Any]], pool: bool
) -> None:
    if not pool:
        session.execute(insert(DatasetImage), rows)
        return
    ids = session.scalars(insert(DatasetImage).returning(DatasetImage.id), rows).all()
    pooled = [{"image_id": image_id, "dataset_id": dataset_id} for image_id in ids]
    session.execute(insert(PoolImage), pooled)


def image_row(dataset_id: str, image: Planned, data: bytes) -> dict[str, Any]:
    """A DatasetImage row's values: the image's bytes, label, name and facts."""
    facts = image.facts
    return {
        "dataset_id": dataset_id,
        "uploaded_label": image.label,
        "filename": image.filename,
        "data": data,
        "size_bytes": len(data),
        "sha256": facts.sha256,
        "phash": facts.phash,
        "width": facts.width,
        "height": facts.height,
        "mode": facts.mode,
    }


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


def image_data(session: Session, dataset_id: str, ids: Sequence[int]) -> dict[int, bytes]:
    """The bytes of those of `ids` the dataset still holds, by id, read `FETCH` at a time
    (the caller bounds the memory by how many ids it asks for)."""
    data: dict[int, bytes] = {}
    for start in range(0, len(ids), FETCH):
        query = select(DatasetImage.id, DatasetImage.data).where(
            DatasetImage.dataset_id == dataset_id, DatasetImage.id.in_(ids[start : start + FETCH])
        )
        data.update((row.id, row.data) for row in session.execute(query))
    return data


def list_images(
    session: Session,
    dataset_id: str,
    *,
    version: int | None = None,
    label: str | None,
    limit: int,
    after: int | None,
) -> tuple[Sequence[Row[Any]], int | None]:
    """Up to `limit` of the images of the dataset's version `version` (its latest when None;
    only `label`'s when given) in upload order, after the image `after`; and the id to pass
    as `after` for the next ones, None when no more follow. Each row carries id, label (the
    version's), filename and size, never the bytes.

    Keyed by id, not by an offset: a version never changes, so a page is stable however deep.
    """
    dataset = get_dataset(session, dataset_id)
    listed = versions.get_version(session, dataset, version)
    query = (
        select(
            DatasetImage.id,
            VersionImage.label,
            DatasetImage.filename,
            DatasetImage.size_bytes,
        )
        .join(VersionImage, VersionImage.image_id == DatasetImage.id)
        .where(VersionImage.version_id == listed.id)
        .order_by(VersionImage.image_id)
        .limit(limit + 1)  # one past the page: does another follow?
    )
    if label is not None:
        _check_label(listed, label)
        query = query.where(VersionImage.label == label)
    if after is not None:
        query = query.where(VersionImage.image_id > max(0, min(after, MAX_IMAGE_ID)))
    return after_page(list(session.execute(query)), limit, key=lambda row: row.id)


def _check_label(version: DatasetVersion, label: str) -> None:
    names = [entry["name"] for entry in version.classes]
    if label not in names:
        raise Invalid(
            f"{label!r} is not a class of version {version.number} of dataset "
            f"{version.dataset_id}: {names}",
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


def set_label_review(session: Session, dataset_id: str, review: dict[str, Any]) -> None:
    """Store the dataset's label review (likely mislabelled images), made by an advice or a
    training job, in the transaction that stores the job's outcome."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(label_review=review))
