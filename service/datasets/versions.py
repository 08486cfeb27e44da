"""Dataset versions: every change (upload, append, import, edit) makes a new immutable
version, numbered 1, 2, 3… per dataset. A version is a manifest (`VersionImage`: image id and
label); image bytes are stored once, whichever versions hold them.

A new version's manifest is written by the database (INSERT … SELECT from the version before),
so an edit of a large dataset moves no rows through Python. The dataset row's `classes` and
`num_images` are its latest version's, set in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session, aliased

from service.datasets.label_files import label_counts
from service.problems import Invalid, NotFound
from service.storage.pages import after_page
from service.storage.tables import (
    MAX_INTEGER,
    Dataset,
    DatasetImage,
    DatasetVersion,
    PoolImage,
    VersionImage,
)

# Manifest rows one statement names: bounded IN lists, well under any parameter limit.
CHUNK = 500


def get_version(session: Session, dataset: Dataset, number: int | None) -> DatasetVersion:
    """The dataset's version `number` (its latest when None); NotFound naming both."""
    wanted = dataset.version if number is None else number
    version = None
    if 0 < wanted <= MAX_INTEGER:
        version = session.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.number == wanted
            )
        )
    if version is None:
        raise NotFound(
            f"dataset {dataset.id} has no version {wanted} (its latest is {dataset.version})",
            field=("dataset_version",),
        )
    return version


def list_versions(
    session: Session, dataset: Dataset, *, limit: int, after: int | None
) -> tuple[list[DatasetVersion], int | None]:
    """Up to `limit` versions, oldest first, after version `after`; and the number to pass
    as `after` for the next ones (None when no more follow)."""
    query = (
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.number)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(DatasetVersion.number > min(after, MAX_INTEGER))
    return after_page(list(session.scalars(query)), limit, key=lambda row: row.number)


def version_images(version_id: int, *columns: Any) -> Select[Any]:
    """A version's images in upload order: id, label (the version's), filename and `columns`
    of DatasetImage."""
    return (
        select(DatasetImage.id, VersionImage.label, DatasetImage.filename, *columns)
        .join(VersionImage, VersionImage.image_id == DatasetImage.id)
        .where(VersionImage.version_id == version_id)
        .order_by(VersionImage.image_id)
    )


def total_bytes(session: Session, version_id: int) -> int:
    """The encoded bytes of the version's images."""
    return session.scalar(
        select(func.coalesce(func.sum(DatasetImage.size_bytes), 0))
        .join(VersionImage, VersionImage.image_id == DatasetImage.id)
        .where(VersionImage.version_id == version_id)
    )


def manifest_labels(session: Session, version_id: int, image_ids: Sequence[int]) -> dict[int, str]:
    """The labels `version_id` gives those of `image_ids` it holds."""
    found: dict[int, str] = {}
    for start in range(0, len(image_ids), CHUNK):
        chunk = [i for i in image_ids[start : start + CHUNK] if 0 < i <= MAX_INTEGER]
        rows = session.execute(
            select(VersionImage.image_id, VersionImage.label).where(
                VersionImage.version_id == version_id, VersionImage.image_id.in_(chunk)
            )
        )
        found.update((image_id, label) for image_id, label in rows)
    return found


# How a new version's manifest is written: (session, its id, the previous version's id or None).
Fill = Callable[[Session, int, "int | None"], None]


def new_version(
    session: Session, dataset: Dataset, *, source: str, message: str, fill: Fill
) -> DatasetVersion:
    """Write the next version of `dataset` (the caller holds its lock: `locked_dataset`) and
    make it the dataset's latest: its manifest by `fill`, its counts from the manifest."""
    latest = session.execute(
        select(DatasetVersion.id, DatasetVersion.number)
        .where(DatasetVersion.dataset_id == dataset.id)
        .order_by(DatasetVersion.number.desc())
        .limit(1)
    ).first()
    version = DatasetVersion(
        dataset_id=dataset.id,
        number=latest.number + 1 if latest else 1,
        source=source,
        message=message,
        num_images=0,
        classes=[],
    )
    session.add(version)
    session.flush()
    fill(session, version.id, latest.id if latest else None)
    rows = session.execute(
        select(VersionImage.label, func.count())
        .where(VersionImage.version_id == version.id)
        .group_by(VersionImage.label)
        .order_by(VersionImage.label)
    ).all()
    counts = label_counts(((label, count) for label, count in rows), dataset.multi_label)
    version.classes = [{"name": name, "count": count} for name, count in counts.items()]
    version.num_images = sum(count for _, count in rows)
    dataset.classes, dataset.num_images = version.classes, version.num_images
    session.flush()
    session.expire(dataset, ["version"])  # a column property: read again when next asked
    return version


def copy_manifest(session: Session, version_id: int, previous: int | None) -> None:
    if previous is not None:
        session.execute(
            insert(VersionImage).from_select(
                ["version_id", "image_id", "label"],
                select(literal(version_id), VersionImage.image_id, VersionImage.label).where(
                    VersionImage.version_id == previous
                ),
            )
        )


def add_stored(
    session: Session,
    version_id: int,
    dataset_id: str,
    after_image_id: int,
    restored: Sequence[tuple[int, str]] = (),
) -> None:
    """Add to the manifest the dataset's images stored after `after_image_id` (an upload's,
    labelled as uploaded) and `restored` (image id, label): images stored earlier, which the
    version before no longer held, or the pool held (they leave it, labelled)."""
    pooled = select(PoolImage.image_id).where(PoolImage.image_id == DatasetImage.id)
    session.execute(
        insert(VersionImage).from_select(
            ["version_id", "image_id", "label"],
            select(literal(version_id), DatasetImage.id, DatasetImage.uploaded_label).where(
                DatasetImage.dataset_id == dataset_id,
                DatasetImage.id > after_image_id,
                ~pooled.exists(),
            ),
        )
    )
    if restored:
        rows = [{"version_id": version_id, "image_id": i, "label": label} for i, label in restored]
        session.execute(insert(VersionImage), rows)
        leave_pool(session, [image_id for image_id, _ in restored])


def leave_pool(session: Session, image_ids: Sequence[int]) -> None:
    """Those of `image_ids` in a pool are labelled now: out of it."""
    for start in range(0, len(image_ids), CHUNK):
        session.execute(
            delete(PoolImage).where(PoolImage.image_id.in_(image_ids[start : start + CHUNK]))
        )


def last_image_id(session: Session, dataset_id: str) -> int:
    """The highest image id the dataset has stored (0 for none): images stored after it are
    an upload's new ones (ids only grow; the dataset's lock orders its writers)."""
    return session.scalar(
        select(func.coalesce(func.max(DatasetImage.id), 0)).where(
            DatasetImage.dataset_id == dataset_id
        )
    )


def apply_edit(
    session: Session, version_id: int, relabel: dict[int, str], remove: Sequence[int]
) -> None:
    """The new manifest's relabels and deletions, applied to its copy of the previous one."""
    for start in range(0, len(remove), CHUNK):
        session.execute(
            delete(VersionImage).where(
                VersionImage.version_id == version_id,
                VersionImage.image_id.in_(remove[start : start + CHUNK]),
            )
        )
    if relabel:
        session.execute(
            update(VersionImage),
            [
                {"version_id": version_id, "image_id": image_id, "label": label}
                for image_id, label in relabel.items()
            ],
        )


def version_id(session: Session, dataset_id: str, number: int | None) -> int:
    """The id of the dataset's version `number` (its latest when None), for loaders that read
    its manifest; Invalid when it has no such version."""
    query = select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id)
    if number is None:
        query = query.order_by(DatasetVersion.number.desc()).limit(1)
    else:
        query = query.where(DatasetVersion.number == number)
    found = session.scalar(query)
    if found is None:
        raise Invalid(f"dataset {dataset_id} has no version {number}", field=("dataset_version",))
    return found


@dataclass(frozen=True)
class Diff:
    """What changed from one version to another: each list (image id, filename, label or
    (from, to)) up to the caller's limit, and each list's full count."""

    added: list[tuple[int, str, str]]
    removed: list[tuple[int, str, str]]
    relabelled: list[tuple[int, str, str, str]]
    counts: dict[str, int]


def diff(session: Session, dataset: Dataset, a: int, b: int, *, limit: int) -> Diff:
    """The images `b` holds and `a` does not (added), the reverse (removed), and those both
    hold under different labels (relabelled): set operations the database runs."""
    first, second = get_version(session, dataset, a).id, get_version(session, dataset, b).id
    old, new = aliased(VersionImage), aliased(VersionImage)
    in_old = select(old.image_id).where(old.version_id == first, old.image_id == new.image_id)
    in_new = select(new.image_id).where(new.version_id == second, new.image_id == old.image_id)
    queries = {
        "added": select(new.image_id, DatasetImage.filename, new.label)
        .join(DatasetImage, DatasetImage.id == new.image_id)
        .where(new.version_id == second, ~in_old.exists()),
        "removed": select(old.image_id, DatasetImage.filename, old.label)
        .join(DatasetImage, DatasetImage.id == old.image_id)
        .where(old.version_id == first, ~in_new.exists()),
        "relabelled": select(new.image_id, DatasetImage.filename, old.label, new.label)
        .join(old, (old.image_id == new.image_id) & (old.version_id == first))
        .join(DatasetImage, DatasetImage.id == new.image_id)
        .where(new.version_id == second, old.label != new.label),
    }
    counts = {
        name: session.scalar(select(func.count()).select_from(query.subquery())) or 0
        for name, query in queries.items()
    }
    rows = {
        name: [
            tuple(row)
            for row in session.execute(query.order_by(query.selected_columns[0]).limit(limit))
        ]
        for name, query in queries.items()
    }
    return Diff(rows["added"], rows["removed"], rows["relabelled"], counts)  # type: ignore[arg-type]
