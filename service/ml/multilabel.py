"""Multi-label scoring: a sigmoid per label, several labels per image, NumPy with no TensorFlow.

Each label is its own yes/no question, so what the single-label modules do once for the whole
softmax (calibrate.py, evaluate.py) is done here once per label:

- a temperature per label (temperature scaling, Guo et al. 2017): sigmoid(z / T_j) keeps the
  order of label j's scores and so changes no ranking, only how far to trust them;
- a threshold per label: a softmax always answers its argmax, a sigmoid head answers every label
  whose score reaches that label's threshold, and 0.5 is only right for a calibrated label whose
  errors both cost the same;
- the evaluation: per-label precision, recall, F1 and average precision, the micro and macro
  averages, the share of images whose whole label set is right, and which errors come together.

Inputs everywhere: `targets` is a multi-hot array [n, k] (0/1), `probabilities` the sigmoid
outputs and `logits` their logits, both [n, k], and `labels` the k label names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The same bins, search interval for log T (T from 1/20 to 20) and "no gain" margin as the
# single-label temperature, so a label's ECE means what the softmax's does.
from service.ml.calibrate import BINS, FLAT, LOG_T_BOUNDS

# Probabilities are clipped to [EPSILON, 1 − EPSILON] before their logit. A float32 sigmoid
# reaches exactly 1.0 by z ≈ 17 (its spacing below 1 is 6e-8), so it says nothing finer than
# this; the clipped logit stays finite (±16.1) instead of poisoning a loss with inf.
EPSILON = 1e-7
# What a label keeps when its validation split cannot choose: the sigmoid's own decision point.
DEFAULT_THRESHOLD = 0.5
# Error lists per label in the evaluation: enough to look at, bounded for large splits.
LISTED_ERRORS = 20
# A rare label's positive weight: below 1 it would down-weigh a common label's positives,
# above 100 a handful of positives would outweigh every negative of the batch.
POSITIVE_WEIGHT_BOUNDS = (1.0, 100.0)
# What a multi-label model's trials are ranked by (a search's `metric`), in the history as
# `val_mean_average_precision`: threshold-free, where per-label accuracy at 0.5 is mostly
# that of the labels an image does not hold.
RANKING_METRIC = "mean_average_precision"


def ranking_metric(multi_label: bool) -> str:
    """What a probe or a search scores a model by: accuracy, or RANKING_METRIC."""
    return RANKING_METRIC if multi_label else "accuracy"


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the labels some image holds of their average precision: threshold-free,
    so scores that rank a rare label's images first count as knowing it."""
    from sklearn.metrics import average_precision_score

    held = (labels > 0).any(axis=0)
    return float(average_precision_score(labels[:, held], scores[:, held], average="macro"))


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """log(p / (1 − p)) in float64, p clipped at EPSILON: recovers the logits a model stored as
    probabilities, finite even where a float32 sigmoid saturated at 0 or 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(p) - np.log1p(-p)


def scale(logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """sigmoid(z / T), T per label (column): the calibrated probabilities. scipy's expit, as
    1 / (1 + exp(−x)) overflows (and warns) for large negative x."""
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float64) / np.asarray(temperatures, dtype=np.float64))


def _binary_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean BCE of sigmoid(z) written in z: softplus(z) − y·z, exact for any z (no clipping of
    a probability that rounded to 0 or 1)."""
    return float(np.mean(np.logaddexp(0.0, logits) - targets * logits))


def _why_no_temperature(logits: np.ndarray, targets: np.ndarray) -> str | None:
    """Why one label's BCE has no optimum temperature to fit, or None when it has one."""
    positives = int(targets.sum())
    if positives in (0, len(targets)):
        return f"every validation image is {'positive' if positives else 'negative'}"
    if np.all((logits > 0) == (targets == 1)):
        # As with calibrate's "every image answered right": the BCE keeps falling as T → 0,
        # so the search would end at its bound, claiming near-certainty from too easy a split.
        return "every validation image is on the right side of 0.5: no optimum (T → 0)"
    return None


def temperature_reasons(logits: np.ndarray, targets: np.ndarray) -> list[str | None]:
    """Per label, why `fit_temperatures` keeps T = 1 (None where it fits one): for the
    evaluation's calibration block, which says why a label was left as it was."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    return [_why_no_temperature(logits[:, j], targets[:, j]) for j in range(targets.shape[1])]


def fit_temperatures(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the T in LOG_T_BOUNDS minimising the BCE of sigmoid(z / T) on these
    (validation) images: bounded Brent on log T (the BCE is convex in 1/T, so unimodal in
    log T). T = 1 where there is no optimum (`temperature_reasons`) or no gain over T = 1."""
    from scipy.optimize import minimize_scalar

    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    temperatures = np.ones(targets.shape[1])
    for j, reason in enumerate(temperature_reasons(logits, targets)):
        if reason is not None:
            continue
        z, y = logits[:, j], targets[:, j]

        def loss(log_t: float, z: np.ndarray = z, y: np.ndarray = y) -> float:
            return _binary_cross_entropy(z / math.exp(log_t), y)

        best = minimize_scalar(
            loss, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-8}
        ).x
        # A flat loss (scores that barely differ) is no reason to move from T = 1.
        if loss(best) < loss(0.0) - FLAT:
            temperatures[j] = math.exp(best)
    return temperatures


def expected_calibration_error(
    probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS
) -> np.ndarray:
    """Per label: Σ over equal-width bins of its probability of (share of the images in the
    bin) · |mean probability − share of positives|. Each label's own probability is binned,
    not a top-class confidence: a sigmoid's 0.1 is a claim as much as its 0.9."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    images, count = probabilities.shape
    if images == 0:
        return np.zeros(count)
    # Bin b holds (b/bins, (b+1)/bins], as in calibrate; a probability of exactly 0 joins bin 0.
    index = np.clip(np.ceil(probabilities * bins).astype(int) - 1, 0, bins - 1)
    errors = np.empty(count)
    for j in range(count):
        members = np.bincount(index[:, j], minlength=bins)
        scores = np.bincount(index[:, j], weights=probabilities[:, j], minlength=bins)
        positives = np.bincount(index[:, j], weights=targets[:, j], minlength=bins)
        # |Σ p − Σ y| over the bin is n_b · |mean p − frequency|; / images gives the share.
        errors[j] = np.abs(scores - positives)[members > 0].sum() / images
    return errors


# eq=False: a generated __eq__ would compare the arrays, which has no single truth value.
@dataclass(frozen=True, eq=False)
class Thresholds:
    """One threshold per label (`score >= value` answers the label), with per label the reason
    it is not what was asked for (None where it is): for the evaluation to show."""

    values: np.ndarray
    reasons: tuple[str | None, ...]

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)


def _threshold_counts(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate thresholds (each distinct score, and 0.5) with the true and false
    positives that `score >= threshold` gives at each."""
    candidates = np.union1d(scores, [DEFAULT_THRESHOLD])
    counted = [np.sort(scores[positive]), np.sort(scores[~positive])]
    tp, fp = (len(side) - np.searchsorted(side, candidates, side="left") for side in counted)
    return candidates, tp, fp


def _max_f1_index(candidates: np.ndarray, tp: np.ndarray, fp: np.ndarray, positives: int) -> int:
    """The candidate of highest F1, the one nearest 0.5 among equals: 0.5 itself wins every tie
    it is in, so a threshold moves from it only for a real gain on the validation split."""
    f1 = 2 * tp / (tp + fp + positives)
    tied = np.flatnonzero(f1 == f1.max())
    return int(tied[np.argmin(np.abs(candidates[tied] - DEFAULT_THRESHOLD))])


def _in_the_gap(candidates: np.ndarray, index: int, scores: np.ndarray) -> float:
    """The threshold that answers what candidate `index` answers, midway between it and the
    next lower score: a threshold on a validation image's own score would flip that image on
    the least difference of arithmetic (an export's runtime, another batch size), and the
    middle of the gap is as far from both sides as the split allows. 0.5 stays where it is
    the candidate and no image scores it."""
    value = float(candidates[index])
    if value == DEFAULT_THRESHOLD and not np.any(scores == value):
        return value
    lower = float(candidates[index - 1]) if index > 0 else 0.0
    return (lower + value) / 2


def _label_threshold(
    scores: np.ndarray, positive: np.ndarray, precision: float | None
) -> tuple[float, str | None]:
    """One label's threshold and the reason it is not what was asked for (None when it is)."""
    positives = int(positive.sum())
    if positives == 0:
        return DEFAULT_THRESHOLD, "no positive validation image: kept 0.5"
    candidates, tp, fp = _threshold_counts(scores, positive)
    max_f1 = _in_the_gap(candidates, _max_f1_index(candidates, tp, fp, positives), scores)
    if precision is None:
        return max_f1, None
    predicted = tp + fp
    reached = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    enough = np.flatnonzero(reached >= precision)
    if len(enough):
        # The lowest threshold reaching the precision answers the label most often: best recall.
        return _in_the_gap(candidates, int(enough[0]), scores), None
    return max_f1, (
        f"no threshold reaches precision {precision:g} on the validation split (at most "
        f"{reached.max():.3g}): the max-F1 threshold"
    )


def fit_thresholds(
    probabilities: np.ndarray, targets: np.ndarray, precision: float | None = None
) -> Thresholds:
    """Per label, the threshold maximising its F1 on these (validation) images or, given a
    `precision`, the lowest one whose precision reaches it (the max-F1 one where none does,
    with the reason). Candidates are the distinct scores and 0.5, as no other threshold
    changes which images are answered; each is then moved to the middle of the gap below it
    (`_in_the_gap`); a label without positives keeps 0.5."""
    if precision is not None and not 0.0 < precision <= 1.0:
        raise ValueError(f"precision must be in (0, 1], not {precision:g}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    positive = np.asarray(targets).astype(bool)
    fitted = [
        _label_threshold(probabilities[:, j], positive[:, j], precision)
        for j in range(positive.shape[1])
    ]
    return Thresholds(
        np.array([value for value, _ in fitted]), tuple(reason for _, reason in fitted)
    )


def positive_weights(targets: np.ndarray) -> np.ndarray:
    """Per label, negatives / positives, clipped to POSITIVE_WEIGHT_BOUNDS; 1 without positives.

    The multi-label side of the single-label "balanced" class weights (n / (K · count), which
    give every class the same total weight): each label is a two-class problem, and weighing
    its positive BCE term by negatives / positives (`pos_weight` of
    tf.nn.weighted_cross_entropy_with_logits) gives its positives and negatives the same total
    weight, so a rare label is not learnt as "always no". Common labels keep plain BCE (≥ 1).
    """
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    return np.clip(ratio, *POSITIVE_WEIGHT_BOUNDS)


def _most_confident(
    rows: np.ndarray, scores: np.ndarray, descending: bool, names: Sequence[str] | None
) -> list[Any]:
    """Up to LISTED_ERRORS of these rows, the most confident error first: a false positive's
    highest score, a false negative's lowest; as filenames where given, else indices."""
    order = np.argsort(-scores[rows] if descending else scores[rows], kind="stable")
    chosen = rows[order][:LISTED_ERRORS]
    return [names[i] for i in chosen] if names is not None else [int(i) for i in chosen]


def error_cooccurrence(
    targets: np.ndarray, predicted: np.ndarray, labels: list[str]
) -> list[dict[str, Any]]:
    """For each ordered pair (a, b), the images with a false positive on a and a false negative
    on b: the model mistaking b for a (two similar labels) shows up here, where per-label
    scores only show two labels each doing badly. Non-zero pairs, most frequent first."""
    truth, guess = np.asarray(targets).astype(bool), np.asarray(predicted).astype(bool)
    false_positive = (guess & ~truth).astype(np.int64)
    false_negative = (~guess & truth).astype(np.int64)
    counts = false_positive.T @ false_negative  # [a, b]; its diagonal is 0 (y is 0 or 1)
    pairs = np.argwhere(counts > 0)
    pairs = pairs[np.argsort(-counts[pairs[:, 0], pairs[:, 1]], kind="stable")]
    return [
        {"false_positive": labels[a], "false_negative": labels[b], "count": int(counts[a, b])}
        for a, b in pairs
    ]


def _per_label(
    truth: np.ndarray,
    probabilities: np.ndarray,
    predicted: np.ndarray,
    thresholds: np.ndarray,
    labels: list[str],
    filenames: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """The evaluation's `per_label` rows, with each label's most confident errors."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, average=None, zero_division=0
    )
    rows = []
    for j, label in enumerate(labels):
        scores, has_positives = probabilities[:, j], bool(truth[:, j].any())
        false_positives = np.flatnonzero(predicted[:, j] & ~truth[:, j])
        false_negatives = np.flatnonzero(~predicted[:, j] & truth[:, j])
        rows.append(
            {
                "label": label,
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
                # Undefined without a positive: sklearn would warn and answer 0 (or nan).
                "average_precision": (
                    float(average_precision_score(truth[:, j], scores)) if has_positives else None
                ),
                "threshold": float(thresholds[j]),
                "false_positives": _most_confident(false_positives, scores, True, filenames),
                "false_negatives": _most_confident(false_negatives, scores, False, filenames),
            }
        )
    return rows


def evaluate(
    targets: np.ndarray,
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    labels: list[str],
    filenames: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The multi-label evaluation, JSON-ready. Macro F1 and mean AP average the labels with a
    positive only: a label absent from the split has no recall to measure, and would count as
    F1 0 however right the model is (its false positives still count in micro F1)."""
    from sklearn.metrics import f1_score

    truth = np.asarray(targets).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (truth.shape[1],))
    if filenames is not None and len(filenames) != len(truth):
        raise ValueError(f"{len(filenames)} filenames for {len(truth)} images")
    predicted = probabilities >= thresholds
    per_label = _per_label(truth, probabilities, predicted, thresholds, labels, filenames)
    present = [j for j in range(len(labels)) if truth[:, j].any()]
    precisions = [per_label[j]["average_precision"] for j in present]
    return {
        "images": len(truth),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": (
            float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0))
            if present
            else None
        ),
        "mean_average_precision": float(np.mean(precisions)) if present else None,
        "exact_match": float(np.mean(np.all(predicted == truth, axis=1))),
        "no_label_images": int(np.sum(~truth.any(axis=1))),
        "per_label": per_label,
        "error_cooccurrence": error_cooccurrence(truth, predicted, labels),
    }


@dataclass(frozen=True, eq=False)
class LabelCalibration:
    """What training fits on the validation split for a sigmoid head, and what it scores."""

    temperatures: list[float]  # folded into the stored model (convert.inference_model)
    thresholds: list[float]  # stored with it: `/predict` answers the labels reaching theirs
    probabilities: np.ndarray  # calibrated: what the stored model answers for these images
    report: dict[str, Any]  # the evaluation's `calibration` block
    evaluation: dict[str, Any]  # `evaluate` of the calibrated probabilities


def fit_calibration(
    probabilities: np.ndarray,
    targets: np.ndarray,
    labels: list[str],
    *,
    temperatures: bool = True,
    precision: float | None = None,
    filenames: Sequence[str] | None = None,
) -> LabelCalibration:
    """Temperatures first (unless `temperatures` is off), then thresholds on the calibrated
    scores, then the evaluation at those thresholds: the stored model's own behaviour."""
    logits = logits_of(probabilities)
    fitted = fit_temperatures(logits, targets) if temperatures else np.ones(targets.shape[1])
    calibrated = scale(logits, fitted)
    thresholds = fit_thresholds(calibrated, targets, precision)
    report = {
        "fitted": temperatures,
        "temperatures": [float(t) for t in fitted],
        "reasons": temperature_reasons(logits, targets) if temperatures else None,
        "ece_before": [float(e) for e in expected_calibration_error(probabilities, targets)],
        "ece_after": [float(e) for e in expected_calibration_error(calibrated, targets)],
        "nll_before": _binary_cross_entropy(logits, targets),
        "nll_after": _binary_cross_entropy(logits / fitted, targets),
        "threshold_reasons": list(thresholds.reasons),
    }
    evaluation = evaluate(targets, calibrated, thresholds.values, labels, filenames)
    return LabelCalibration(
        temperatures=report["temperatures"],
        thresholds=[float(t) for t in thresholds.values],
        probabilities=calibrated.astype(np.float32),
        report=report,
        evaluation=evaluation,
    )
