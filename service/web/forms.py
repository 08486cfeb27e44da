"""The new-job form as a job spec, and the few figures the form shows beside its choices.

Pure functions: the form's fields in, the JSON body POST /jobs takes out. Validation is the
spec's own (JobSpec), so the console refuses exactly what the API refuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.datasets.label_files import split_labels
from service.problems import Invalid
from service.storage.tables import MAX_INTEGER

FormFields = Mapping[str, Sequence[str]]

# Backbone layer names carry their block: block_3_expand, block2a_se, conv4_block1_out …
BLOCK = re.compile(r"^(.*?block_?\d+[a-z]?|[a-z]+_?conv\d*|stem|conv\d+|top)", re.IGNORECASE)


def _one(fields: FormFields, name: str, default: str = "") -> str:
    values = fields.get(name) or [default]
    return values[0].strip()


def _number(text: str) -> int | float | str:
    """A number when it reads as one; otherwise the text, so the spec names the field."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _freeze(mode: str, trainable_from: str, batchnorm: str = "") -> dict[str, Any]:
    freeze: dict[str, Any] = {"mode": mode}
    if mode == "partial":
        start = _number(trainable_from) if trainable_from.lstrip("-").isdigit() else trainable_from
        freeze["trainable_from"] = start
    if batchnorm:
        freeze["batchnorm"] = batchnorm
    return freeze


def _training(fields: FormFields) -> dict[str, Any]:
    training: dict[str, Any] = {
        key: _number(_one(fields, key))
        for key in ("epochs", "batch_size", "learning_rate", "validation_split", "seed")
        if _one(fields, key)
    }
    if _one(fields, "optimizer"):
        training["optimizer"] = _one(fields, "optimizer")
    augment = {
        key: _number(_one(fields, f"augment_{key}"))
        for key in ("rotation", "zoom", "contrast")
        if _one(fields, f"augment_{key}") not in ("", "0")
    }
    if _one(fields, "augment_flip"):
        augment["flip"] = _one(fields, "augment_flip")
    if augment:
        training["augment"] = augment
    if _one(fields, "early_stopping"):
        training["early_stopping"] = {
            "monitor": _one(fields, "early_stopping_monitor", "val_loss"),
            "patience": _number(_one(fields, "early_stopping_patience", "3")),
        }
    if _one(fields, "class_weight"):
        training["class_weight"] = _one(fields, "class_weight")
    if _one(fields, "label_smoothing") not in ("", "0"):
        training["label_smoothing"] = _number(_one(fields, "label_smoothing"))
    return training


def _stages(fields: FormFields) -> list[dict[str, Any]]:
    """The fine-tuning stages: one per `stage_mode` field, in order."""
    columns = ("stage_mode", "stage_trainable_from", "stage_epochs", "stage_learning_rate")
    rows = zip(*(list(fields.get(name, [])) for name in columns), strict=False)
    stages = []
    for mode, trainable_from, epochs, learning_rate in rows:
        stage: dict[str, Any] = {"freeze": _freeze(mode.strip(), trainable_from.strip())}
        if epochs.strip():
            stage["epochs"] = _number(epochs.strip())
        if learning_rate.strip():
            stage["learning_rate"] = _number(learning_rate.strip())
        stages.append(stage)
    return stages


def _widths(text: str) -> list[int | float | str]:
    return [_number(width) for width in re.split(r"[,\s]+", text) if width]


def spec_from_form(fields: FormFields) -> dict[str, Any]:
    """The body of POST /jobs (and /jobs/preview) that the form's fields describe."""
    weights = _one(fields, "weights", "imagenet")
    body: dict[str, Any] = {
        "dataset_id": _one(fields, "dataset_id"),
        "backbone": {
            "name": _one(fields, "backbone", "MobileNetV2"),
            "weights": None if weights == "none" else weights,
        },
        "head": {
            "pooling": _one(fields, "pooling", "avg"),
            "dense": _widths(_one(fields, "dense")),
            "dropout": _number(_one(fields, "dropout", "0.2")),
        },
        "freeze": _freeze(
            _one(fields, "freeze_mode", "backbone"),
            _one(fields, "trainable_from"),
            _one(fields, "batchnorm"),
        ),
        "training": _training(fields),
        "fine_tune": _stages(fields),
    }
    if _one(fields, "input_size"):
        body["backbone"]["input_size"] = _number(_one(fields, "input_size"))
    if _one(fields, "name"):
        body["name"] = _one(fields, "name")
    if _one(fields, "dataset_version"):  # none: the latest when submitted, recorded
        body["dataset_version"] = _number(_one(fields, "dataset_version"))
    return body


def block_of(layer_name: str) -> str:
    """The block a backbone layer belongs to, for grouping the layer table."""
    match = BLOCK.match(layer_name)
    return match.group(1) if match else layer_name


def head_costs(feature_shape: Sequence[int | None], units: int) -> dict[str, int]:
    """Weights of the first Dense layer after each pooling choice: Flatten keeps every
    position (h·w·c·units), global pooling keeps one value per channel (c·units)."""
    height, width, channels = (int(dim or 0) for dim in feature_shape[-3:])
    pooled = channels * units + units
    return {"avg": pooled, "max": pooled, "flatten": height * width * channels * units + units}


def advice_from_form(fields: FormFields) -> dict[str, Any]:
    """The body of POST /datasets/{id}/advice that the dataset page's advice form describes."""
    weights = _one(fields, "weights", "imagenet")
    backbone: dict[str, Any] = {
        "name": _one(fields, "backbone", "MobileNetV2"),
        "weights": None if weights == "none" else weights,
    }
    if _one(fields, "input_size"):
        backbone["input_size"] = _number(_one(fields, "input_size"))
    body: dict[str, Any] = {"backbone": backbone}
    if _one(fields, "max_images"):
        body["max_images"] = _number(_one(fields, "max_images"))
    return body


# The search form's optional fields, as SearchCreate names them: empty leaves its default.
SEARCH_NUMBERS = (
    "head_epochs",
    "fine_tune_epochs",
    "finalists",
    "batch_size",
    "validation_split",
    "seed",
)


def search_from_form(dataset_id: str, fields: FormFields) -> dict[str, Any]:
    """The body of POST /searches that the dataset page's search form describes: the
    backbone as the advice form gives it, the budget as `budget_kind` ("trials" or
    "seconds") and the number `budget`, and the advanced fields typed in (empty: defaults).
    What is not a number is passed on as typed, so SearchCreate names the field."""
    body: dict[str, Any] = {
        "dataset_id": dataset_id,
        "backbone": advice_from_form(fields)["backbone"],
        "budget": {_one(fields, "budget_kind", "trials"): _number(_one(fields, "budget"))},
        "train_best": bool(_one(fields, "train_best")),
    }
    body.update(
        {name: _number(_one(fields, name)) for name in SEARCH_NUMBERS if _one(fields, name)}
    )
    if _one(fields, "freeze_depths"):
        body["space"] = {"freeze_depths": _widths(_one(fields, "freeze_depths"))}
    if _one(fields, "name"):
        body["name"] = _one(fields, "name")
    return body


def edit_from_form(fields: FormFields) -> dict[str, Any]:
    """The body of POST /datasets/{id}/edits that the image grid's selection describes: the
    images (`image`, repeated) relabelled to the label typed (`new_label`) or chosen
    (`label`), given label sets (`labels`, one per image, joined by ";": a multi-label
    dataset's), or deleted, as `action` says; against `base_version`, the version shown."""
    images = [_number(value.strip()) for value in fields.get("image", []) if value.strip()]
    body: dict[str, Any] = {"message": _one(fields, "message")}
    if _one(fields, "base_version"):
        body["base_version"] = _number(_one(fields, "base_version"))
    action = _one(fields, "action")
    if action == "delete":
        body["delete"] = images
    elif action == "relabel":
        label = _one(fields, "new_label") or _one(fields, "label")
        body["relabel"] = [{"image_id": image, "label": label} for image in images]
    elif action == "labels":
        sets = fields.get("labels", [])
        if len(sets) != len(images):
            raise Invalid("each image selected needs its labels", field=("labels",))
        body["relabel"] = [
            {"image_id": image, "labels": split_labels(joined)}
            for image, joined in zip(images, sets, strict=True)
        ]
    return body


@dataclass(frozen=True)
class SplitQuery:
    """What a health report is asked about: the split of a seed, and an input size."""

    seed: int = 0
    validation_split: float = 0.2
    input_size: int | None = None


def split_query(seed: str, validation_split: str, input_size: str = "") -> SplitQuery:
    """The report's query from a form's text fields, within the spec's bounds; Invalid naming
    the field that is not. Empty fields take the defaults (no input size: no size check)."""
    defaults = SplitQuery()
    return SplitQuery(
        seed=_bounded(
            "seed", seed, int, defaults.seed, lambda v: 0 <= v <= MAX_INTEGER, "a whole number ≥ 0"
        ),
        validation_split=_bounded(
            "validation_split",
            validation_split,
            float,
            defaults.validation_split,
            lambda v: 0 <= v < 1,
            "a number from 0 up to 1 (not 1 itself)",
        ),
        input_size=_bounded(
            "input_size", input_size, int, None, lambda v: 1 <= v <= 2048, "1 to 2048 pixels"
        ),
    )


def _bounded(
    name: str, text: str, kind: type, default: Any, fits: Callable[[Any], bool], what: str
) -> Any:
    text = text.strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not fits(value):  # NaN fits no bound
        raise Invalid(f"must be {what}, got {text!r}", field=(name,), part="query")
    return value
