"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

A network trained to a low training loss is over-confident: of the images it gives 0.99, far
fewer than 99 % are right. One scalar T, fitted on held-out images by minimising their negative
log-likelihood, softens (T > 1) or sharpens (T < 1) every answer alike:

    calibrated = softmax(log p / T)

which is softmax(z / T) for the logits z behind p, so the ranking of the classes, and so the
top-1 answer, never changes. The exported model applies T in its graph (`scale_tensor`); the
fitting and the measures here are NumPy, with no TensorFlow.

Expected calibration error: the images are put in 15 equal-width bins of confidence (the top
probability); ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b|.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A softmax head's temperature, or a sigmoid head's, one per label.
Temperature = float | Sequence[float]

BINS = 15
# Probabilities are clipped here before their logarithm: a float32 softmax underflows to 0
# for a class far behind, and log 0 would poison the sum. Well above float32's smallest
# normal number, so the clipped value itself survives a float32 graph.
EPSILON = 1e-30
# The search interval for log T: T from 1/20 to 20. The NLL is convex in 1/T, so one minimum.
LOG_T_BOUNDS = (-math.log(20.0), math.log(20.0))
# Golden-section steps: the interval shrinks by 0.618 each, so 60 leave about 1e-12 of it.
SEARCH_STEPS = 60
# Less NLL gain than this over T = 1 counts as none.
FLAT = 1e-12


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row, in float64; T == 1 gives p back unchanged."""
    if temperature == 1.0:
        return np.asarray(probabilities)
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0))
    logits = logits / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def scale_tensor(probabilities: Any, temperature: Temperature) -> Any:
    """`scale` as TensorFlow ops, for the exported graph; T == 1 adds nothing to it. A
    sequence is a sigmoid head's temperatures, one per label: sigmoid(logit(p) / T), as
    `service.ml.multilabel.scale`."""
    import tensorflow as tf

    if not isinstance(temperature, float | int):
        if all(t == 1.0 for t in temperature):
            return probabilities
        # float32 holds 1 − 1e-7 apart from 1; 1 − EPSILON would round to 1 and log1p(−1) = −∞.
        p = tf.clip_by_value(tf.cast(probabilities, tf.float32), 1e-7, 1.0 - 1e-7)
        divisor = tf.constant(list(temperature), dtype=tf.float32)
        return tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / divisor)
    if temperature == 1.0:
        return probabilities
    clipped = tf.clip_by_value(tf.cast(probabilities, tf.float32), EPSILON, 1.0)
    return tf.nn.softmax(tf.math.log(clipped) / temperature, axis=-1)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean of −log p(true class), p clipped at EPSILON."""
    rows = np.arange(len(labels))
    true = np.clip(np.asarray(probabilities, dtype=np.float64)[rows, labels], EPSILON, 1.0)
    return float(-np.mean(np.log(true)))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in LOG_T_BOUNDS minimising the NLL of `scale(p, T)`: golden-section search on
    log T (the NLL is convex in 1/T, so unimodal in log T). 1.0 where no T does better."""

    def loss(log_t: float) -> float:
        return negative_log_likelihood(scale(probabilities, math.exp(log_t)), labels)

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = LOG_T_BOUNDS
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(SEARCH_STEPS):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    best = (low + high) / 2.0
    # A flat likelihood (probabilities that barely differ) is no reason to move from T = 1.
    return math.exp(best) if loss(best) < loss(0.0) - FLAT else 1.0


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin of confidence (lower, upper]: its count, mean confidence and
    accuracy (both None for an empty bin)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence is never 0 (it is ≥ 1/K).
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for number in range(bins):
        members = index == number
        count = int(members.sum())
        rows.append(
            {
                "lower": number / bins,
                "upper": (number + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> float:
    """Σ over bins of (share of the images in it) · |accuracy − mean confidence|."""
    total = len(labels)
    return float(
        sum(
            row["count"] / total * abs(row["accuracy"] - row["confidence"])
            for row in reliability_bins(probabilities, labels, bins)
            if row["count"]
        )
    )


@dataclass
class Calibration:
    temperature: Temperature
    # The evaluation's `calibration` block: the fitted T with ECE, NLL and reliability bins
    # before and after, or {"fitted": False, "reason": …}.
    report: dict[str, Any]
    # The calibrated probabilities: what the exported model answers for the same images
    # (None when there were no images).
    probabilities: np.ndarray | None
    # A sigmoid head's threshold per label (`service.ml.multilabel`); None for a softmax.
    thresholds: list[float] | None = None


def not_fitted(probabilities: np.ndarray | None, reason: str) -> Calibration:
    """No temperature (T = 1): the probabilities stay as they are, the report says why."""
    return Calibration(1.0, {"fitted": False, "reason": reason}, probabilities)


def calibrate(probabilities: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit T on these (validation) images and measure the calibration before and after.

    Not when every image is answered right: the likelihood then keeps rising as T → 0
    (sharper is always better), so the search would end at its bound and the model would
    claim near-certainty from a split too easy to tell; it is left as it is, and says why.
    """
    if len(labels) and np.all(np.argmax(probabilities, axis=1) == labels):
        return not_fitted(
            probabilities,
            f"every one of the {len(labels)} validation images is answered right: the "
            "likelihood has no optimum temperature (it keeps rising as T → 0)",
        )
    temperature = fit_temperature(probabilities, labels)
    calibrated = scale(probabilities, temperature)
    report = {
        "fitted": True,
        "temperature": temperature,
        "images": len(labels),
        "ece_before": expected_calibration_error(probabilities, labels),
        "ece_after": expected_calibration_error(calibrated, labels),
        "nll_before": negative_log_likelihood(probabilities, labels),
        "nll_after": negative_log_likelihood(calibrated, labels),
        "bins_before": reliability_bins(probabilities, labels),
        "bins_after": reliability_bins(calibrated, labels),
    }
    return Calibration(temperature, report, calibrated.astype(np.float32))
