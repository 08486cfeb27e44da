"""What ML is given and tells: the labelled images, the observer and its stop signal, and what
an export converts and checks.

TensorFlow-free, so the worker's tasks and the types they pass around import without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.ml.calibrate import Temperature
from service.storage.shard_files import ShardedImages
from service.training.spec import JobSpec


class TrainingObserver(Protocol):
    """What the trainer tells the outside world, and how it learns it should stop."""

    def on_progress(self, progress: dict[str, int]) -> None: ...

    def on_epoch(self, row: dict[str, float]) -> None: ...

    def should_stop(self) -> bool: ...


class TrainingStopped(Exception):
    """The observer asked training to stop (cancelled, or the job's lease was lost)."""


# A dataset's encoded images: in memory, or read one by one from the local shard cache.
Images = Sequence[bytes] | ShardedImages


@dataclass
class LabelledImages:
    images: Images
    # int32 class indices [n]; for a multi-label dataset a 0/1 float32 matrix [n, classes],
    # row i the labels image i holds (none, one or several).
    labels: np.ndarray
    classes: list[str]
    # The stored dataset's row of each image, when they came from one: the worker names the
    # validation images by these, and features are cached under them.
    ids: list[int] | None = None
    filenames: list[str] | None = None

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2


@dataclass(frozen=True)
class ExportInputs:
    """Everything an export job converts and checks, read from the database at once."""

    model_id: str
    format: str
    spec: JobSpec  # the training job's: the network to rebuild
    classes: list[str]
    input_size: int
    temperature: Temperature  # what the SavedModel's `serve` applies
    savedmodel: bytes
    validation: list[bytes]  # the validation split's images, as the evaluation lists them
    # Their true classes, indices into `classes`; a multi-label model's, 0/1 rows.
    labels: list[int] | list[list[int]]
    representative: list[bytes]  # a stratified sample of the training split (int8 only)
    thresholds: list[float] | None = None  # a multi-label model's, per label
