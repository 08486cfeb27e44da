"""The final model on the validation split: its metrics, calibration and report, and its
unknown-input score, from one pass over the split (the model as stored, after early
stopping's restore and the BN fix)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from service.ml.calibrate import Calibration, calibrate, not_fitted
from service.ml.evaluate import evaluate
from service.ml.multilabel import fit_calibration
from service.ml.pipeline import Splits
from service.ml.unknowns import MAX_FIT_IMAGES, Tap, UnknownDetector, fit_detector, pooled_features
from service.training.spec import JobSpec

Scored = tuple[dict[str, float], dict[str, Any] | None, Calibration, UnknownDetector | None]


def final_metrics(
    model: keras.Model,
    splits: Splits,
    history: list[dict[str, float]],
    spec: JobSpec,
    classes: list[str],
    *,
    trial: bool = False,
) -> Scored:
    """The metrics, report and calibration, and the unknown-input score. One pass gives both
    the probabilities the report scores and the features the score's threshold is fitted on.

    `trial` (a search's fine-tuning trial, never stored): the metrics alone, measured as for
    a stored model; no calibration, report or unknown-input score, which on a trial's few
    images cost seconds more than its fit."""
    tap = Tap(model)
    features, probabilities = (
        pooled_features(tap, splits.validation_pixels)
        if splits.validation_pixels is not None
        else (None, None)
    )
    metrics = {
        key: value for key, value in history[-1].items() if key not in ("epoch", "stage", "seconds")
    }
    if probabilities is not None:
        # Keras's loss of the uncalibrated probabilities, unweighted: comparable with the
        # history's `val_loss`; the calibration block has the loss before and after.
        loss = splits.objective.loss(spec.training.label_smoothing, weighted=False)
        metrics["val_loss"] = float(loss(splits.validation.targets[0], probabilities))
    if trial:
        return (
            _trial_metrics(probabilities, splits, metrics),
            None,
            not_fitted(None, "a trial"),
            None,
        )
    unknowns = fit_unknowns(tap, splits, spec, features)
    if probabilities is None:
        reason = "no validation split to fit a temperature on"
        return metrics, None, not_fitted(None, reason), unknowns
    scoring = _label_metrics if splits.objective.multi_label else _class_metrics
    evaluation, calibration = scoring(probabilities, splits, metrics, spec, classes)
    evaluation["unknowns"] = unknowns.report
    return metrics, evaluation, calibration, unknowns


def _trial_metrics(
    probabilities: np.ndarray | None, splits: Splits, metrics: dict[str, float]
) -> dict[str, float]:
    """A softmax's `val_accuracy` measured again on the final model, as for a stored one:
    a temperature never changes it (it keeps each image's ranking)."""
    if probabilities is not None and not splits.objective.multi_label:
        right = np.argmax(probabilities, axis=1) == splits.validation.labels
        metrics["val_accuracy"] = float(np.mean(right))
    return metrics


def fit_unknowns(
    tap: Tap, splits: Splits, spec: JobSpec, held_out: list[np.ndarray] | None
) -> UnknownDetector:
    """The unknown-input score on the final model's features: its Gaussians fitted on (a
    sample of) the training split, its threshold on the validation split's (`held_out`)."""
    train = splits.train.sample(MAX_FIT_IMAGES, spec.training.seed)
    features, _ = pooled_features(tap, train.pixels(spec))
    groups, count = _groups(train.labels)
    return fit_detector(tap.layers, (features, groups), held_out, count, spec.training.unknown_rate)


def _groups(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """What the score's Gaussians group images by, numbered, and how many groups: a
    single-label image's class; a multi-label image's whole label set (no label included),
    as an image of two labels is neither's typical image."""
    if labels.ndim == 1:
        return labels, int(labels.max()) + 1 if len(labels) else 0
    sets, index = np.unique(labels > 0, axis=0, return_inverse=True)
    return index.reshape(-1), len(sets)


def _class_metrics(
    probabilities: np.ndarray,
    splits: Splits,
    metrics: dict[str, float],
    spec: JobSpec,
    classes: list[str],
) -> tuple[dict[str, Any], Calibration]:
    """A softmax's: the temperature fitted on the validation split's `probabilities` (unless
    `training.calibrate` is off), the per-class report of the calibrated probabilities, which
    the calibration carries: those the exported model gives (ranked as before, so the report
    is the same), and `val_accuracy` measured again into `metrics`."""
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
    return evaluation, calibration


def _label_metrics(
    probabilities: np.ndarray,
    splits: Splits,
    metrics: dict[str, float],
    spec: JobSpec,
    classes: list[str],
) -> tuple[dict[str, Any], Calibration]:
    """A sigmoid head's: a temperature per label (unless `training.calibrate` is off), then a
    threshold per label on the calibrated scores (max F1, or `training.label_precision`), then
    the multi-label report at those thresholds (`service.ml.multilabel`). `val_accuracy` stays
    the history's per-label accuracy at 0.5; the set metrics are `val_micro_f1`,
    `val_macro_f1` and `val_exact_match` into `metrics`."""
    fitted = fit_calibration(
        probabilities,
        splits.validation.labels,
        classes,
        temperatures=spec.training.calibrate,
        precision=spec.training.label_precision,
    )
    evaluation = {**fitted.evaluation, "calibration": fitted.report}
    for name in ("micro_f1", "macro_f1", "exact_match"):
        if evaluation[name] is not None:
            metrics[f"val_{name}"] = evaluation[name]
    calibration = Calibration(
        fitted.temperatures, fitted.report, fitted.probabilities, fitted.thresholds
    )
    return evaluation, calibration
