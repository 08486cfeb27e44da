"""Editing a dataset: relabel and delete images of its latest version, as one new version.

An edit is checked whole before anything is written (every id in the latest version, none
named twice, at least two classes left), so it applies all of it or nothing. Image bytes are
never touched: an older version still holds what an edit removes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row
from sqlalchemy.orm import Session

from service.datasets import versions
from service.datasets.service import list_images, locked_dataset
from service.datasets.spec import DatasetEdit, Relabel
from service.problems import Conflict, Invalid, NotFound
from service.storage.tables import DatasetVersion


def edit_dataset(session: Session, dataset_id: str, edit: DatasetEdit) -> DatasetVersion:
    """The dataset's new version, with `edit` applied to its latest."""
    dataset = locked_dataset(session, dataset_id)
    latest = versions.get_version(session, dataset, None)
    if edit.base_version is not None and edit.base_version != latest.number:
        raise Conflict(
            f"the edit was made against version {edit.base_version} of dataset {dataset.id}, "
            f"and its latest is now {latest.number}; look again and resend",
            field=("base_version",),
        )
    relabel, remove = _checked(session, latest, edit)

    def fill(session: Session, version_id: int, previous: int | None) -> None:
        versions.copy_manifest(session, version_id, previous)
        versions.apply_edit(session, version_id, relabel, remove)

    message = edit.message or _summary(len(relabel), len(remove))
    return versions.new_version(session, dataset, source="edit", message=message, fill=fill)


def _checked(
    session: Session, latest: DatasetVersion, edit: DatasetEdit
) -> tuple[dict[int, str], list[int]]:
    """The relabels (id → label) and the deletions; Invalid naming the first entry that is not
    an image of the latest version, or names an image a second time."""
    if not edit.relabel and not edit.delete:
        raise Invalid("an edit relabels or deletes at least one image", field=("relabel",))
    fields: dict[int, tuple[str | int, ...]] = {}
    named = [("relabel", n, entry.image_id) for n, entry in enumerate(edit.relabel)]
    named += [("delete", n, image_id) for n, image_id in enumerate(edit.delete)]
    for part, number, image_id in named:
        field = (part, number, "image_id") if part == "relabel" else (part, number)
        if image_id in fields:
            raise Invalid(f"image {image_id} is named twice in one edit", field=field)
        fields[image_id] = field
    held = versions.manifest_labels(session, latest.id, list(fields))
    for image_id, field in fields.items():
        if image_id not in held:
            raise Invalid(
                f"image {image_id} is not in version {latest.number} of dataset "
                f"{latest.dataset_id}",
                field=field,
            )
    relabel = {entry.image_id: entry.label for entry in edit.relabel}
    _require_two_classes(latest, held, relabel, edit.delete)
    return relabel, list(edit.delete)


def _require_two_classes(
    latest: DatasetVersion, held: dict[int, str], relabel: dict[int, str], remove: list[int]
) -> None:
    counts = {entry["name"]: entry["count"] for entry in latest.classes}
    for image_id in [*relabel, *remove]:
        counts[held[image_id]] -= 1
    for label in relabel.values():
        counts[label] = counts.get(label, 0) + 1
    left = sorted(label for label, count in counts.items() if count > 0)
    if len(left) < 2:
        raise Invalid(
            f"the edit would leave {len(left)} class with images ({', '.join(left) or 'none'}); "
            "a dataset needs at least 2",
            field=("delete",) if remove else ("relabel",),
        )


def _summary(relabelled: int, removed: int) -> str:
    parts = [f"{relabelled} relabelled"] if relabelled else []
    parts += [f"{removed} removed"] if removed else []
    return ", ".join(parts)


def relabel_image(session: Session, dataset_id: str, image_id: int, label: str) -> Row[Any]:
    """PATCH one image: an edit of one relabel; the image as the new version lists it."""
    _require_image(session, dataset_id, image_id)
    edit = DatasetEdit(relabel=[Relabel(image_id=image_id, label=label)])
    version = edit_dataset(session, dataset_id, edit)
    rows, _ = list_images(
        session, dataset_id, version=version.number, label=label, limit=1, after=image_id - 1
    )
    return rows[0]


def delete_image(session: Session, dataset_id: str, image_id: int) -> DatasetVersion:
    """DELETE one image: an edit of one deletion."""
    _require_image(session, dataset_id, image_id)
    return edit_dataset(session, dataset_id, DatasetEdit(delete=[image_id]))


def _require_image(session: Session, dataset_id: str, image_id: int) -> None:
    dataset = locked_dataset(session, dataset_id)
    latest = versions.get_version(session, dataset, None)
    if not versions.manifest_labels(session, latest.id, [image_id]):
        raise NotFound(
            f"image {image_id} is not in version {latest.number} of dataset {dataset.id}"
        )
