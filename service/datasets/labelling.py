"""An edit's `label` entries: images new to the dataset's versions, labelled by a person.

An image of the dataset's pool joins the new version's manifest and leaves the pool; a
captured prediction's image is stored as the dataset's (checked as an upload's image is, its
capture remembered in `LabelledCapture` so it is never added twice). Checked whole before
anything is written, as the rest of an edit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from service.datasets import versions
from service.datasets.ingest import Planned, check_image
from service.datasets.label_files import BadLabelFile, label_set
from service.datasets.pool import in_pool
from service.datasets.service import HASH_CHUNK, image_row
from service.datasets.spec import MAX_LABELLED_CAPTURES, LabelChoice, LabelImage
from service.problems import Invalid
from service.storage.tables import (
    Capture,
    DatasetImage,
    LabelledCapture,
    ReviewMark,
    VersionImage,
)

Field = tuple[str | int, ...]


@dataclass(frozen=True)
class Labelling:
    """What `label` entries add: pool image ids and capture ids, each with its label (a
    multi-label image's: its set, as manifests keep it)."""

    pool: dict[int, str]
    captures: dict[str, str]

    @property
    def labels(self) -> list[str]:
        return [*self.pool.values(), *self.captures.values()]


def chosen_label(choice: LabelChoice, field: Field, multi_label: bool) -> str:
    """The manifest label an entry gives: its `label`; a multi-label image's set, joined as
    manifests keep it (`label` there meaning a set of one). Invalid naming `field`'s
    `labels` when the entry does not fit the dataset."""
    if not multi_label:
        if choice.labels is not None:
            raise Invalid(
                "this dataset is single-label: give the image its `label`",
                field=(*field, "labels"),
            )
        assert choice.label is not None
        return choice.label
    try:
        return label_set(choice.labels if choice.labels is not None else [choice.label], "")
    except BadLabelFile as error:
        raise Invalid(str(error).removeprefix(": "), field=(*field, "labels")) from None


def checked_labels(
    session: Session, dataset_id: str, entries: list[LabelImage], multi_label: bool
) -> Labelling:
    """The entries as a Labelling; Invalid naming the first that is neither in the dataset's
    pool nor a capture it can take, or whose labels do not fit the dataset."""
    given = [chosen_label(e, ("label", n), multi_label) for n, e in enumerate(entries)]
    pool_entries = {e.image_id: n for n, e in enumerate(entries) if e.image_id is not None}
    capture_entries = {e.capture_id: n for n, e in enumerate(entries) if e.capture_id}
    if len(capture_entries) > MAX_LABELLED_CAPTURES:
        raise Invalid(
            f"an edit labels at most {MAX_LABELLED_CAPTURES} captured images, not "
            f"{len(capture_entries)}; send the rest in another edit",
            field=("label",),
        )
    pooled = in_pool(session, dataset_id, list(pool_entries))
    for image_id, number in pool_entries.items():
        if image_id not in pooled:
            raise Invalid(
                f"image {image_id} is not in the unlabelled pool of dataset {dataset_id} "
                "(to change an image a version holds, relabel it)",
                field=("label", number, "image_id"),
            )
    _check_captures(session, dataset_id, capture_entries)
    return Labelling(
        pool={e.image_id: g for e, g in zip(entries, given, strict=True) if e.image_id},
        captures={e.capture_id: g for e, g in zip(entries, given, strict=True) if e.capture_id},
    )


def _check_captures(session: Session, dataset_id: str, numbers: dict[str, int]) -> None:
    ids = list(numbers)
    found: set[str] = set()
    for start in range(0, len(ids), HASH_CHUNK):
        chunk = ids[start : start + HASH_CHUNK]
        found.update(session.scalars(select(Capture.id).where(Capture.id.in_(chunk))))
    done = dict(
        session.execute(
            select(LabelledCapture.capture_id, LabelledCapture.image_id).where(
                LabelledCapture.dataset_id == dataset_id, LabelledCapture.capture_id.in_(ids)
            )
        ).all()
    )
    for capture_id, number in numbers.items():
        field = ("label", number, "capture_id")
        if capture_id in done:
            raise Invalid(
                f"capture {capture_id} is already image {done[capture_id]} of dataset {dataset_id}",
                field=field,
            )
        if capture_id not in found:
            raise Invalid(f"no capture {capture_id!r} (captures expire)", field=field)


def add_labelled(session: Session, dataset_id: str, version_id: int, labelling: Labelling) -> None:
    """The new manifest's labelled images: the pool's, and the captures' (stored first)."""
    rows = [
        {"version_id": version_id, "image_id": image_id, "label": label}
        for image_id, label in labelling.pool.items()
    ]
    for capture_id, image_id, label in _store_captures(session, dataset_id, labelling.captures):
        rows.append({"version_id": version_id, "image_id": image_id, "label": label})
        session.execute(
            insert(LabelledCapture).values(
                dataset_id=dataset_id, capture_id=capture_id, image_id=image_id
            )
        )
    for start in range(0, len(rows), versions.CHUNK):
        session.execute(insert(VersionImage), rows[start : start + versions.CHUNK])
    versions.leave_pool(session, list(labelling.pool))
    # Labelled, an image marked unknown on a review page is no longer any queue's business.
    keys = [f"image:{i}" for i in labelling.pool] + [f"capture:{c}" for c in labelling.captures]
    for start in range(0, len(keys), versions.CHUNK):
        session.execute(
            delete(ReviewMark).where(ReviewMark.item.in_(keys[start : start + versions.CHUNK]))
        )


def _store_captures(
    session: Session, dataset_id: str, captures: dict[str, str]
) -> Iterator[tuple[str, int, str]]:
    """Store each capture's image as the dataset's, one at a time: (capture id, image id,
    label), with an upload's facts. /predict bounded the bytes when it captured them."""
    for capture_id, label in captures.items():
        row = session.execute(
            select(Capture.filename, Capture.image).where(Capture.id == capture_id)
        ).one()
        facts, reason = check_image(row.image, len(row.image))
        if facts is None:
            raise Invalid(f"capture {capture_id}: {reason}", field=("label",))
        image = Planned(capture_id, capture_id, label, row.filename, facts)
        image_id = session.scalar(
            insert(DatasetImage)
            .values(image_row(dataset_id, image, row.image))
            .returning(DatasetImage.id)
        )
        yield capture_id, image_id, label
