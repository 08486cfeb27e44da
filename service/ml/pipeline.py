"""The tf.data pipeline training reads: images decoded and resized as /predict does, the
stratified split, each epoch's shuffle, class weights.

The images come one of two ways (`LabelledImages.images`), and the examples are the same:
in memory, decoded once and kept decoded (under DECODED_CACHE_BYTES); or streamed from the
worker's shard cache, each read and decoded when the pipeline needs it. Either way epoch e
sees the same images in the same order (see train.py's docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from service.ml.data import Images, LabelledImages
from service.ml.images import to_pixels
from service.ml.losses import SINGLE_LABEL, Objective, objective_for
from service.ml.split import stratified_split
from service.storage.shard_files import ShardedImages
from service.training.spec import JobSpec, TrainingSpec

# Decoded training pixels are kept in memory across epochs up to this size, else re-decoded.
DECODED_CACHE_BYTES = 2 * 1024**3
# Each epoch's shuffle is seeded with seed × this + the epoch's number: distinct per epoch.
EPOCH_SEED_STRIDE = 1_000_003


def class_weights(training: TrainingSpec, labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """One weight per class: "balanced" from the training split's counts, or as given."""
    if training.class_weight == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(labels)
        weights = np.ones(len(classes))
        weights[present] = compute_class_weight("balanced", classes=present, y=labels)
        return weights
    return _given_weights(training, classes)


def label_weights(training: TrainingSpec, targets: np.ndarray, classes: list[str]) -> np.ndarray:
    """Multi-label: one weight per label for its positive term in the loss, "balanced" from
    the training split's counts (`multilabel.positive_weights`), or as given."""
    if training.class_weight == "balanced":
        from service.ml.multilabel import positive_weights

        return positive_weights(targets)
    return _given_weights(training, classes)


def _given_weights(training: TrainingSpec, classes: list[str]) -> np.ndarray:
    weights = np.ones(len(classes))
    assert not isinstance(training.class_weight, str)
    for name, value in (training.class_weight or {}).items():
        if name not in classes:
            raise ValueError(f"training.class_weight names {name!r}, not a class of the dataset")
        weights[classes.index(name)] = value
    return weights


def _targets(
    labels: np.ndarray, num_classes: int, weights: np.ndarray | None
) -> tuple[np.ndarray, ...]:
    """One-hot targets (label smoothing needs them), with per-image weights when given; a
    multi-label matrix is its own target (its weights go into the loss, per label)."""
    if labels.ndim == 2:
        return (labels.astype(np.float32),)
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    if weights is None:
        return (onehot,)
    return onehot, weights[labels].astype(np.float32)


def _decoded_fit(count: int, size: int) -> bool:
    """Whether `count` images decoded at `size` px may be kept in memory."""
    return count * size * size * 3 <= DECODED_CACHE_BYTES


def decoded_elements(
    images: Images, targets: tuple[np.ndarray, ...], *, size: int
) -> tf.data.Dataset:
    """(uint8 raw pixels, *targets) per image, decoded and resized like /predict; kept in
    memory once decoded when they fit."""
    if isinstance(images, ShardedImages):
        dataset = _positions(images, targets).map(
            _reader(images, size), num_parallel_calls=tf.data.AUTOTUNE
        )
        return dataset.cache() if _decoded_fit(len(images), size) else dataset

    def decode(data: bytes) -> np.ndarray:
        return to_pixels(bytes(data), size)

    def decode_tensor(data: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        pixels = tf.numpy_function(decode, [data], tf.uint8, stateful=False)
        return (tf.ensure_shape(pixels, (size, size, 3)), *rest)

    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(images), tf.string), *targets))
    dataset = dataset.map(decode_tensor, num_parallel_calls=tf.data.AUTOTUNE)
    if _decoded_fit(len(images), size):
        dataset = dataset.cache()
    return dataset


def _positions(images: ShardedImages, targets: tuple[np.ndarray, ...]) -> tf.data.Dataset:
    """(position in `images`, *targets) per image: what a streamed pipeline shuffles."""
    return tf.data.Dataset.from_tensor_slices((np.arange(len(images), dtype=np.int64), *targets))


def _reader(images: ShardedImages, size: int) -> Callable[..., tuple[tf.Tensor, ...]]:
    """Maps (position, *targets) to (uint8 pixels, *targets): read from disk, then decoded
    as the in-memory path decodes."""

    def read(position: np.int64) -> np.ndarray:
        return to_pixels(images[int(position)], size)

    def read_tensor(position: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        pixels = tf.numpy_function(read, [position], tf.uint8, stateful=False)
        return (tf.ensure_shape(pixels, (size, size, 3)), *rest)

    return read_tensor


def _as_float(pixels: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
    return (tf.cast(pixels, tf.float32), *rest)


def pixel_dataset(
    images: Images,
    targets: tuple[np.ndarray, ...],
    *,
    size: int,
    batch_size: int,
    padded: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 raw pixels 0–255, *targets) in order. `padded`: the last batch
    filled up with black images (`_batched_pixels`), for a backbone pass whose caller keeps
    the first len(images) rows."""
    elements = decoded_elements(images, targets, size=size)
    return _batched_pixels(elements, batch_size, padded_from=len(images) if padded else None)


def _batched_pixels(
    elements: tf.data.Dataset, batch_size: int, *, padded_from: int | None = None
) -> tf.data.Dataset:
    """Batches of (float32 pixels, *targets). With `padded_from` (how many elements there
    are) past one batch, the last batch is filled up with black images: every batch then has
    one shape, and a network called on them is traced once, not again for the last batch's
    (MobileNetV2 at 96 px over 450 images: 1.29 s → 1.00 s). Rows from `padded_from` on are
    the filler. One batch alone is one shape already, and is left as it is."""
    several = padded_from is not None and padded_from > batch_size
    missing = -(padded_from or 0) % batch_size if several else 0
    if missing:
        black = tuple(tf.zeros(spec.shape, spec.dtype) for spec in elements.element_spec)
        elements = elements.concatenate(tf.data.Dataset.from_tensors(black).repeat(missing))
    dataset = elements.batch(batch_size, drop_remainder=several)
    return dataset.map(_as_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class Epochs:
    """A training split's examples, batched anew for each epoch in an order fixed by the
    seed and the epoch's number alone: epoch e is shuffled alike whether training started at
    epoch 1 or resumed at e from a checkpoint."""

    elements: tf.data.Dataset  # one example each: (pixels or features, *targets)
    count: int
    batch_size: int
    seed: int
    pixels: bool  # uint8 pixels, cast to float32 once batched
    # Streamed and not kept decoded: elements are (position, *targets), each epoch's
    # shuffled positions then read and decoded by this.
    decode: Callable[..., tuple[tf.Tensor, ...]] | None = None

    @property
    def steps(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def batches(self, first: int, stop: int) -> tf.data.Dataset:
        """The batches of epochs first … stop-1 (0-based), one epoch after the other."""
        # Each epoch's seed is a Python int: a tensor seed breaks tf.random's (0, 0) check
        # under global seed 0. Joined pairwise, so the pipeline nests log2(epochs) deep.
        parts = [self._epoch(number) for number in range(first, stop)]
        while len(parts) > 1:
            pairs = zip(parts[::2], parts[1::2], strict=False)
            joined = [left.concatenate(right) for left, right in pairs]
            parts = joined + (parts[-1:] if len(parts) % 2 else [])
        dataset = parts[0] if parts else self._read(self.elements.take(0)).batch(self.batch_size)
        if self.pixels:
            dataset = dataset.map(_as_float, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _epoch(self, number: int) -> tf.data.Dataset:
        # Never 0 ("no seed"), not even for the BN statistics pass (epoch -1).
        seed = self.seed * EPOCH_SEED_STRIDE + number + 2
        shuffled = self.elements.shuffle(self.count, seed=seed, reshuffle_each_iteration=False)
        return self._read(shuffled).batch(self.batch_size)

    def _read(self, elements: tf.data.Dataset) -> tf.data.Dataset:
        if self.decode is None:
            return elements
        return elements.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE)


@dataclass
class Split:
    """One side of the split: its images, their labels, and the targets the model fits."""

    images: Images  # the split's own, in the order of `index`
    labels: np.ndarray
    targets: tuple[np.ndarray, ...]
    index: np.ndarray  # positions in the data, ascending

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, count: int, seed: int) -> Split:
        """At most `count` of its images, a seeded sample in their order; itself if fewer."""
        if len(self) <= count:
            return self
        pick = np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False))
        targets = tuple(target[pick] for target in self.targets)
        return Split(_subset(self.images, pick), self.labels[pick], targets, self.index[pick])

    def pixels(self, spec: JobSpec) -> tf.data.Dataset:
        """In order: for evaluating, and for extracting features."""
        return pixel_dataset(
            self.images, self.targets, size=spec.input_size, batch_size=spec.training.batch_size
        )

    def epochs(self, spec: JobSpec) -> Epochs:
        """For fitting: shuffled by the seed, each epoch in its own order."""
        batch_size, seed, size = spec.training.batch_size, spec.training.seed, spec.input_size
        if isinstance(self.images, ShardedImages) and not _decoded_fit(len(self), size):
            elements = _positions(self.images, self.targets)
            decode = _reader(self.images, size)
            return Epochs(elements, len(self), batch_size, seed, pixels=True, decode=decode)
        elements = decoded_elements(self.images, self.targets, size=size)
        return Epochs(elements, len(self), batch_size, seed, pixels=True)


@dataclass
class Splits:
    train: Split
    validation: Split
    train_epochs: Epochs
    validation_pixels: tf.data.Dataset | None  # None when no image was held out
    objective: Objective = SINGLE_LABEL

    def every_pixel(self, spec: JobSpec) -> tf.data.Dataset:
        """Batches of (float32 raw pixels,): the training images, then the validation ones,
        in order, batched across the two. Features are extracted so, in one `predict`: each
        call, and each batch shape, costs a start however few its images (a small job's two
        calls 1.6 s, one on the splits' own batches 2.0 s, batched across them 0.9 s); the
        last batch is filled up with black images, so all have one shape: the rows from
        `count` on are filler."""
        elements = decoded_elements(self.train.images, (), size=spec.input_size)
        if len(self.validation):
            held_out = decoded_elements(self.validation.images, (), size=spec.input_size)
            elements = elements.concatenate(held_out)
        return _batched_pixels(elements, spec.training.batch_size, padded_from=self.count)

    @property
    def count(self) -> int:
        """Images in the two splits: the rows of features `every_pixel`'s batches give."""
        return len(self.train) + len(self.validation)

    @property
    def statistics_pixels(self) -> tf.data.Dataset:
        """A shuffled pass over the training split, for BatchNormalization's statistics: an
        epoch number of its own, so it draws no epoch's order."""
        return self.train_epochs.batches(-1, 0)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation)}

    @property
    def positions(self) -> np.ndarray:
        """Positions in the data of the training images, then of the validation images."""
        return np.concatenate([self.train.index, self.validation.index])


def prepare_splits(spec: JobSpec, data: LabelledImages) -> Splits:
    """Hold out part of each class for validation, and make the pixel datasets of both sides.

    Class weights go into the training targets only (multi-label: into the training loss's
    positive terms): the validation loss stays the plain one.
    """
    training = spec.training
    train_index, val_index = stratified_split(data.labels, training.validation_split, training.seed)
    train_labels, val_labels = data.labels[train_index], data.labels[val_index]
    weights: np.ndarray | None = None  # per image, into the targets
    per_label: np.ndarray | None = None  # per label, into the loss
    if training.class_weight is not None and data.multi_label:
        per_label = label_weights(training, train_labels, data.classes)
    elif training.class_weight is not None:
        weights = class_weights(training, train_labels, data.classes)
    num_classes = len(data.classes)
    train_split = Split(
        _subset(data.images, train_index),
        train_labels,
        _targets(train_labels, num_classes, weights),
        train_index,
    )
    val_split = Split(
        _subset(data.images, val_index),
        val_labels,
        _targets(val_labels, num_classes, None),
        val_index,
    )
    return Splits(
        train=train_split,
        validation=val_split,
        train_epochs=train_split.epochs(spec),
        validation_pixels=val_split.pixels(spec) if len(val_split) else None,
        objective=objective_for(data.labels, per_label),
    )


def _subset(images: Images, index: np.ndarray) -> Images:
    """The images at these positions: copied references in memory, a view of the cache."""
    if isinstance(images, ShardedImages):
        return images.subset(index)
    return [images[i] for i in index]
