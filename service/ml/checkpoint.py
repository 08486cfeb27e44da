"""Checkpoints of a training job, so that a job whose worker died resumes where it stopped.

Written at the end of every epoch and of every stage, into one folder per job (a shared data
directory, when workers run on several hosts): the variables of the whole network (weights,
BatchNormalization statistics, and the dropout and augmentation layers' random-generator
states, so that the epochs after a resume draw what they would have drawn), the stage's
optimizer state, early stopping's state, the epochs done and their history. Each checkpoint
replaces the last in one rename: a reader sees a whole checkpoint or the one before, never
half of one. Keras's BackupAndRestore covers one `fit` call; a job is several (one per stage,
each compiled afresh, some on cached features), so the service writes its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STATE = "state.json"
ARRAYS = ("variables", "optimizer", "best")


@dataclass
class TrainingState:
    """Where training stood when the checkpoint was written."""

    fingerprint: str  # of the spec and the images: a checkpoint of anything else is ignored
    stage: int  # the stage being fitted (1-based)
    stage_done: bool  # its epochs fitted and its BN statistics recomputed
    epochs_done: int  # epochs fitted, all stages together
    history: list[dict[str, float]]
    cached_stages: list[int] = field(default_factory=list)
    recomputed: int = 0  # BN layers whose statistics were recomputed so far
    # EarlyStopping's counters ({"wait", "best", "best_epoch"}) within the stage, or None.
    early_stopping: dict[str, Any] | None = None

    def finished(self, stage: int) -> bool:
        """Whether `stage` was fitted whole before the checkpoint was written."""
        return stage < self.stage or (stage == self.stage and self.stage_done)


@dataclass
class Checkpoint:
    state: TrainingState
    variables: list[np.ndarray]  # the network's, in `model.variables` order
    optimizer: list[np.ndarray]  # the stage optimizer's, in `optimizer.variables` order
    best: list[np.ndarray]  # early stopping's best weights, in `model.get_weights()` order


def fingerprint(spec_json: str, image_ids: list[int] | None, count: int) -> str:
    """What a checkpoint must match to be resumed from: the job's spec and its images."""
    digest = hashlib.sha256(spec_json.encode())
    digest.update(json.dumps(image_ids if image_ids is not None else count).encode())
    return digest.hexdigest()


def save(directory: Path, checkpoint: Checkpoint) -> None:
    """Replace the folder's checkpoint with this one, atomically."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = directory.with_name(f"{directory.name}.{os.getpid()}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name in ARRAYS:
        arrays = getattr(checkpoint, name)
        np.savez(scratch / f"{name}.npz", *arrays)
    (scratch / STATE).write_text(json.dumps(asdict(checkpoint.state)))
    old = directory.with_name(f"{directory.name}.{os.getpid()}.old")
    if directory.exists():
        directory.rename(old)  # a rename cannot replace a non-empty folder: two steps
    scratch.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read_state(directory: Path, expected: str | None = None) -> TrainingState | None:
    """The checkpoint's state, or None when there is none (or it is of another spec)."""
    try:
        state = TrainingState(**json.loads((directory / STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if expected is not None and state.fingerprint != expected:
        return None
    return state


def load(directory: Path, expected: str) -> Checkpoint | None:
    """The whole checkpoint, or None when there is no usable one."""
    state = read_state(directory, expected)
    if state is None:
        return None
    arrays = {}
    try:
        for name in ARRAYS:
            with np.load(directory / f"{name}.npz") as stored:
                arrays[name] = [stored[f"arr_{n}"] for n in range(len(stored.files))]
    except (OSError, ValueError):
        return None
    return Checkpoint(state, **arrays)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
