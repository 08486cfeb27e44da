"""What a fit reports and remembers: progress and stop requests to the observer, early
stopping that a resumed job carries on, and a checkpoint after every epoch and stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.ml import checkpoint
from service.ml.data import TrainingObserver


class ProgressCallback(keras.callbacks.Callback):
    """Reports steps and epochs (numbered across stages), and stops when the observer says."""

    def __init__(self, observer: TrainingObserver, *, stages: int, epochs: int, steps: int):
        super().__init__()
        self.observer = observer
        self.stages = stages
        self.epochs = epochs
        self.steps = steps
        self.stage = 1
        self.epoch = 0
        self.started = 0.0
        self.stopped = False
        self.history: list[dict[str, float]] = []
        # Called with each epoch's row recorded, before it is announced: a checkpoint then
        # holds every epoch the job's history shows.
        self.on_recorded: Callable[[], None] | None = None

    def _report(self, step: int) -> None:
        self.observer.on_progress(
            {
                "stage": self.stage,
                "stages": self.stages,
                "epoch": self.epoch,
                "epochs": self.epochs,
                "step": step,
                "steps": self.steps,
            }
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch + 1
        self.started = time.perf_counter()
        self._report(0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._report(batch + 1)
        if self.observer.should_stop():
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.stopped:
            return
        row = {
            "epoch": epoch + 1,
            "stage": self.stage,
            **{key: float(value) for key, value in (logs or {}).items()},
            "seconds": round(time.perf_counter() - self.started, 3),
        }
        self.history.append(row)
        if self.on_recorded is not None:
            self.on_recorded()
        self.observer.on_epoch(row)
        if self.observer.should_stop():  # told at the epoch's end: no batch of the next
            self.stopped = True
            self.model.stop_training = True


def restore(variables: Sequence[Any], arrays: Sequence[np.ndarray]) -> None:
    """Give each variable its value from a checkpoint, in the same order."""
    if len(variables) != len(arrays):
        raise ValueError(
            f"the checkpoint holds {len(arrays)} arrays for {len(variables)} variables"
        )
    for variable, value in zip(variables, arrays, strict=True):
        variable.assign(value)


class Checkpoints:
    """Writes a checkpoint after every epoch and every stage (service/ml/checkpoint.py), and
    holds the one training resumed from, if any."""

    def __init__(self, directory: Path | None, mark: str, model: keras.Model | None) -> None:
        self.directory = directory
        self.mark = mark
        self.model = model
        self.resumed = checkpoint.load(directory, mark) if directory is not None else None
        state = self.resumed.state if self.resumed is not None else None
        self.cached_stages: list[int] = list(state.cached_stages) if state else []
        self.recomputed = state.recomputed if state else 0

    @classmethod
    def none(cls) -> Checkpoints:
        """Bookkeeping alone, for training without checkpoints."""
        return cls(None, "", None)

    def write(
        self,
        stage: int,
        history: list[dict[str, float]],
        *,
        done: bool,
        fitting: keras.Model | None = None,
        early: EarlyStopping | None = None,
    ) -> None:
        assert self.directory is not None and self.model is not None
        state = checkpoint.TrainingState(
            fingerprint=self.mark,
            stage=stage,
            stage_done=done,
            epochs_done=len(history),
            history=list(history),
            cached_stages=list(self.cached_stages),
            recomputed=self.recomputed,
            early_stopping=early.state() if early is not None and not done else None,
        )
        optimizer = fitting.optimizer.variables if fitting is not None and not done else []
        best = early.best_weights if early is not None and not done else None
        checkpoint.save(
            self.directory,
            checkpoint.Checkpoint(
                state,
                variables=[np.asarray(variable) for variable in self.model.variables],
                optimizer=[np.asarray(variable) for variable in optimizer],
                best=list(best or []),
            ),
        )


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's early stopping, whose counters a checkpoint keeps and gives back on resume."""

    def __init__(self, resumed: tuple[dict[str, Any], list[np.ndarray]] | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        if self.resumed is not None:
            state, best = self.resumed
            self.wait, self.best_epoch = state["wait"], state["best_epoch"]
            self.best = state["best"]
            self.best_weights = best or None

    def state(self) -> dict[str, Any]:
        best = None if self.best is None else float(self.best)
        return {
            "wait": self.wait,
            "best": best,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped_epoch > 0,
        }
