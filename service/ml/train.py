"""Training: the tf.data pipeline, staged fitting with its observer, feature caching for
frozen backbones, and the final metrics on the validation split (pipeline.py builds the
inputs, evaluate.py scores them, batchnorm.py fixes the BN statistics).

The images come one of two ways (`LabelledImages.images`), and the model is the same:

- **in memory**, a list of encoded images: they become one string tensor, decoded once and
  kept decoded (under DECODED_CACHE_BYTES); each epoch shuffles the decoded examples.
- **streamed**, a `ShardedImages` over the worker's local shard cache (a dataset larger than
  TRAIN_IN_MEMORY_BYTES; service/storage/shard_cache.py): the examples start as positions in the
  split, each read from disk and decoded with the same `to_pixels` when the pipeline needs
  it. Decoded pixels are kept in memory under the same DECODED_CACHE_BYTES bound (then the
  pipeline is the in-memory one but for where the bytes come from); above it each epoch
  shuffles the positions, not pixels, before reading and decoding, so the shuffle buffer
  holds integers. A shuffle's order depends on its seed and the number of elements alone,
  not on what they are: either way epoch e sees the same images in the same order as the
  in-memory path, and a job resumed from a checkpoint still ends as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from service.ml import checkpoint
from service.ml.batchnorm import recompute_batchnorm_statistics
from service.ml.build import Network, apply_freeze, build_network
from service.ml.calibrate import Temperature
from service.ml.callbacks import Checkpoints, EarlyStopping, ProgressCallback, restore
from service.ml.data import LabelledImages, TrainingObserver, TrainingStopped
from service.ml.drift import Snapshot, snapshot
from service.ml.features import FeatureExtractor, FeatureStore, cached_or_extracted, feature_key
from service.ml.heads import HeadWeights, warm_head
from service.ml.losses import SINGLE_LABEL, Objective
from service.ml.pipeline import Epochs, Splits, prepare_splits
from service.ml.unknowns import UnknownDetector
from service.ml.validation import final_metrics
from service.training.spec import JobSpec, Stage, TrainingSpec

# Backbone features are cached for frozen stages up to this size, else the stage runs whole.
FEATURE_CACHE_BYTES = 2 * 1024**3


@dataclass
class TrainingResult:
    network: Network
    history: list[dict[str, float]]
    metrics: dict[str, float]
    evaluation: dict[str, Any] | None
    batchnorm_layers_recomputed: int = 0
    cached_stages: list[int] = field(default_factory=list)
    split: dict[str, int] = field(default_factory=dict)
    # Wall seconds per phase: build, features (the cached backbone pass), fit, evaluate.
    seconds: dict[str, float] = field(default_factory=dict)
    # Positions in the data of the validation images, ascending, and the final model's
    # probabilities for them (row k: image validation_index[k]); None without a validation split.
    validation_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    validation_probabilities: np.ndarray | None = None
    # The temperature the exported model applies (1.0: none; a sigmoid head's, one per label),
    # the threshold per label a sigmoid head answers at (None for a softmax), and the evaluation's
    # `calibration` block: {"fitted": True, "temperature", "ece_before", …} or
    # {"fitted": False, "reason"}.
    temperature: Temperature = 1.0
    thresholds: list[float] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    # The backbone's weights as built from its source, before training: what drift.with_drift
    # compares the trained ones to. None when it started from random weights.
    initial_weights: Snapshot | None = None
    # The frozen backbone's pooled features of every image, when a stage trained on them
    # before the backbone changed: (positions in the data, features, row k: image k), and
    # whether they came from the feature store rather than the backbone.
    features: tuple[np.ndarray, np.ndarray] | None = None
    features_reused: bool = False
    replicas: int = 1  # devices the model trained on at once (MirroredStrategy)
    # The unknown-input score fitted on the final model's features (service/ml/unknowns.py).
    unknowns: UnknownDetector | None = None
    # With an initial head (a retrain's warm start): the classes whose column it gave.
    head_classes_carried: int | None = None


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    return {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
    }[name](learning_rate=learning_rate)


def compile_for_stage(
    model: keras.Model, stage: Stage, training: TrainingSpec, objective: Objective = SINGLE_LABEL
) -> None:
    """A fresh optimizer per stage, as the Keras guide recompiles after changing `trainable`."""
    model.compile(
        optimizer=make_optimizer(stage.optimizer, stage.learning_rate),
        loss=objective.loss(training.label_smoothing),
        metrics=objective.metrics(),
    )
    # Built here, not by the first training step: Keras (TensorFlow, no explicit strategy)
    # leaves it to that step's trace, and a tf.function that creates variables when first
    # traced is traced again, so each stage would build its training graph twice.
    model.optimizer.build(model.trainable_variables)


def train(
    spec: JobSpec,
    data: LabelledImages,
    observer: TrainingObserver,
    *,
    backbone_weights: str | Path | None,
    feature_cache: bool = True,
    feature_store: FeatureStore | None = None,
    checkpoint_dir: Path | None = None,
    devices: Sequence[str] | None = None,
    initial_head: HeadWeights | None = None,
    trial: bool = False,
) -> TrainingResult:
    """Train as the Keras transfer-learning guide does, everything fixed by the job's seed.

    1. Split the images, class by class, into training and validation.
    2. Build the network: backbone, augmentation, head.
    3. For each stage: freeze what it freezes, take its inputs (the backbone's cached
       features while it is frozen and nothing augments, else the pixels), compile with a
       fresh optimizer and fit; then recompute the statistics of the BN layers that trained.
       Features of the untouched pretrained backbone come from `feature_store` when an
       earlier job or advice stored them, and are stored there otherwise.
    4. Evaluate the final model on the validation split (`service.ml.validation`): loss,
       accuracy, the temperature fitted on it, the per-class report; for multi-label images
       (`data.labels` a 0/1 matrix: a sigmoid per label, binary cross-entropy) a temperature
       and a threshold per label and the per-label report.

    With two or more `devices` (default: the visible GPUs) it trains on all of them at once
    (MirroredStrategy); with `training.mixed_precision`, in 16 bits.

    With `checkpoint_dir`, a checkpoint is written there after every epoch and stage, and a
    checkpoint found there at the start (of this spec and these images) is resumed from:
    the stages it finished are skipped, the one it was in goes on from its last epoch with
    its optimizer and early stopping as they were. Each epoch's order depends on the seed
    and the epoch alone, so a resumed job ends where an uninterrupted one would.

    With `initial_head` (a retrain's warm start) the head starts from those weights: each
    class's column where the class is kept (`service.ml.heads.warm_head`).

    `trial` (a search's fine-tuning trial): step 4 measures the metrics alone.

    Raises TrainingStopped if the observer stopped it.
    """
    keras.utils.set_random_seed(spec.training.seed)
    strategy = distribution(devices)
    with strategy.scope():
        result = _train_in_scope(
            spec,
            data,
            observer,
            backbone_weights,
            feature_cache,
            feature_store,
            checkpoint_dir,
            initial_head,
            trial,
        )
    result.replicas = strategy.num_replicas_in_sync
    return result


def distribution(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over `devices`, or else over the visible GPUs when there are two or
    more; otherwise the default strategy: one device, the path of every single-GPU or CPU
    worker. Under MirroredStrategy each batch (the global batch, `batch_size`) is split across
    the replicas and their gradients summed, so the learning rate means what it means on one."""
    if devices is None:
        devices = [device.name for device in tf.config.list_logical_devices("GPU")]
    if len(devices) < 2:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy(list(devices))


def precision_policy(training: TrainingSpec) -> str:
    """The Keras dtype policy the network is built with: mixed float16 where a GPU computes
    it (its tensor cores), bfloat16 on a CPU (same range as float32: no loss scaling)."""
    if not training.mixed_precision:
        return "float32"
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def _train_in_scope(
    spec: JobSpec,
    data: LabelledImages,
    observer: TrainingObserver,
    backbone_weights: str | Path | None,
    feature_cache: bool,
    feature_store: FeatureStore | None,
    checkpoint_dir: Path | None,
    initial_head: HeadWeights | None,
    trial: bool,
) -> TrainingResult:
    splits = prepare_splits(spec, data)
    seconds = dict.fromkeys(("build", "features", "fit", "evaluate"), 0.0)
    clock = time.perf_counter()
    # Layers take the global policy when built: set for this network only, then put back.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(spec.training))
    try:
        network = build_network(spec, len(data.classes), backbone_weights, data.multi_label)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    initial_weights = snapshot(network.backbone) if spec.backbone.pretrained else None
    carried = warm_head(network, initial_head, data.classes) if initial_head else None
    seconds["build"] = time.perf_counter() - clock
    frozen = _FrozenFeatures(spec, splits, observer, feature_store, data.ids, seconds)
    saver = None
    if checkpoint_dir is not None:
        mark = checkpoint.fingerprint(spec.model_dump_json(), data.ids, len(data.labels))
        saver = Checkpoints(checkpoint_dir, mark, network.model)
    progress = _progress(spec, splits, observer)
    history, cached_stages, recomputed = _fit_stages(
        spec, network, splits, progress, frozen, feature_cache, saver
    )
    clock = time.perf_counter()
    metrics, evaluation, calibration, unknowns = final_metrics(
        network.model, splits, history, spec, data.classes, trial=trial
    )
    seconds["evaluate"] = time.perf_counter() - clock
    return TrainingResult(
        network=network,
        history=history,
        metrics=metrics,
        evaluation=evaluation,
        batchnorm_layers_recomputed=recomputed,
        cached_stages=cached_stages,
        split=splits.sizes(),
        seconds=seconds,
        validation_index=splits.validation.index,
        validation_probabilities=calibration.probabilities,
        temperature=calibration.temperature,
        thresholds=calibration.thresholds,
        calibration=calibration.report,
        initial_weights=initial_weights,
        features=frozen.features,
        features_reused=frozen.reused,
        unknowns=unknowns,
        head_classes_carried=carried,
    )


def _progress(spec: JobSpec, splits: Splits, observer: TrainingObserver) -> ProgressCallback:
    return ProgressCallback(
        observer,
        stages=len(spec.stages),
        epochs=sum(stage.epochs for stage in spec.stages),
        steps=math.ceil(len(splits.train) / spec.training.batch_size),
    )


def _fit_stages(
    spec: JobSpec,
    network: Network,
    splits: Splits,
    progress: ProgressCallback,
    frozen: _FrozenFeatures,
    feature_cache: bool,
    saver: Checkpoints | None,
) -> tuple[list[dict[str, float]], list[int], int]:
    """Fit the stages in turn, after those a checkpoint says were done. Returns the history
    (epochs numbered across stages), the stages fitted on cached features, and how many BN
    layers had their statistics recomputed.
    """
    # Augmentation must see the pixels every epoch, so then nothing is cached.
    cacheable = feature_cache and not spec.training.augmenting
    resumed = saver.resumed if saver is not None else None
    book = saver or Checkpoints.none()
    if resumed is not None:
        progress.history = list(resumed.state.history)
    for stage in spec.stages:
        apply_freeze(network.backbone, stage.freeze)
        if stage.freeze.mode != "backbone":
            frozen.drop()  # the backbone trains: its features go stale
        if resumed is not None and resumed.state.finished(stage.number):
            continue
        if resumed is not None:
            restore(network.model.variables, resumed.variables)
        inputs = (
            frozen.stage_inputs(network) if cacheable and stage.freeze.mode == "backbone" else None
        )
        if inputs is None:
            inputs = _StageInputs(network.model, splits.train_epochs, splits.validation_pixels)
        elif stage.number not in book.cached_stages:
            book.cached_stages.append(stage.number)
        _fit_stage(
            inputs, stage, spec.training, splits.objective, progress, frozen.seconds, saver, resumed
        )
        resumed = None
        # BN layers that trained this stage: their moving statistics lag far behind.
        book.recomputed += recompute_batchnorm_statistics(network.model, splits.statistics_pixels)
        if saver is not None:
            saver.write(stage.number, progress.history, done=True)
    return progress.history, book.cached_stages, book.recomputed


@dataclass
class _StageInputs:
    model: keras.Model
    train: Epochs
    validation: tf.data.Dataset | None
    cached: bool = False


class _FrozenFeatures:
    """The frozen backbone's features of the job's images, extracted (or loaded from the
    store) at the first frozen stage and kept while the backbone stays frozen."""

    def __init__(
        self,
        spec: JobSpec,
        splits: Splits,
        observer: TrainingObserver,
        store: FeatureStore | None,
        ids: list[int] | None,
        seconds: dict[str, float],
    ) -> None:
        self.spec = spec
        self.splits = splits
        self.observer = observer
        self.store = store
        self.ids = ids
        self.seconds = seconds
        # Stored features are those of the backbone as loaded: only while no stage trained it.
        self.key = feature_key(spec.backbone, spec.head.pooling)
        self.extractor: FeatureExtractor | None = None
        self.datasets: tuple[Epochs, tf.data.Dataset | None] | None = None
        self.features: tuple[np.ndarray, np.ndarray] | None = None
        self.reused = False

    def drop(self) -> None:
        self.extractor = None
        self.datasets = None
        self.key = None

    def stage_inputs(self, network: Network) -> _StageInputs | None:
        """The head alone on the features, or None when they would not fit in memory."""
        self.extractor = self.extractor or FeatureExtractor(network)
        count = len(self.splits.train) + len(self.splits.validation)
        if count * self.extractor.feature_bytes > FEATURE_CACHE_BYTES:
            return None
        if self.datasets is None:
            clock = time.perf_counter()
            self.datasets = self._datasets(self.extractor)
            self.seconds["features"] = time.perf_counter() - clock
        train_set, val_set = self.datasets
        return _StageInputs(self.extractor.head, train_set, val_set, cached=True)

    def _datasets(self, extractor: FeatureExtractor) -> tuple[Epochs, tf.data.Dataset | None]:
        features, self.reused = split_features(
            extractor,
            self.splits,
            self.spec,
            store=self.store,
            key=self.key,
            ids=self.ids,
            should_stop=self.observer.should_stop,
        )
        if self.key is not None:  # the untouched backbone's: worth a label review
            self.features = (self.splits.positions, features)
        return feature_epochs(features, self.splits, self.spec.training)


def split_features(
    extractor: FeatureExtractor,
    splits: Splits,
    spec: JobSpec,
    *,
    store: FeatureStore | None,
    key: str | None,
    ids: list[int] | None,
    should_stop: Callable[[], bool],
) -> tuple[np.ndarray, bool]:
    """The frozen backbone's features of the split's images, the training ones then the
    validation ones (rows as `feature_epochs` takes them): from `store` under `key` when all
    are there (`ids`: the data's stored ids), else extracted in one pass, stopped by
    `should_stop`, and stored. Also whether they came from the store."""
    stored_ids = None if ids is None else [ids[i] for i in splits.positions]

    def check(_batch: int) -> None:
        if should_stop():
            raise TrainingStopped()

    # In order, unshuffled: the features are shuffled as the pixels would have been.
    return cached_or_extracted(
        store,
        key,
        stored_ids,
        lambda: extractor.extract(splits.every_pixel(spec), splits.count, check),
    )


def feature_epochs(
    features: np.ndarray, splits: Splits, training: TrainingSpec
) -> tuple[Epochs, tf.data.Dataset | None]:
    """The head's inputs on cached features (rows: the training images, then the validation
    ones): shuffled epochs of the training split, batches of the validation split."""
    count = len(splits.train)
    rows = (features[:count], *splits.train.targets)
    elements = tf.data.Dataset.from_tensor_slices(rows)
    train_set = Epochs(elements, count, training.batch_size, training.seed, pixels=False)
    if splits.validation_pixels is None:
        return train_set, None
    validation = (features[count:], *splits.validation.targets)
    val_set = tf.data.Dataset.from_tensor_slices(validation).batch(training.batch_size)
    return train_set, val_set.prefetch(tf.data.AUTOTUNE)


def _fit_stage(
    inputs: _StageInputs,
    stage: Stage,
    training: TrainingSpec,
    objective: Objective,
    progress: ProgressCallback,
    seconds: dict[str, float],
    saver: Checkpoints | None,
    resumed: checkpoint.Checkpoint | None,
) -> None:
    """Compile and fit one stage, its epochs numbered on from the stages before it; from a
    checkpoint taken within it, with its optimizer and early stopping as they were."""
    compile_for_stage(inputs.model, stage, training, objective)
    early_state = resumed.state.early_stopping if resumed is not None else None
    if resumed is not None and resumed.optimizer:
        restore(inputs.model.optimizer.variables, resumed.optimizer)
    if early_state is not None and early_state["stopped"]:  # it had stopped the stage
        if resumed is not None and resumed.best:
            inputs.model.set_weights(resumed.best)
        return
    early = None
    if training.early_stopping is not None:
        early = EarlyStopping(
            (early_state, resumed.best) if early_state is not None and resumed else None,
            monitor=training.early_stopping.monitor,
            patience=training.early_stopping.patience,
            min_delta=training.early_stopping.min_delta,
            restore_best_weights=True,
        )
    # Early stopping first: its verdict on an epoch is in the checkpoint written with it.
    callbacks: list[keras.callbacks.Callback] = [*([early] if early else []), progress]
    if saver is not None:
        progress.on_recorded = partial(
            saver.write,
            stage.number,
            progress.history,
            done=False,
            fitting=inputs.model,
            early=early,
        )
    progress.stage = stage.number
    done = len(progress.history)  # resumed within the stage: some of its epochs among them
    end = stage.epochs + sum(1 for row in progress.history if row["stage"] < stage.number)
    clock = time.perf_counter()
    inputs.model.fit(
        inputs.train.batches(done, end),
        steps_per_epoch=inputs.train.steps,
        validation_data=inputs.validation,
        initial_epoch=done,
        epochs=end,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, by the seed
        verbose=0,
    )
    progress.on_recorded = None
    seconds["fit"] += time.perf_counter() - clock
    if progress.stopped:
        raise TrainingStopped()
