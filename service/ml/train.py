"""Training: the tf.data pipeline, the fit loop with its observer, and the BN-statistics fix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from service.ml.build import Network, build_network
from service.ml.images import to_pixels
from service.spec import JobSpec

# Decoded training pixels are kept in memory across epochs up to this size, else re-decoded.
DECODED_CACHE_BYTES = 2 * 1024**3
# Enough batches for stable BatchNormalization statistics; more only costs time.
BN_STATISTICS_MAX_BATCHES = 200


class TrainingObserver(Protocol):
    """What the trainer tells the outside world, and how it learns it should stop."""

    def on_step(self, *, epoch: int, epochs: int, step: int, steps: int) -> None: ...

    def on_epoch(self, metrics: dict[str, float]) -> None: ...

    def should_stop(self) -> bool: ...


class TrainingStopped(Exception):
    """The observer asked training to stop (cancelled, or the job's lease was lost)."""


@dataclass
class LabelledImages:
    images: list[bytes]
    labels: np.ndarray  # int32 class indices
    classes: list[str]


@dataclass
class TrainingResult:
    network: Network
    history: list[dict[str, float]]
    metrics: dict[str, float]
    batchnorm_layers_recomputed: int = 0
    split: dict[str, int] = field(default_factory=dict)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): `fraction` of each class, chosen by `seed`, to validation.

    Every class keeps at least one training image; a class of one image has none in validation.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    validation: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(round(len(members) * fraction), len(members) - 1) if fraction > 0 else 0
        validation.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


def pixel_dataset(
    images: Sequence[bytes],
    labels: np.ndarray,
    *,
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 raw pixels 0–255, int label): decoded and resized like /predict."""

    def decode(data: bytes) -> np.ndarray:
        return to_pixels(bytes(data), size)

    def decode_tensor(data: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(decode, [data], tf.uint8, stateful=False)
        return tf.ensure_shape(pixels, (size, size, 3)), label

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(images), dtype=tf.string), tf.constant(labels, dtype=tf.int32))
    )
    dataset = dataset.map(decode_tensor, num_parallel_calls=tf.data.AUTOTUNE)
    if len(images) * size * size * 3 <= DECODED_CACHE_BYTES:
        dataset = dataset.cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(
        lambda pixels, label: (tf.cast(pixels, tf.float32), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


class _ObserverCallback(keras.callbacks.Callback):
    def __init__(self, observer: TrainingObserver, epochs: int, steps: int) -> None:
        super().__init__()
        self.observer = observer
        self.epochs = epochs
        self.steps = steps
        self.epoch = 0
        self.stopped = False

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch + 1
        self.observer.on_step(epoch=self.epoch, epochs=self.epochs, step=0, steps=self.steps)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.observer.on_step(
            epoch=self.epoch, epochs=self.epochs, step=batch + 1, steps=self.steps
        )
        if self.observer.should_stop():
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.stopped:
            return
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        self.observer.on_epoch({"epoch": epoch + 1, **metrics})


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    return {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "adamw": keras.optimizers.AdamW,
    }[name](learning_rate=learning_rate)


def compile_network(network: Network, spec: JobSpec) -> None:
    network.model.compile(
        optimizer=make_optimizer(spec.training.optimizer, spec.training.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )


def train(
    spec: JobSpec,
    data: LabelledImages,
    observer: TrainingObserver,
    *,
    backbone_weights: str | Path | None,
) -> TrainingResult:
    """Build, freeze, compile and fit; raise TrainingStopped if the observer stopped it."""
    training = spec.training
    keras.utils.set_random_seed(training.seed)
    train_index, val_index = stratified_split(data.labels, training.validation_split, training.seed)
    images = data.images
    size = spec.input_size
    train_set = pixel_dataset(
        [images[i] for i in train_index],
        data.labels[train_index],
        size=size,
        batch_size=training.batch_size,
        shuffle_seed=training.seed,
    )
    val_set = (
        pixel_dataset(
            [images[i] for i in val_index],
            data.labels[val_index],
            size=size,
            batch_size=training.batch_size,
        )
        if len(val_index)
        else None
    )

    network = build_network(spec, len(data.classes), backbone_weights)
    compile_network(network, spec)
    steps = math.ceil(len(train_index) / training.batch_size)
    callback = _ObserverCallback(observer, training.epochs, steps)
    fit = network.model.fit(
        train_set,
        validation_data=val_set,
        epochs=training.epochs,
        callbacks=[callback],
        shuffle=False,  # the dataset shuffles itself, by the seed
        verbose=0,
    )
    if callback.stopped:
        raise TrainingStopped()

    recomputed = recompute_batchnorm_statistics(network.model, train_set)
    history = [
        {"epoch": epoch + 1, **{key: float(values[epoch]) for key, values in fit.history.items()}}
        for epoch in range(len(fit.history.get("loss", [])))
    ]
    metrics = {key: value for key, value in history[-1].items() if key != "epoch"}
    if recomputed and val_set is not None:
        # The epoch's validation figures came from the stale statistics; measure again.
        loss, accuracy = network.model.evaluate(val_set, verbose=0)
        metrics.update(val_loss=float(loss), val_accuracy=float(accuracy))
    return TrainingResult(
        network=network,
        history=history,
        metrics=metrics,
        batchnorm_layers_recomputed=recomputed,
        split={"train": len(train_index), "validation": len(val_index)},
    )


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
        for batch_number, (pixels, _) in enumerate(
            dataset.take(BN_STATISTICS_MAX_BATCHES), start=1
        ):
            for layer in layers:
                layer.momentum = (batch_number - 1) / batch_number
            model(pixels, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)
