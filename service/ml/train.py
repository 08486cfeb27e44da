"""Training: the tf.data pipeline, staged fitting with its observer, feature caching for
frozen backbones, the BN-statistics fix, and the evaluation on the validation split."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from service.ml.build import Network, apply_freeze, build_network
from service.ml.calibrate import Calibration, calibrate, not_fitted
from service.ml.drift import Snapshot, snapshot
from service.ml.features import FeatureExtractor, FeatureStore, cached_or_extracted, feature_key
from service.ml.images import to_pixels
from service.ml.split import stratified_split
from service.spec import JobSpec, Stage, TrainingSpec

# Decoded training pixels are kept in memory across epochs up to this size, else re-decoded.
DECODED_CACHE_BYTES = 2 * 1024**3
# Backbone features are cached for frozen stages up to this size, else the stage runs whole.
FEATURE_CACHE_BYTES = 2 * 1024**3
# Enough batches for stable BatchNormalization statistics; more only costs time.
BN_STATISTICS_MAX_BATCHES = 200
# Decimals kept of each probability in the evaluation's samples: every validation image's
# scores are stored with the model, so their size counts; four are more than a person reads.
SAMPLE_SCORE_DECIMALS = 4


class TrainingObserver(Protocol):
    """What the trainer tells the outside world, and how it learns it should stop."""

    def on_progress(self, progress: dict[str, int]) -> None: ...

    def on_epoch(self, row: dict[str, float]) -> None: ...

    def should_stop(self) -> bool: ...


class TrainingStopped(Exception):
    """The observer asked training to stop (cancelled, or the job's lease was lost)."""


@dataclass
class LabelledImages:
    images: list[bytes]
    labels: np.ndarray  # int32 class indices
    classes: list[str]
    # The stored dataset's row of each image, when they came from one: the worker names the
    # validation images by these, and features are cached under them.
    ids: list[int] | None = None
    filenames: list[str] | None = None


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
    # The temperature the exported model applies (1.0: none), and the evaluation's
    # `calibration` block: {"fitted": True, "temperature", "ece_before", …} or
    # {"fitted": False, "reason"}.
    temperature: float = 1.0
    calibration: dict[str, Any] = field(default_factory=dict)
    # The backbone's weights as built from its source, before training: what drift.with_drift
    # compares the trained ones to. None when it started from random weights.
    initial_weights: Snapshot | None = None
    # The frozen backbone's pooled features of every image, when a stage trained on them
    # before the backbone changed: (positions in the data, features, row k: image k), and
    # whether they came from the feature store rather than the backbone.
    features: tuple[np.ndarray, np.ndarray] | None = None
    features_reused: bool = False


def class_weights(training: TrainingSpec, labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """One weight per class: "balanced" from the training split's counts, or as given."""
    if training.class_weight == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        weights = np.ones(len(classes))
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
        return weights
    weights = np.ones(len(classes))
    for name, value in (training.class_weight or {}).items():
        if name not in classes:
            raise ValueError(f"training.class_weight names {name!r}, not a class of the dataset")
        weights[classes.index(name)] = value
    return weights


def _targets(
    labels: np.ndarray, num_classes: int, weights: np.ndarray | None
) -> tuple[np.ndarray, ...]:
    """One-hot targets (label smoothing needs them), with per-image weights when given."""
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    if weights is None:
        return (onehot,)
    return onehot, weights[labels].astype(np.float32)


def _batched(
    dataset: tf.data.Dataset, count: int, batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    # The same seed and count give the same order whatever the elements are: the cached
    # features meet the head in the order the pixels would have.
    if shuffle_seed is not None:
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size)


def pixel_dataset(
    images: Sequence[bytes],
    targets: tuple[np.ndarray, ...],
    *,
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 raw pixels 0–255, *targets): decoded and resized like /predict."""

    def decode(data: bytes) -> np.ndarray:
        return to_pixels(bytes(data), size)

    def decode_tensor(data: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        pixels = tf.numpy_function(decode, [data], tf.uint8, stateful=False)
        return (tf.ensure_shape(pixels, (size, size, 3)), *rest)

    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(images), tf.string), *targets))
    dataset = dataset.map(decode_tensor, num_parallel_calls=tf.data.AUTOTUNE)
    if len(images) * size * size * 3 <= DECODED_CACHE_BYTES:
        dataset = dataset.cache()
    dataset = _batched(dataset, len(images), batch_size, shuffle_seed)
    dataset = dataset.map(
        lambda pixels, *rest: (tf.cast(pixels, tf.float32), *rest),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


class _ProgressCallback(keras.callbacks.Callback):
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
        self.observer.on_epoch(row)


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)
    return {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
    }[name](learning_rate=learning_rate)


def compile_for_stage(model: keras.Model, stage: Stage, training: TrainingSpec) -> None:
    """A fresh optimizer per stage, as the Keras guide recompiles after changing `trainable`."""
    model.compile(
        optimizer=make_optimizer(stage.optimizer, stage.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=training.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


@dataclass
class _Split:
    """One side of the split: its images, their labels, and the targets the model fits."""

    images: list[bytes]
    labels: np.ndarray
    targets: tuple[np.ndarray, ...]
    index: np.ndarray  # positions in the data, ascending

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, spec: JobSpec, shuffle_seed: int | None) -> tf.data.Dataset:
        return pixel_dataset(
            self.images,
            self.targets,
            size=spec.input_size,
            batch_size=spec.training.batch_size,
            shuffle_seed=shuffle_seed,
        )


@dataclass
class _Splits:
    train: _Split
    validation: _Split
    train_pixels: tf.data.Dataset  # shuffled by the seed, afresh each epoch
    validation_pixels: tf.data.Dataset | None  # None when no image was held out

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation)}

    @property
    def positions(self) -> np.ndarray:
        """Positions in the data of the training images, then of the validation images."""
        return np.concatenate([self.train.index, self.validation.index])


def _prepare_splits(spec: JobSpec, data: LabelledImages) -> _Splits:
    """Hold out part of each class for validation, and make the pixel datasets of both sides.

    Class weights go into the training targets only: the validation loss stays the plain one.
    """
    training = spec.training
    train_index, val_index = stratified_split(data.labels, training.validation_split, training.seed)
    train_labels, val_labels = data.labels[train_index], data.labels[val_index]
    weights = (
        class_weights(training, train_labels, data.classes)
        if training.class_weight is not None
        else None
    )
    num_classes = len(data.classes)
    train_split = _Split(
        [data.images[i] for i in train_index],
        train_labels,
        _targets(train_labels, num_classes, weights),
        train_index,
    )
    val_split = _Split(
        [data.images[i] for i in val_index],
        val_labels,
        _targets(val_labels, num_classes, None),
        val_index,
    )
    return _Splits(
        train=train_split,
        validation=val_split,
        train_pixels=train_split.pixels(spec, training.seed),
        validation_pixels=val_split.pixels(spec, None) if len(val_split) else None,
    )


def train(
    spec: JobSpec,
    data: LabelledImages,
    observer: TrainingObserver,
    *,
    backbone_weights: str | Path | None,
    feature_cache: bool = True,
    feature_store: FeatureStore | None = None,
) -> TrainingResult:
    """Train as the Keras transfer-learning guide does, everything fixed by the job's seed.

    1. Split the images, class by class, into training and validation.
    2. Build the network: backbone, augmentation, head.
    3. For each stage: freeze what it freezes, take its inputs (the backbone's cached
       features while it is frozen and nothing augments, else the pixels), compile with a
       fresh optimizer and fit; then recompute the statistics of the BN layers that trained.
       Features of the untouched pretrained backbone come from `feature_store` when an
       earlier job or advice stored them, and are stored there otherwise.
    4. Evaluate the final model on the validation split: loss, accuracy, the temperature
       fitted on it (`service.ml.calibrate`), the per-class report.

    Raises TrainingStopped if the observer stopped it.
    """
    keras.utils.set_random_seed(spec.training.seed)
    splits = _prepare_splits(spec, data)
    seconds = dict.fromkeys(("build", "features", "fit", "evaluate"), 0.0)
    clock = time.perf_counter()
    network = build_network(spec, len(data.classes), backbone_weights)
    initial_weights = snapshot(network.backbone) if spec.backbone.pretrained else None
    seconds["build"] = time.perf_counter() - clock
    frozen = _FrozenFeatures(spec, splits, observer, feature_store, data.ids, seconds)
    history, cached_stages, recomputed = _fit_stages(
        spec, network, splits, _progress(spec, splits, observer), frozen, feature_cache
    )
    clock = time.perf_counter()
    metrics, evaluation, calibration = _final_metrics(
        network.model, splits, history, spec, data.classes
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
        calibration=calibration.report,
        initial_weights=initial_weights,
        features=frozen.features,
        features_reused=frozen.reused,
    )


def _progress(spec: JobSpec, splits: _Splits, observer: TrainingObserver) -> _ProgressCallback:
    return _ProgressCallback(
        observer,
        stages=len(spec.stages),
        epochs=sum(stage.epochs for stage in spec.stages),
        steps=math.ceil(len(splits.train) / spec.training.batch_size),
    )


def _fit_stages(
    spec: JobSpec,
    network: Network,
    splits: _Splits,
    progress: _ProgressCallback,
    frozen: _FrozenFeatures,
    feature_cache: bool,
) -> tuple[list[dict[str, float]], list[int], int]:
    """Fit the stages in turn. Returns the history (epochs numbered across stages), the
    stages fitted on cached features, and how many BN layers had their statistics recomputed.
    """
    # Augmentation must see the pixels every epoch, so then nothing is cached.
    cacheable = feature_cache and not spec.training.augmenting
    cached_stages: list[int] = []
    recomputed = 0
    for stage in spec.stages:
        apply_freeze(network.backbone, stage.freeze)
        if stage.freeze.mode != "backbone":
            frozen.drop()  # the backbone trains: its features go stale
        inputs = (
            frozen.stage_inputs(network) if cacheable and stage.freeze.mode == "backbone" else None
        )
        if inputs is None:
            inputs = _StageInputs(network.model, splits.train_pixels, splits.validation_pixels)
        else:
            cached_stages.append(stage.number)
        _fit_stage(inputs, stage, spec.training, progress, frozen.seconds)
        # BN layers that trained this stage: their moving statistics lag far behind.
        recomputed += recompute_batchnorm_statistics(network.model, splits.train_pixels)
    return progress.history, cached_stages, recomputed


@dataclass
class _StageInputs:
    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    cached: bool = False


class _FrozenFeatures:
    """The frozen backbone's features of the job's images, extracted (or loaded from the
    store) at the first frozen stage and kept while the backbone stays frozen."""

    def __init__(
        self,
        spec: JobSpec,
        splits: _Splits,
        observer: TrainingObserver,
        store: FeatureStore | None,
        ids: list[int] | None,
        seconds: dict[str, float],
    ) -> None:
        self.spec = spec
        self.splits = splits
        self.observer = observer
        self.store = store
        self.ids = None if ids is None else [ids[i] for i in splits.positions]
        self.seconds = seconds
        # Stored features are those of the backbone as loaded: only while no stage trained it.
        self.key = feature_key(spec.backbone, spec.head.pooling)
        self.extractor: FeatureExtractor | None = None
        self.datasets: tuple[tf.data.Dataset, tf.data.Dataset | None] | None = None
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

    def _extract(self, extractor: FeatureExtractor) -> np.ndarray:
        def check(_batch: int) -> None:
            if self.observer.should_stop():
                raise TrainingStopped()

        # In order, unshuffled: the features are shuffled as the pixels would have been.
        parts = [extractor.extract(self.splits.train.pixels(self.spec, None), check)]
        if self.splits.validation_pixels is not None:
            parts.append(extractor.extract(self.splits.validation_pixels, check))
        return np.concatenate(parts)

    def _datasets(
        self, extractor: FeatureExtractor
    ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
        features, self.reused = cached_or_extracted(
            self.store, self.key, self.ids, lambda: self._extract(extractor)
        )
        if self.key is not None:  # the untouched backbone's: worth a label review
            self.features = (self.splits.positions, features)
        batch_size = self.spec.training.batch_size

        def batches(rows: np.ndarray, split: _Split, seed: int | None) -> tf.data.Dataset:
            dataset = tf.data.Dataset.from_tensor_slices((rows, *split.targets))
            return _batched(dataset, len(rows), batch_size, seed).prefetch(tf.data.AUTOTUNE)

        count = len(self.splits.train)
        train_set = batches(features[:count], self.splits.train, self.spec.training.seed)
        if self.splits.validation_pixels is None:
            return train_set, None
        return train_set, batches(features[count:], self.splits.validation, None)


def _fit_stage(
    inputs: _StageInputs,
    stage: Stage,
    training: TrainingSpec,
    progress: _ProgressCallback,
    seconds: dict[str, float],
) -> None:
    """Compile and fit one stage, its epochs numbered on from the stages before it."""
    compile_for_stage(inputs.model, stage, training)
    callbacks = _callbacks(training, progress)
    progress.stage = stage.number
    done = len(progress.history)
    clock = time.perf_counter()
    inputs.model.fit(
        inputs.train,
        validation_data=inputs.validation,
        initial_epoch=done,
        epochs=done + stage.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, by the seed
        verbose=0,
    )
    seconds["fit"] += time.perf_counter() - clock
    if progress.stopped:
        raise TrainingStopped()


def _callbacks(
    training: TrainingSpec, progress: _ProgressCallback
) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [progress]
    if training.early_stopping is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=training.early_stopping.monitor,
                patience=training.early_stopping.patience,
                min_delta=training.early_stopping.min_delta,
                restore_best_weights=True,
            )
        )
    return callbacks


def _final_metrics(
    model: keras.Model,
    splits: _Splits,
    history: list[dict[str, float]],
    spec: JobSpec,
    classes: list[str],
) -> tuple[dict[str, float], dict[str, Any] | None, Calibration]:
    """The last epoch's metrics; with a validation split, its loss and accuracy measured
    again, the temperature fitted on it (unless `training.calibrate` is off), and the
    per-class report of the calibrated probabilities, which the calibration carries: those
    the exported model gives (ranked as before, so the report is the same).

    `val_loss` stays Keras's loss of the uncalibrated probabilities, comparable with the
    history's; the calibration block has the NLL before and after.
    """
    metrics = {
        key: value for key, value in history[-1].items() if key not in ("epoch", "stage", "seconds")
    }
    if splits.validation_pixels is None:
        return metrics, None, not_fitted(None, "no validation split to fit a temperature on")
    # Measured on the model as exported: after early stopping's restore and the BN fix.
    probabilities = model.predict(splits.validation_pixels, verbose=0)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=spec.training.label_smoothing)
    metrics["val_loss"] = float(loss(splits.validation.targets[0], probabilities))
    labels = splits.validation.labels
    calibration = (
        calibrate(probabilities, labels)
        if spec.training.calibrate
        else not_fitted(probabilities, "training.calibrate is false")
    )
    assert calibration.probabilities is not None
    evaluation = evaluate(labels, calibration.probabilities, classes)
    evaluation["calibration"] = calibration.report
    metrics["val_accuracy"] = evaluation["accuracy"]
    return metrics, evaluation, calibration


def evaluate(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: true)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = np.argmax(probabilities, axis=1)
    everyone = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=everyone, zero_division=0
    )
    matrix = confusion_matrix(labels, predicted, labels=everyone)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "per_class": [
            {
                "label": label,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(classes)
        ],
        "confusion_matrix": {"labels": list(classes), "matrix": matrix.tolist()},
    }


def prediction_samples(
    image_ids: Sequence[int], labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> list[dict[str, Any]]:
    """One row per evaluated image: its id, true and predicted class, and its probability of
    every class (in `classes` order, rounded). `predicted` is the argmax `evaluate` took of
    the same unrounded probabilities, so the rows of a confusion-matrix cell number its count.
    """
    predicted = np.argmax(probabilities, axis=1)
    rounded = np.round(probabilities.astype(np.float64), SAMPLE_SCORE_DECIMALS)
    return [
        {
            "image_id": int(image_id),
            "label": classes[int(label)],
            "predicted": classes[int(guess)],
            "scores": [float(score) for score in scores],
        }
        for image_id, label, guess, scores in zip(
            image_ids, labels, predicted, rounded, strict=True
        )
    ]


def trainable_batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def recompute_batchnorm_statistics(model: keras.Model, dataset: tf.data.Dataset) -> int:
    """Set the moving statistics of BN layers that trained to their mean over `dataset`.

    Keras's backbones use BN momentum up to 0.999: after a short run the moving statistics
    are still near their initial values and the model at inference answers one class for
    everything. Running the data through in training mode with momentum (k-1)/k at batch k
    makes each moving statistic the plain average of the batch statistics.
    Returns how many layers were updated.
    """
    layers = trainable_batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for batch_number, batch in enumerate(dataset.take(BN_STATISTICS_MAX_BATCHES), start=1):
            for layer in layers:
                layer.momentum = (batch_number - 1) / batch_number
            model(batch[0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
