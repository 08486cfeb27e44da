"""What a search measures, on TensorFlow: the frozen backbone's features for each pooling
(cached per dataset, as training caches them), the learning-rate range test, a head trial on
those features, and a fine-tuning trial through training itself. The search around them
(which trial next, which to prune) is Optuna's, in service/searches/study.py.

A head trial is the cached stage of a training job standing alone: the same head layers, the
same compile, the same seeded epochs over the same split; its network's initial weights are
drawn apart from the backbone's, so its score is the spec's in distribution, not to the digit.
A fine-tuning trial is a training job's own `train`, so the best spec, trained again by
`POST /jobs`, scores what its trial scored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from service.ml.build import backbone_layer_names, build_network, feature_head
from service.ml.callbacks import ProgressCallback
from service.ml.data import LabelledImages, TrainingStopped
from service.ml.features import FeatureExtractor, FeatureStore, feature_key
from service.ml.pipeline import Splits, prepare_splits
from service.ml.train import (
    compile_for_stage,
    feature_epochs,
    make_optimizer,
    split_features,
    train,
)
from service.training.spec import JobSpec

# The range test: this many steps, the learning rate rising geometrically between these.
RANGE_STEPS = 100
RANGE_LOW, RANGE_HIGH = 1e-6, 1.0
# Smoothing of the range test's losses (fastai's), and where it stops: diverged.
RANGE_SMOOTHING = 0.9
RANGE_DIVERGED = 4.0

# report(epoch, score, val_loss) after each epoch (the score: val_accuracy, or a multi-label
# head's mean average precision); True stops the trial there.
Report = Callable[[int, float, float], bool]


@dataclass(frozen=True)
class RangeTest:
    """Leslie Smith's learning-rate range test on the head: the loss at each rate of a
    geometric ramp, and the pick, a tenth of the rate where the smoothed loss is lowest."""

    learning_rates: list[float]
    losses: list[float]
    picked: float
    seconds: float


@dataclass
class TrialRun:
    """How a trial went: its validation score after each epoch, its last loss, and
    whether `report` stopped it."""

    scores: list[float] = field(default_factory=list)
    val_loss: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0


class SearchLab:
    """The features of one dataset version's split under one frozen backbone, per pooling,
    and the trials run on them."""

    def __init__(
        self,
        spec: JobSpec,
        data: LabelledImages,
        poolings: list[str],
        *,
        backbone_weights: str | Path | None,
        store: FeatureStore | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.spec = spec
        self.data = data
        self.weights = backbone_weights
        self.store = store
        self.should_stop = should_stop
        self.splits: Splits = prepare_splits(spec, data)
        self.features = {pooling: self._features(pooling) for pooling in poolings}
        self.backbone_layers = len(backbone_layer_names(spec.backbone.name, spec.input_size))
        # The history's key of what trials are ranked by: val_accuracy; multi-label, the
        # labels' mean average precision.
        self.score = f"val_{self.splits.objective.score}"

    def _features(self, pooling: str) -> np.ndarray:
        """The frozen backbone's pooled features, training images then validation ones: from
        the store when a job or an advice stored them, else extracted (and stored)."""
        head = self.spec.head.model_copy(update={"pooling": pooling})
        spec = self.spec.model_copy(update={"head": head})
        keras.backend.clear_session()
        keras.utils.set_random_seed(spec.training.seed)  # random weights: training's backbone
        extractor = FeatureExtractor(build_network(spec, len(self.data.classes), self.weights))
        features, _ = split_features(
            extractor,
            self.splits,
            spec,
            store=self.store,
            key=feature_key(spec.backbone, pooling),
            ids=self.data.ids,
            should_stop=self.should_stop,
        )
        return features

    def range_test(self, spec: JobSpec, steps: int = RANGE_STEPS) -> RangeTest:
        """The range test on `spec`'s head (its pooling's features), the learning rate
        rising from RANGE_LOW to RANGE_HIGH over `steps` batches (epochs repeat as needed)."""
        clock = time.perf_counter()
        model = self._head(spec)
        optimizer = make_optimizer(spec.training.optimizer, RANGE_LOW)
        loss = self.splits.objective.loss(spec.training.label_smoothing)
        train_set, _ = feature_epochs(self.features[spec.head.pooling], self.splits, spec.training)
        batches = train_set.batches(0, math.ceil(steps / train_set.steps)).take(steps)

        @tf.function
        def step(x: tf.Tensor, y: tf.Tensor, *weights: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=True), *weights) + sum(model.losses)
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(value, variables), variables, strict=True))
            return value

        rates = np.geomspace(RANGE_LOW, RANGE_HIGH, steps)
        losses: list[float] = []
        for rate, batch in zip(rates, batches, strict=False):
            optimizer.learning_rate = float(rate)
            losses.append(float(step(*batch)))
            if not math.isfinite(losses[-1]) or losses[-1] > RANGE_DIVERGED * min(losses):
                break
        smoothed = _smoothed(losses)
        picked = float(rates[int(np.argmin(smoothed))] / 10)
        return RangeTest(
            [float(rate) for rate in rates[: len(losses)]],
            losses,
            picked,
            time.perf_counter() - clock,
        )

    def head_trial(self, spec: JobSpec, report: Report) -> TrialRun:
        """Train `spec`'s head on its pooling's features for `spec.training.epochs`, as a
        cached stage does; `report` after every epoch may stop it there."""
        clock = time.perf_counter()
        model = self._head(spec)
        compile_for_stage(model, spec.stages[0], spec.training, self.splits.objective)
        train_set, val_set = feature_epochs(
            self.features[spec.head.pooling], self.splits, spec.training
        )
        run = TrialRun()
        progress = ProgressCallback(
            _Reporter(run, report, self.should_stop, first_stage=1, score=self.score),
            stages=1,
            epochs=spec.training.epochs,
            steps=train_set.steps,
        )
        model.fit(
            train_set.batches(0, spec.training.epochs),
            steps_per_epoch=train_set.steps,
            validation_data=val_set,
            epochs=spec.training.epochs,
            callbacks=[progress],
            shuffle=False,
            verbose=0,
        )
        if progress.stopped and not run.stopped_early:
            raise TrainingStopped()
        run.seconds = time.perf_counter() - clock
        return run

    def fine_tune_trial(self, spec: JobSpec, report: Report) -> TrialRun:
        """Train `spec` as a training job would (its first stage on the cached features);
        `report` after every fine-tuning epoch may stop it there. Its last score is the
        trained model's (without fine-tuning, its only one), measured as a job measures it;
        not the calibration and unknown-input score a stored model also needs."""
        clock = time.perf_counter()
        run = TrialRun()
        reporter = _Reporter(run, report, self.should_stop, first_stage=2, score=self.score)
        keras.backend.clear_session()
        try:
            result = train(
                spec,
                self.data,
                reporter,
                backbone_weights=self.weights,
                feature_store=self.store,
                trial=True,
            )
        except TrainingStopped:
            if not run.stopped_early:
                raise
        else:
            final = float(result.metrics[self.score])
            run.val_loss = float(result.metrics.get("val_loss", math.nan))
            if spec.fine_tune:
                run.scores[-1] = final  # the same epoch, after the BN statistics' recompute
            else:
                run.scores.append(final)  # nothing fine-tuned: no epoch for the pruner
        run.seconds = time.perf_counter() - clock
        return run

    def _head(self, spec: JobSpec) -> keras.Model:
        # Without the full garbage collection clear_session runs by default: a third of a
        # head trial's seconds with a backbone's objects alive, and a trial's head is a few
        # Dense layers, freed with it (Keras's own advice for models built in a short loop).
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(spec.training.seed)
        width = self.features[spec.head.pooling].shape[1]
        return feature_head(spec.head, width, len(self.data.classes), self.data.multi_label)


class _Reporter:
    """A trainer's observer for a trial: records the validation scores of the epochs of
    `first_stage` on, hands each to `report`, and stops when it or the job says so."""

    def __init__(
        self,
        run: TrialRun,
        report: Report,
        should_stop: Callable[[], bool],
        first_stage: int,
        score: str,
    ) -> None:
        self.run = run
        self.score = score
        self.report = report
        self.job_stops = should_stop
        self.first_stage = first_stage
        self.epochs = 0

    def on_progress(self, progress: dict[str, int]) -> None:
        pass

    def on_epoch(self, row: dict[str, float]) -> None:
        if row.get("stage", 1) < self.first_stage or self.score not in row:
            return
        self.epochs += 1
        self.run.scores.append(float(row[self.score]))
        self.run.val_loss = float(row["val_loss"])
        if self.report(self.epochs, self.run.scores[-1], self.run.val_loss):
            self.run.stopped_early = True

    def should_stop(self) -> bool:
        return self.run.stopped_early or self.job_stops()


def _smoothed(losses: list[float]) -> np.ndarray:
    """An exponential moving average of the losses, bias-corrected (fastai's range test)."""
    average, out = 0.0, []
    for number, value in enumerate(losses, start=1):
        average = RANGE_SMOOTHING * average + (1 - RANGE_SMOOTHING) * value
        out.append(average / (1 - RANGE_SMOOTHING**number))
    return np.nan_to_num(np.array(out), nan=np.inf)
