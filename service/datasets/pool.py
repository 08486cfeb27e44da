"""A dataset's unlabelled pool: images sent without class folders (POST /datasets/{id}/pool),
stored with the dataset's images but in no version's training data until a person labels
them (an edit's `label` entries, service/datasets/edits.py). The review queue offers them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import metrics
from service.datasets.ingest import BadArchive, Limits, Planned, open_zip, scan_zip, zip_images
from service.datasets.service import (
    DUPLICATE,
    HASH_CHUNK,
    insert_images,
    locked_dataset,
)
from service.problems import BadContent
from service.storage.tables import Dataset, DatasetImage, PoolImage


@dataclass(frozen=True)
class PoolAdded:
    """What an upload to the pool did: images added, the pool's size now, what was skipped."""

    dataset: Dataset
    added: int
    pool: int
    skipped: list[dict[str, str]]


def add_to_pool(
    session: Session, dataset_id: str, *, upload: IO[bytes], filename: str | None, limits: Limits
) -> PoolAdded:
    """Store a zip's images (any folders, or none) in the dataset's pool: an upload's checks
    and skip reasons; an image whose bytes the dataset already stores is skipped. No version
    is made: the pool is not training data."""
    try:
        with open_zip(upload, limits) as archive:
            plan = scan_zip(archive, limits, labelled=False)  # before the first query
            if not plan.images:
                raise BadArchive("the zip holds no image")
            dataset = locked_dataset(session, dataset_id)
            new, duplicates = _unstored(session, dataset, plan.images)
            with session.begin_nested():  # all of it or none, as an upload
                insert_images(session, dataset.id, zip_images(archive, new, limits), pool=True)
    except BadArchive as error:
        raise BadContent(f"{filename or 'file'}: {error}") from None
    metrics.observe_upload("pool", upload.seek(0, io.SEEK_END))
    return PoolAdded(dataset, len(new), pool_size(session, dataset_id), plan.skipped + duplicates)


def _unstored(
    session: Session, dataset: Dataset, images: list[Planned]
) -> tuple[list[Planned], list[dict[str, str]]]:
    """The images whose bytes the dataset does not store yet (nor this zip, earlier)."""
    stored: set[str] = set()
    hashes = sorted({image.facts.sha256 for image in images})
    for start in range(0, len(hashes), HASH_CHUNK):
        stored.update(
            session.scalars(
                select(DatasetImage.sha256).where(
                    DatasetImage.dataset_id == dataset.id,
                    DatasetImage.sha256.in_(hashes[start : start + HASH_CHUNK]),
                )
            )
        )
    new: list[Planned] = []
    duplicates: list[dict[str, str]] = []
    for image in images:
        if image.facts.sha256 in stored:
            duplicates.append({"path": image.path, "reason": DUPLICATE})
        else:
            new.append(image)
            stored.add(image.facts.sha256)
    return new, duplicates


def pool_size(session: Session, dataset_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(PoolImage).where(PoolImage.dataset_id == dataset_id)
    )


def pool_images(session: Session, dataset_id: str, limit: int) -> list[tuple[int, str]]:
    """The newest `limit` images of the pool: (image id, filename)."""
    rows = session.execute(
        select(DatasetImage.id, DatasetImage.filename)
        .join(PoolImage, PoolImage.image_id == DatasetImage.id)
        .where(PoolImage.dataset_id == dataset_id)
        .order_by(DatasetImage.id.desc())
        .limit(limit)
    )
    return [(image_id, filename) for image_id, filename in rows]


def in_pool(session: Session, dataset_id: str, image_ids: Sequence[int]) -> set[int]:
    """Those of `image_ids` in the dataset's pool."""
    found: set[int] = set()
    for start in range(0, len(image_ids), HASH_CHUNK):
        found.update(
            session.scalars(
                select(PoolImage.image_id).where(
                    PoolImage.dataset_id == dataset_id,
                    PoolImage.image_id.in_(image_ids[start : start + HASH_CHUNK]),
                )
            )
        )
    return found
