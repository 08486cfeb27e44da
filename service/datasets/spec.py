"""What clients send about datasets: a server-side import (POST /datasets/import) and the
import job's spec; edits (POST /datasets/{id}/edits, PATCH an image)."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from service.storage.tables import ID_LENGTH, MAX_INTEGER, NAME_LENGTH
from service.training.spec import WEBHOOK_DESCRIPTION, StrictModel, WebhookUrl


class ImportRequest(StrictModel):
    """A directory of class folders on the service's host to make a dataset of."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"path": "flowers/2026-11", "name": "flowers"}]},
    )

    path: str = Field(
        min_length=1,
        max_length=4000,
        description="The directory, relative to IMPORT_ROOT (or absolute inside it).",
    )
    name: str | None = Field(
        None, max_length=NAME_LENGTH, description="The new dataset's name; default: the folder's."
    )
    dataset_id: str | None = Field(
        None,
        max_length=ID_LENGTH,
        description="Add the images to this dataset instead of creating one (duplicates "
        "skipped, as with POST /datasets/{dataset_id}/images).",
    )
    webhook_url: WebhookUrl | None = Field(None, description=WEBHOOK_DESCRIPTION)


class ImportSpec(ImportRequest):
    """An import job's stored spec: the request, the directory resolved inside the root."""

    directory: str = Field(description="The resolved absolute directory the worker reads.")


# A class label as a class folder's name could be: no slash, no control character, not blank.
LABEL_PATTERN = r"^[^/\x00-\x1f]*[^/\x00-\x1f\s][^/\x00-\x1f]*$"
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=NAME_LENGTH, pattern=LABEL_PATTERN)
]
ImageId = Annotated[int, Field(ge=1, le=MAX_INTEGER)]
# Entries one edit may hold: a 20,000-image dataset relabelled whole fits; a body naming more
# costs the service no more than this to refuse.
MAX_EDIT_ENTRIES = 50_000


class ImageLabel(StrictModel):
    """PATCH /datasets/{id}/images/{image_id}: the image's new label (a new one makes a class)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"label": "cats"}]})

    label: Label


# Labels one image of a multi-label dataset may hold.
MAX_IMAGE_LABELS = 100


class LabelChoice(StrictModel):
    """An image's new labels: `label` (a single-label dataset's class), or `labels`, a
    multi-label dataset's whole set."""

    label: Label | None = Field(
        None, description="Its label; a label no image had makes a new class."
    )
    labels: list[Label] | None = Field(
        None,
        max_length=MAX_IMAGE_LABELS,
        description="A multi-label dataset's image: its labels, all of them (`[]`: none). "
        "Instead of `label`, which there means the one label.",
    )

    @model_validator(mode="after")
    def one_way(self) -> LabelChoice:
        if (self.label is None) == (self.labels is None):
            raise ValueError("give `label` or `labels`, one of them")
        return self


class Relabel(LabelChoice):
    image_id: ImageId


# Captured images one edit may label: each is read, checked and stored like an upload's.
MAX_LABELLED_CAPTURES = 1000


class ImageRef(StrictModel):
    """An image not in the dataset's versions: one of its unlabelled pool (`image_id`) or a
    captured prediction (`capture_id`, GET /models/{id}/captures)."""

    image_id: ImageId | None = Field(None, description="An image of the dataset's pool.")
    capture_id: str | None = Field(
        None, min_length=1, max_length=ID_LENGTH, description="A captured prediction."
    )

    @model_validator(mode="after")
    def _one_image(self) -> ImageRef:
        if (self.image_id is None) == (self.capture_id is None):
            raise ValueError("name the image by image_id or by capture_id, one of them")
        return self

    @property
    def key(self) -> str:
        """How a review mark names it: "image:<id>" or "capture:<id>"."""
        if self.image_id is not None:
            return f"image:{self.image_id}"
        return f"capture:{self.capture_id}"

    @classmethod
    def from_key(cls, key: str) -> ImageRef | None:
        """The image `key` names (as `key` writes it); None when it names none."""
        kind, _, value = key.partition(":")
        if kind == "capture" and value:
            return cls(capture_id=value)
        if kind == "image" and value.isdigit():
            return cls(image_id=int(value))
        return None


class LabelImage(ImageRef, LabelChoice):
    """An image to label into the new version."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"capture_id": "c_1f…", "label": "cats"}]}
    )


class DatasetEdit(StrictModel):
    """Relabel and delete images of a dataset's latest version, and label images new to it
    (from its pool, or captured), as one new version: all of it or nothing."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "relabel": [{"image_id": 1041, "label": "cats"}],
                    "delete": [1187, 1188],
                    "message": "a cat filed under dogs; two duplicates",
                }
            ]
        },
    )

    relabel: list[Relabel] = Field(default_factory=list, max_length=MAX_EDIT_ENTRIES)
    delete: list[ImageId] = Field(
        default_factory=list,
        max_length=MAX_EDIT_ENTRIES,
        description="Image ids to leave out of the new version (their bytes stay for the "
        "versions that hold them).",
    )
    label: list[LabelImage] = Field(
        default_factory=list,
        max_length=MAX_EDIT_ENTRIES,
        description="Images new to the dataset's versions to add, labelled: from its pool or "
        f"captured predictions (at most {MAX_LABELLED_CAPTURES} captures an edit).",
    )
    message: str = Field("", max_length=2000, description="What the edit does, for the history.")
    base_version: int | None = Field(
        None,
        ge=1,
        le=MAX_INTEGER,
        description="The version the edit was made against: 409 when the dataset has moved "
        "on since (default: apply to the latest, whatever it is).",
    )
