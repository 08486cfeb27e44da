"""A search's request and stored spec (POST /searches): the dataset, the backbone, the
budget and the space. Checkable without TensorFlow; the backbone's layer count, which the
default freeze depths come from, is the worker's to read."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from service.storage.tables import ID_LENGTH, MAX_INTEGER, NAME_LENGTH
from service.training.spec import BackboneSpec, Optimizer, Resources, StrictModel

# What one search may ask for at most: a head trial is cheap, not free.
MAX_TRIALS = 1000
MAX_SECONDS = 7 * 24 * 3600
MAX_CHOICES = 8
MAX_WIDTH = 4096


class Budget(StrictModel):
    """How much the search may spend: a number of head configurations, or wall seconds."""

    trials: int | None = Field(
        None,
        ge=1,
        le=MAX_TRIALS,
        description="Head configurations to try on the cached features; then the best "
        "`finalists` are fine-tuned at every freeze depth, with successive halving.",
    )
    seconds: float | None = Field(
        None,
        ge=1,
        le=MAX_SECONDS,
        description="Wall seconds for the whole search: head configurations for the first "
        "half, fine-tuning the finalists for the rest.",
    )

    @model_validator(mode="after")
    def _one(self) -> Budget:
        if (self.trials is None) == (self.seconds is None):
            raise ValueError('give the budget as {"trials": n} or as {"seconds": s}, one of them')
        return self


# A range of a parameter, [low, high]: a two-item array (clients' generated code handles one
# inline model per use badly, and [low, high] reads as it means).
Range = Annotated[list[float], Field(min_length=2, max_length=2)]
RANGE_LIMITS = {
    "learning_rate": (0, 10),
    "dropout": (0, 1),
    "l2": (0, 1),
    "label_smoothing": (0, 1),
}


class SearchSpace(StrictModel):
    """What the search varies. Each default suits any backbone; freeze depths default to
    the backbone's own layer count: none, the top tenth, the top third."""

    learning_rate: Range = Field(
        default_factory=lambda: [1e-5, 1.0],
        description="[low, high] of the head's learning rate (log scale); the trials sample "
        "within 10× either side of the range test's pick, inside these.",
    )
    dropout: Range = Field(default_factory=lambda: [0.0, 0.5], description="[low, high]")
    l2: Range = Field(
        default_factory=lambda: [1e-6, 1e-2],
        description="[low, high] of the head's L2 penalty (log scale).",
    )
    label_smoothing: Range = Field(default_factory=lambda: [0.0, 0.2], description="[low, high]")
    pooling: list[Literal["avg", "max"]] = Field(
        default_factory=lambda: ["avg", "max"], min_length=1, max_length=2
    )
    dense: list[list[int]] = Field(
        default_factory=lambda: [[], [128]],
        min_length=1,
        max_length=MAX_CHOICES,
        description="Candidate hidden Dense widths of the head, e.g. [[], [128], [256, 64]].",
    )
    freeze_depths: list[int] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHOICES,
        description="Candidate numbers of the backbone's last layers to fine-tune (0: none, "
        "the backbone stays frozen). Default: 0, a tenth and a third of its layers.",
    )

    @field_validator("dense")
    @classmethod
    def _widths(cls, choices: list[list[int]]) -> list[list[int]]:
        for widths in choices:
            if len(widths) > 4 or any(not 1 <= width <= MAX_WIDTH for width in widths):
                raise ValueError(f"each dense choice: up to 4 widths of 1–{MAX_WIDTH}")
        return choices

    @field_validator("freeze_depths")
    @classmethod
    def _depths(cls, depths: list[int] | None) -> list[int] | None:
        if depths is not None and any(not 0 <= depth <= 10_000 for depth in depths):
            raise ValueError("each freeze depth is a number of layers, 0 to 10000")
        return sorted(set(depths)) if depths is not None else None

    @model_validator(mode="after")
    def _bounds(self) -> SearchSpace:
        limits = {
            "learning_rate": (0, 10),
            "dropout": (0, 1),
            "l2": (0, 1),
            "label_smoothing": (0, 1),
        }
        for name, (least, most) in limits.items():
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low ({low}) must not be above high ({high})")
            if low < least or high > most or (name == "learning_rate" and low == 0):
                raise ValueError(f"{name} must lie within [{least}, {most}] ({low}, {high})")
            if name in ("dropout", "label_smoothing") and high >= 1:
                raise ValueError(f"{name} must stay below 1 ({high})")
        return self


class SearchCreate(StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "d_0123456789abcdef",
                    "backbone": {"name": "MobileNetV2", "weights": "imagenet", "input_size": 160},
                    "budget": {"seconds": 600},
                    "train_best": True,
                }
            ]
        },
    )

    dataset_id: str = Field(max_length=ID_LENGTH)
    dataset_version: int | None = Field(
        None, ge=1, le=MAX_INTEGER, description="The version searched on (default: the latest)."
    )
    backbone: BackboneSpec
    budget: Budget
    space: SearchSpace = Field(default_factory=SearchSpace)
    head_epochs: int = Field(10, ge=1, le=200, description="Epochs of each head trial.")
    fine_tune_epochs: int = Field(
        4, ge=1, le=100, description="Fine-tuning epochs of a finalist that is never pruned."
    )
    finalists: int = Field(
        3, ge=1, le=MAX_CHOICES, description="Head configurations taken on to fine-tuning."
    )
    optimizer: Optimizer = "adam"
    batch_size: int = Field(32, ge=1, le=4096)
    validation_split: float = Field(
        0.2, gt=0.0, lt=1.0, description="Held out to score every trial on (stratified, seeded)."
    )
    seed: int = Field(0, ge=0, le=MAX_INTEGER)
    train_best: bool = Field(False, description="Queue the best spec's training job at the end.")
    name: str | None = Field(
        None, max_length=NAME_LENGTH, description="The trained model's name (train_best)."
    )
    resources: Resources = Field(default_factory=Resources)


class SearchSpec(SearchCreate):
    """The stored job spec: the request, its dataset version resolved, and its record."""

    search_id: str = Field(max_length=ID_LENGTH)
