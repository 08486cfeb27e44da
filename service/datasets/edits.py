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
from service.datasets.label_files import split_labels
from service.datasets.labelling import add_labelled, checked_labels, chosen_label
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
    relabel, remove = _checked(session, latest, edit, dataset.multi_label)
    labelling = checked_labels(session, dataset.id, edit.label, dataset.multi_label)
    if dataset.multi_label:
        _require_a_label(latest, relabel, remove, labelling.labels)
    else:
        _require_two_classes(latest, relabel, remove, labelling.labels)

    def fill(session: Session, version_id: int, previous: int | None) -> None:
        versions.copy_manifest(session, version_id, previous)
        new_labels = {image_id: label for image_id, (_, label) in relabel.items()}
        versions.apply_edit(session, version_id, new_labels, list(remove))
        add_labelled(session, dataset.id, version_id, labelling)

    message = edit.message or _summary(len(relabel), len(remove), len(labelling.labels))
    return versions.new_version(session, dataset, source="edit", message=message, fill=fill)


def _checked(
    session: Session, latest: DatasetVersion, edit: DatasetEdit, multi_label: bool
) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """The relabels (id → (label, new label)) and the deletions (id → label); Invalid naming
    the first entry that relabels or deletes an image not in the latest version, or names an
    image a second time."""
    if not edit.relabel and not edit.delete and not edit.label:
        raise Invalid("an edit relabels, deletes or labels at least one image", field=("relabel",))
    fields: dict[int, tuple[str | int, ...]] = {}
    named = [("relabel", n, entry.image_id) for n, entry in enumerate(edit.relabel)]
    named += [("delete", n, image_id) for n, image_id in enumerate(edit.delete)]
    named += [("label", n, entry.image_id) for n, entry in enumerate(edit.label) if entry.image_id]
    for part, number, image_id in named:
        field = (part, number) if part == "delete" else (part, number, "image_id")
        if image_id in fields:
            raise Invalid(f"image {image_id} is named twice in one edit", field=field)
        fields[image_id] = field
    _require_distinct_captures(edit)
    held = versions.manifest_labels(session, latest.id, list(fields))
    for image_id, field in fields.items():
        if image_id not in held and field[0] != "label":
            raise Invalid(
                f"image {image_id} is not in version {latest.number} of dataset "
                f"{latest.dataset_id}",
                field=field,
            )
    relabel = {
        entry.image_id: (
            held[entry.image_id],
            chosen_label(entry, ("relabel", number), multi_label),
        )
        for number, entry in enumerate(edit.relabel)
    }
    return relabel, {image_id: held[image_id] for image_id in edit.delete}


def _require_distinct_captures(edit: DatasetEdit) -> None:
    seen: set[str] = set()
    for number, entry in enumerate(edit.label):
        if entry.capture_id in seen:
            raise Invalid(
                f"capture {entry.capture_id} is named twice in one edit",
                field=("label", number, "capture_id"),
            )
        if entry.capture_id:
            seen.add(entry.capture_id)


def _require_a_label(
    latest: DatasetVersion,
    relabel: dict[int, tuple[str, str]],
    remove: dict[int, str],
    labelled: list[str],
) -> None:
    """A multi-label dataset keeps at least one label held by an image."""
    counts = {entry["name"]: entry["count"] for entry in latest.classes}
    for joined in [*(old for old, _ in relabel.values()), *remove.values()]:
        for name in split_labels(joined):
            counts[name] -= 1
    for joined in [*(new for _, new in relabel.values()), *labelled]:
        for name in split_labels(joined):
            counts[name] = counts.get(name, 0) + 1
    if not any(count > 0 for count in counts.values()):
        raise Invalid("the edit would leave no image with a label", field=("delete",))


def _require_two_classes(
    latest: DatasetVersion,
    relabel: dict[int, tuple[str, str]],
    remove: dict[int, str],
    labelled: list[str],
) -> None:
    counts = {entry["name"]: entry["count"] for entry in latest.classes}
    for old in [*(old for old, _ in relabel.values()), *remove.values()]:
        counts[old] -= 1
    for label in [*(new for _, new in relabel.values()), *labelled]:
        counts[label] = counts.get(label, 0) + 1
    left = sorted(label for label, count in counts.items() if count > 0)
    if len(left) < 2:
        raise Invalid(
            f"the edit would leave {len(left)} class with images ({', '.join(left) or 'none'}); "
            "a dataset needs at least 2",
            field=("delete",) if remove else ("relabel",),
        )


def _summary(relabelled: int, removed: int, labelled: int) -> str:
    parts = [f"{relabelled} relabelled"] if relabelled else []
    parts += [f"{removed} removed"] if removed else []
    parts += [f"{labelled} labelled"] if labelled else []
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
