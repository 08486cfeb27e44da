"""Response models of the datasets routes: datasets, their images, and the health report."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.schemas import example_config


class ClassCount(BaseModel):
    name: str
    count: int


class SkippedFile(BaseModel):
    path: str
    reason: str


class DatasetRead(BaseModel):
    model_config = example_config(
        {
            "id": "d_0123456789abcdef",
            "name": "pets",
            "num_images": 80,
            "classes": [{"name": "cats", "count": 40}, {"name": "dogs", "count": 40}],
            "skipped": [{"path": "cats/bad.jpg", "reason": "not a decodable image"}],
            "created_at": "2026-11-28T12:00:00Z",
            "version": 3,
            "multi_label": False,
        }
    )
    id: str
    name: str
    num_images: int = Field(description="Images in its latest version.")
    classes: list[ClassCount] = Field(
        description="Its latest version's classes; multi-label, its labels, each with the "
        "images that hold it (an image counts under each of its labels)."
    )
    skipped: list[SkippedFile]
    created_at: datetime
    version: int = Field(
        description="Its latest version's number: every upload, append, import and edit "
        "makes the next (GET /datasets/{dataset_id}/versions)."
    )
    multi_label: bool = Field(
        default=False,
        description="Several labels per image: uploaded with a labels.csv or labels.jsonl at "
        "the zip's top instead of class folders.",
    )


class DatasetImagesAdded(BaseModel):
    """What POST /datasets/{dataset_id}/images answers."""

    model_config = example_config(
        {
            "dataset": DatasetRead.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            "added": [{"name": "cats", "count": 12}, {"name": "birds", "count": 30}],
            "skipped": [
                {"path": "cats/001.jpg", "reason": "already in the dataset (the same bytes)"}
            ],
        }
    )
    dataset: DatasetRead = Field(description="The dataset with the images added.")
    added: list[ClassCount] = Field(description="Images added, per class.")
    skipped: list[SkippedFile] = Field(
        description="Files of this zip not added, and why: not an image, outside a class "
        "folder, or already in the dataset (so a part can safely be sent again)."
    )


class PoolImagesAdded(BaseModel):
    """What POST /datasets/{dataset_id}/pool answers."""

    model_config = example_config(
        {
            "dataset_id": "d_0123456789abcdef",
            "added": 118,
            "pool": 240,
            "skipped": [
                {"path": "IMG_0412.jpg", "reason": "already in the dataset (the same bytes)"}
            ],
        }
    )
    dataset_id: str
    added: int = Field(description="Images added to the pool.")
    pool: int = Field(description="Images in the pool now, waiting for a label.")
    skipped: list[SkippedFile] = Field(
        description="Files of this zip not added, and why: not an image, or already in the dataset."
    )


class DatasetImageRead(BaseModel):
    model_config = example_config(
        {"id": 1041, "label": "cats", "filename": "cats/001.jpg", "size_bytes": 48213}
    )
    id: int = Field(description="The image's number; with the dataset's id it names the image.")
    label: str = Field(
        description="Its class in the version listed: the folder it came from, unless an edit "
        "relabelled it."
    )
    filename: str = Field(description="Its path in the uploaded zip.")
    size_bytes: int


class DatasetVersionRead(BaseModel):
    """One immutable version of a dataset; jobs train on exactly its images and labels."""

    model_config = example_config(
        {
            "number": 2,
            "created_at": "2026-11-28T12:30:00Z",
            "source": "edit",
            "message": "a cat filed under dogs",
            "num_images": 79,
            "classes": [{"name": "cats", "count": 41}, {"name": "dogs", "count": 38}],
        }
    )
    number: int = Field(description="1, 2, 3… per dataset, in the order they were made.")
    created_at: datetime
    source: Literal["upload", "append", "import", "edit", "migration"] = Field(
        description="What made it (`migration`: the dataset as it was before versions)."
    )
    message: str
    num_images: int
    classes: list[ClassCount]


class DiffImage(BaseModel):
    id: int
    filename: str = Field(description="Its path in the uploaded zip.")
    label: str


class RelabelledImage(BaseModel):
    id: int
    filename: str
    from_label: str = Field(description="Its label in the first version.")
    to_label: str = Field(description="Its label in the second.")


class VersionDiff(BaseModel):
    """What changed from version `from_version` to `to_version`; each list at most `limit`
    entries (by image id), its full length in `counts`."""

    model_config = example_config(
        {
            "from_version": 1,
            "to_version": 2,
            "added": [],
            "removed": [{"id": 1187, "filename": "dogs/017.jpg", "label": "dogs"}],
            "relabelled": [
                {"id": 1041, "filename": "dogs/003.jpg", "from_label": "dogs", "to_label": "cats"}
            ],
            "counts": {"added": 0, "removed": 1, "relabelled": 1},
        }
    )
    from_version: int
    to_version: int
    added: list[DiffImage]
    removed: list[DiffImage]
    relabelled: list[RelabelledImage]
    counts: dict[str, int]


# -- the dataset health report (GET /datasets/{id}/report; built by datasets/report.py) ------


class ReportImage(BaseModel):
    """One image a finding names: `GET /datasets/{dataset_id}/images/{id}` shows it."""

    id: int
    filename: str = Field(description="Its path in the uploaded zip.")
    label: str


class ImageShape(ReportImage):
    width: int
    height: int
    mode: str = Field(description='Pillow\'s mode as stored: "RGB", "L", "CMYK", "P"…')


class ImageFinding(BaseModel):
    count: int = Field(description="How many images the finding holds (all listed).")
    images: list[ImageShape]


class SmallImages(ImageFinding):
    input_size: int | None = Field(
        description="The size asked about; null when none was (then the list is empty)."
    )


class Balance(BaseModel):
    ratio: float = Field(description="Largest class count ÷ smallest, rounded to 2 decimals.")
    largest: ClassCount
    smallest: ClassCount
    imbalanced: bool = Field(description="`ratio` is past `thresholds.max_balance_ratio`.")
    note: str | None = Field(description="What to do about it; null when balanced.")


class SmallClasses(BaseModel):
    floor: int = Field(description="`thresholds.min_class_images`.")
    classes: list[ClassCount] = Field(description="The classes below the floor, with counts.")


class DuplicateGroup(BaseModel):
    kind: Literal["exact", "near"] = Field(
        description='"exact": byte-identical files (same SHA-256); "near": the same picture '
        "re-encoded, resized or lightly edited (perceptual hashes within "
        "`thresholds.near_duplicate_bits`), at least two different files."
    )
    scope: Literal["within_class", "across_classes"] = Field(
        description='"across_classes": one picture under two or more labels.'
    )
    distance: int = Field(
        description="The largest Hamming distance between two of its perceptual hashes (of 64)."
    )
    images: list[ReportImage]


class Duplicates(BaseModel):
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup] = Field(
        description="Never a group of exact copies alone: those are under `exact`."
    )


class LeakedPair(BaseModel):
    kind: Literal["exact", "near"]
    scope: Literal["within_class", "across_classes"]
    distance: int = Field(description="Hamming distance of the two perceptual hashes (of 64).")
    training: ReportImage = Field(description="The copy in the training split.")
    validation: ReportImage = Field(description="The copy in the validation split.")


class Leakage(BaseModel):
    seed: int
    validation_split: float
    training_images: int
    validation_images: int
    count: int = Field(description="Validation images with a copy in training.")
    pairs: list[LeakedPair] = Field(
        description="One per such validation image: its closest copy in training."
    )


class LabelIssue(BaseModel):
    image_id: int
    filename: str
    label: str = Field(description="Its label as uploaded.")
    suggested: str = Field(description="The class the probe predicts for it.")
    confidence: float = Field(description="The probe's probability of `suggested`.")


class LabelReview(BaseModel):
    """Likely mislabelled images, as the worker stored them (`Dataset.label_review`)."""

    method: str
    features: str = Field(description="The frozen backbone whose features the probe read.")
    job_id: str = Field(description="The job that made the review.")
    created_at: datetime
    images_checked: int
    probe_accuracy: float = Field(description="The probe's out-of-fold accuracy.")
    issues: list[LabelIssue]


class Mislabelled(BaseModel):
    review: LabelReview | None = Field(description="null until a job has made one.")
    note: str = Field(description="What the review says, or how to get one.")


class ReportThresholds(BaseModel):
    min_class_images: int
    near_duplicate_bits: int
    max_aspect_ratio: float
    max_balance_ratio: float


def _report_example() -> dict[str, Any]:
    cat = {"id": 1041, "filename": "cats/001.jpg", "label": "cats"}
    dog = {"id": 1093, "filename": "dogs/017.jpg", "label": "dogs"}
    small = {"id": 1102, "filename": "dogs/030.png", "label": "dogs"}
    shape = {**small, "width": 64, "height": 48, "mode": "L"}
    cats, dogs = {"name": "cats", "count": 60}, {"name": "dogs", "count": 20}
    copy = {"kind": "exact", "scope": "across_classes", "distance": 0}
    return {
        "dataset_id": "d_0123456789abcdef",
        "version": 1,
        "images": 80,
        "classes": [cats, dogs],
        "measured": 0,
        "thresholds": {
            "min_class_images": 20,
            "near_duplicate_bits": 6,
            "max_aspect_ratio": 2.5,
            "max_balance_ratio": 2.0,
        },
        "balance": {
            "ratio": 3.0,
            "largest": cats,
            "smallest": dogs,
            "imbalanced": True,
            "note": 'training.class_weight: "balanced" weighs each class by its inverse count.',
        },
        "small_classes": {"floor": 20, "classes": []},
        "duplicates": {
            "exact": [{**copy, "images": [cat, dog]}],
            "near": [],
        },
        "leakage": {
            "seed": 0,
            "validation_split": 0.2,
            "training_images": 64,
            "validation_images": 16,
            "count": 1,
            "pairs": [{**copy, "training": cat, "validation": dog}],
        },
        "small_images": {"input_size": 96, "count": 1, "images": [shape]},
        "extreme_aspect": {"count": 0, "images": []},
        "grayscale": {"count": 1, "images": [shape]},
        "cmyk": {"count": 0, "images": []},
        "mislabelled": {
            "review": None,
            "note": "No label review yet: run POST /datasets/{id}/advice, or train a job whose "
            "first stage freezes the whole backbone.",
        },
        "warnings": [
            "Classes are imbalanced 3:1 (cats 60, dogs 20) …",
            "1 image appears in both training and validation at seed 0 …",
        ],
    }


class LabelPair(BaseModel):
    labels: list[str] = Field(description="Two labels, in name order.")
    images: int = Field(description="Images holding both.")


class LabelSets(BaseModel):
    """A multi-label dataset's label sets."""

    no_label_images: int = Field(description="Images holding none of the labels.")
    pairs: int = Field(description="How many pairs of labels some image holds together.")
    cooccurrence: list[LabelPair] = Field(
        description="The pairs of labels one image holds together, most often first: the "
        "100 most frequent of them."
    )


class DatasetReport(BaseModel):
    model_config = example_config(_report_example())
    dataset_id: str
    version: int = Field(description="The version reported on.")
    images: int
    classes: list[ClassCount]
    measured: int = Field(
        description="Images whose facts this report measured and stored (uploaded before the "
        "service kept them); 0 once every image has them."
    )
    thresholds: ReportThresholds
    balance: Balance
    small_classes: SmallClasses
    duplicates: Duplicates
    leakage: Leakage
    small_images: SmallImages = Field(description="Shorter side below `input_size`: upscaled.")
    extreme_aspect: ImageFinding = Field(
        description="Long side ÷ short side past `thresholds.max_aspect_ratio`: the model "
        "squashes every image to a square."
    )
    grayscale: ImageFinding = Field(description="Stored in a grayscale mode (1, L, LA, I, F…).")
    cmyk: ImageFinding = Field(description="Stored as CMYK: colours shift when made RGB.")
    mislabelled: Mislabelled
    warnings: list[str] = Field(description="One plain sentence per problem found.")
    labels: LabelSets | None = Field(
        None,
        description="A multi-label dataset's images with no label and its labels' "
        "co-occurrence; null for a single-label dataset. `classes` are then its labels, each "
        "counting the images that hold it.",
    )
