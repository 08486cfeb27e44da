"""Unknown inputs: a score of how unlike its training images an input is, and a threshold.

The score is a feature ensemble of Mahalanobis distances (Lee et al. 2018, "A Simple Unified
Framework for Detecting Out-of-Distribution Samples"):

1. The backbone's feature map is tapped at the end of each of its resolution stages (the last
   layer before the map's size halves, and its final output), and each map is averaged over
   its cells: one pooled vector per depth.
2. At each depth, a Gaussian per class with one covariance shared by all classes is fitted on
   the training split (class means; Ledoit–Wolf shrinkage, since there are often fewer images
   than channels). An image's distance at that depth is its Mahalanobis distance to the
   nearest class mean.
3. Each depth's distance is standardised by its mean and spread on the validation split, and
   the score is the largest of them: the strangest any depth finds the image. Shallow depths
   catch inputs unlike the training images in their textures and statistics (noise, photos
   sent to a digits model); deep ones catch inputs unlike them in content.

The threshold is the validation scores' (1 − unknown_rate) quantile, so that share of images
like the training ones is flagged. The validation scores themselves are kept (as quantiles)
so a request may move the threshold to another rate. Without a validation split, the
training split stands in for it, and more than unknown_rate of new known images will be
flagged (its distances are smaller than new images').

Why this method: measured in bench/unknowns.py against the maximum-softmax baseline, the
energy of the logits, k-nearest-neighbour distance on normalised features and a Mahalanobis
distance on the final features alone (docs/unknowns.md has the figures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from service.ml.calibrate import Temperature, scale_tensor
from service.ml.model_cache import UnknownThresholds

METHOD = "mahalanobis-ensemble"
# pixels → (feature maps, deepest last; probabilities): `Tap.maps`, or it traced once.
Forward = Callable[[tf.Tensor], tuple[list[tf.Tensor], tf.Tensor]]
# The validation scores are kept at these many evenly spaced quantile levels (0, …, 1).
QUANTILE_LEVELS = 1001
# Training images the Gaussians are fitted on, at most (a seeded sample beyond that).
MAX_FIT_IMAGES = 20_000


@dataclass(frozen=True)
class Depth:
    """One tapped depth: the whitening matrix W (W Wᵀ = Σ⁻¹) and the class means, both taken
    from an offset o (the mean of the class means, so float32 sums stay small), so that the
    squared distance to class k is ‖(x − o) W − (μ_k − o) W‖²; and the validation distances'
    mean and spread, which standardise it."""

    layer: str
    offset: np.ndarray  # D
    whitened_means: np.ndarray  # K × D: (μ_k − o) W
    whitening: np.ndarray  # D × D
    centre: float
    spread: float


@dataclass(frozen=True)
class UnknownDetector:
    depths: list[Depth]
    quantiles: np.ndarray  # the validation scores at QUANTILE_LEVELS evenly spaced levels
    unknown_rate: float
    report: dict[str, Any]

    @property
    def threshold(self) -> float:
        return self.thresholds.threshold()

    @property
    def thresholds(self) -> UnknownThresholds:
        return UnknownThresholds(self.quantiles, self.unknown_rate, self.report["images"])


def stage_layers(backbone: keras.Model) -> list[str]:
    """The last layer of each resolution stage of the backbone, and its output layer."""
    # Padding only prepares the next layer's stride: it ends no stage.
    maps = [
        layer
        for layer in backbone.layers
        if len(layer.output.shape) == 4
        and not isinstance(layer, keras.layers.InputLayer | keras.layers.ZeroPadding2D)
    ]
    names = [
        layer.name
        for layer, after in pairwise(maps)
        if after.output.shape[1] != layer.output.shape[1]
    ]
    return [*names, backbone.layers[-1].name] if maps else [backbone.layers[-1].name]


class Tap:
    """The model cut open: pixels → the backbone's feature map at each stage depth (its last
    one, alone, with `depths=False`), and the probabilities, in one pass (inference mode)."""

    def __init__(self, model: keras.Model, depths: bool = True) -> None:
        from service.ml.explain import split_at_backbone

        backbone, self.head = split_at_backbone(model)
        self.layers = stage_layers(backbone) if depths else [backbone.layers[-1].name]
        outputs = [backbone.get_layer(name).output for name in self.layers]
        self.tapped = keras.Model(backbone.input, outputs, name="stages")
        # What comes before the backbone (any augmentation, idle in inference mode; the
        # backbone's preprocess_input).
        self.before = [
            layer
            for layer in model.layers[: model.layers.index(backbone)]
            if not isinstance(layer, keras.layers.InputLayer)
        ]

    def maps(self, pixels: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        """The feature maps, deepest last (the head's input), and the probabilities."""
        x = pixels
        for layer in self.before:
            x = layer(x, training=False)
        maps = self.tapped(x, training=False)
        maps = list(maps) if isinstance(maps, list | tuple) else [maps]
        x = maps[-1]
        for layer in self.head:
            x = layer(x, training=False)
        return maps, tf.cast(x, tf.float32)

    def __call__(self, pixels: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        maps, probabilities = self.maps(pixels)
        return pooled(maps), probabilities


def pooled(maps: list[tf.Tensor]) -> list[tf.Tensor]:
    """Each map averaged over its cells, in float32."""
    return [tf.reduce_mean(tf.cast(m, tf.float32), axis=[1, 2]) for m in maps]


def pooled_features(tap: Tap, pixels: tf.data.Dataset) -> tuple[list[np.ndarray], np.ndarray]:
    """Every batch's pooled features per depth, and probabilities, stacked. Run eagerly:
    tracing the backbone into a graph costs seconds, more than one pass over a job's splits
    costs at the sizes most jobs have."""
    depths: list[list[np.ndarray]] = [[] for _ in tap.layers]
    probabilities: list[np.ndarray] = []
    for batch in pixels:
        pooled, p = tap(batch[0] if isinstance(batch, tuple) else batch)
        for store, features in zip(depths, pooled, strict=True):
            store.append(features.numpy())
        probabilities.append(p.numpy())
    return [np.concatenate(d) for d in depths], np.concatenate(probabilities)


def _gaussian(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, ...]:
    from sklearn.covariance import LedoitWolf

    present = [k for k in range(classes) if np.any(labels == k)]
    means = np.stack([features[labels == k].mean(axis=0) for k in present])
    centred = features - means[np.searchsorted(present, labels)]
    # store_precision=False: scikit-learn's own precision is a pseudo-inverse through a full
    # eigendecomposition, unused here, and two thirds of the fit's time (at 2,048 channels:
    # 1.8 s with it, 0.6 s without; the same whitening to the last bit).
    shrunk = LedoitWolf(store_precision=False).fit(centred.astype(np.float64))
    covariance = shrunk.covariance_
    # Units that never fire (a random or frozen backbone's dead ReLUs) leave the shrunk
    # covariance singular, or zero where a whole depth is dead: a ridge of a millionth of the
    # mean variance (1e-12 where nothing varies) keeps it invertible and changes nothing else.
    ridge = 1e-6 * max(float(np.trace(covariance)) / len(covariance), 1e-12)
    precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    whitening = np.linalg.cholesky((precision + precision.T) / 2)
    offset = means.mean(axis=0)
    return offset, (means - offset) @ whitening, whitening


def distances(features: np.ndarray, depth: Depth) -> np.ndarray:
    """Each row's squared Mahalanobis distance to its nearest class mean, at this depth."""
    whitened_means = depth.whitened_means
    z = (features.astype(np.float64) - depth.offset) @ depth.whitening
    squared = (
        np.sum(z * z, axis=1, keepdims=True)
        - 2 * z @ whitened_means.T
        + np.sum(whitened_means * whitened_means, axis=1)
    )
    return np.maximum(squared.min(axis=1), 0.0)


def fit_detector(
    layers: list[str],
    train: tuple[list[np.ndarray], np.ndarray],
    held_out: list[np.ndarray] | None,
    classes: int,
    unknown_rate: float,
) -> UnknownDetector:
    """Gaussians on the training features (per depth, with their labels), standardised and
    thresholded on the held-out (validation) features, or on the training ones without."""
    train_features, labels = train
    reference = held_out if held_out is not None else train_features
    depths, standardised = [], []
    for layer, fitted_on, scored in zip(layers, train_features, reference, strict=True):
        offset, means, whitening = _gaussian(fitted_on, labels, classes)
        depth = Depth(layer, offset, means, whitening, 0.0, 1.0)
        raw = distances(scored, depth)
        centre, spread = float(raw.mean()), float(raw.std()) or 1.0
        depths.append(Depth(layer, offset, means, whitening, centre, spread))
        standardised.append((raw - centre) / spread)
    scores = np.max(np.stack(standardised), axis=0)
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, QUANTILE_LEVELS))
    threshold = UnknownThresholds(quantiles, unknown_rate, len(scores)).threshold()
    report = {
        "method": METHOD,
        "depths": layers,
        "unknown_rate": unknown_rate,
        "threshold": threshold,
        "flagged_share": float(np.mean(scores > threshold)),
        "images": len(scores),
        "split": "validation" if held_out is not None else "train",
    }
    return UnknownDetector(depths, quantiles, unknown_rate, report)


def scores_of(detector: UnknownDetector, pooled: list[np.ndarray]) -> np.ndarray:
    """The detector's score of pooled features (numpy; the SavedModel computes it in TF)."""
    standardised = [
        (distances(features, d) - d.centre) / d.spread
        for d, features in zip(detector.depths, pooled, strict=True)
    ]
    return np.max(np.stack(standardised), axis=0)


def unknowns_function(
    forward: Forward,
    temperature: Temperature,
    detector: UnknownDetector,
    *,
    with_features: bool = False,
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The `unknowns` signature: pixels → `probabilities` (as `serve` gives them), `ood_score`
    and `unknown` (past the threshold fitted for the training's unknown_rate); with
    `with_features`, the backbone's pooled `features` too (`features_function`'s), from the
    same pass. `forward` is a Tap (`depths=True`) of the model, or the function tracing it."""
    constants = [
        (
            tf.constant(d.offset, tf.float32),
            tf.constant(d.whitening, tf.float32),
            tf.constant(d.whitened_means, tf.float32),
            d.centre,
            d.spread,
        )
        for d in detector.depths
    ]
    threshold = detector.threshold

    def unknowns(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        maps, probabilities = forward(pixels)
        standardised = []
        for pooled_map, (offset, whitening, means, centre, spread) in zip(
            pooled(maps), constants, strict=True
        ):
            z = tf.matmul(pooled_map - offset, whitening)
            squared = (
                tf.reduce_sum(z * z, axis=1, keepdims=True)
                - 2.0 * tf.matmul(z, means, transpose_b=True)
                + tf.reduce_sum(means * means, axis=1)
            )
            nearest = tf.maximum(tf.reduce_min(squared, axis=1), 0.0)
            standardised.append((nearest - centre) / spread)
        score = tf.reduce_max(tf.stack(standardised), axis=0)
        answer = {
            "probabilities": scale_tensor(probabilities, temperature),
            "ood_score": score,
            "unknown": score > threshold,
        }
        if with_features:
            answer["features"] = pooled(maps[-1:])[0]
        return answer

    return unknowns


def features_function(
    forward: Forward, temperature: Temperature
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The `features` signature of a model without an unknown-input score: pixels →
    `features` (the backbone's final feature map, averaged over its cells: what the review
    queue measures how alike images are by) and `probabilities` (as `serve` gives them)."""

    def features(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        maps, probabilities = forward(pixels)
        return {
            "features": pooled(maps[-1:])[0],
            "probabilities": scale_tensor(probabilities, temperature),
        }

    return features
