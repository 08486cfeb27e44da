"""What backbone features say about a dataset's labels, without TensorFlow: the k-fold linear
probe (logistic regression on standardised features) and, from its out-of-fold
probabilities, the images whose given label the features confidently disagree with
(cleanlab's confident learning).

Out-of-fold: every image is scored by a probe that never saw it, so a mislabelled image
cannot vouch for its own label.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.ml.multilabel import mean_average_precision, ranking_metric

MAX_FOLDS = 5
# Logistic regression's inverse regularisation: features of 1,000+ dimensions and a few
# dozen images per class overfit without it.
PROBE_C = 0.1
MAX_ITERATIONS = 1000
# The standardised features are projected on their first principal components before the
# regression (still a linear probe): at 1,280 dimensions L-BFGS took 4–10× longer for the
# same out-of-fold accuracy (MobileNetV2 at 96 px, 1,000 images: 0.68 either way).
PROBE_COMPONENTS = 128
REVIEW_METHOD = (
    "confident learning (cleanlab.filter.find_label_issues, prune_by_noise_rate) on "
    "out-of-fold probabilities of a linear probe (standardised features, PCA to 128, "
    "logistic regression)"
)


@dataclass(frozen=True)
class Probe:
    """Out-of-fold probabilities (row i: image i, columns: class indices) and their score:
    the accuracy; for multi-label labels, the mean over labels of their average precision."""

    probabilities: np.ndarray
    score: float
    folds: int
    multi_label: bool

    @property
    def metric(self) -> str:
        return ranking_metric(self.multi_label)


def class_counts(labels: np.ndarray, classes: int = 0) -> np.ndarray:
    """Images per class index (at least `classes` of them): of class indices [n], or of a
    multi-label 0/1 matrix [n, K] (an image counted under each label it holds)."""
    if labels.ndim == 2:
        return (labels > 0).sum(axis=0)
    return np.bincount(labels, minlength=classes)


def fold_count(labels: np.ndarray, wanted: int = MAX_FOLDS) -> int:
    """As many folds as wanted, but no more than the smallest class has images (each fold
    must see every class), and at least 2; 0 when a class has a single image."""
    counts = class_counts(labels)
    smallest = int(counts[counts > 0].min()) if counts.any() else 0
    return 0 if smallest < 2 else min(wanted, smallest)


def probe(features: np.ndarray, labels: np.ndarray, *, folds: int, seed: int) -> Probe:
    """The k-fold linear probe of `features` for `labels` (class indices 0..K-1, each class
    present, `folds` ≤ the smallest class; or a multi-label 0/1 matrix, one logistic
    regression per label, the folds stratified by each image's rarest label)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from service.ml.split import strata

    smallest_fold = len(labels) - -(-len(labels) // folds)  # the images a fold trains on
    components = min(PROBE_COMPONENTS, features.shape[1], smallest_fold)
    classifier = make_pipeline(
        StandardScaler(),
        PCA(components, random_state=seed),
        LogisticRegression(C=PROBE_C, max_iter=MAX_ITERATIONS),
    )
    multi_label = labels.ndim == 2
    if multi_label:
        classifier = OneVsRestClassifier(classifier)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A multi-label stratum (images whose rarest label is the same) smaller than k only
        # cannot be in every fold: the folds still hold each label's images as evenly as can be.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(splitter.split(features, strata(labels)))
    probabilities = cross_val_predict(
        classifier, _finite(features), labels, cv=splits, method="predict_proba"
    )
    if multi_label:
        return Probe(probabilities, mean_average_precision(probabilities, labels), folds, True)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return Probe(probabilities, accuracy, folds, False)


def _finite(features: np.ndarray) -> np.ndarray:
    # Random-initialised deep backbones can overflow to inf; a probe on them must still run.
    return np.nan_to_num(features.astype(np.float64), nan=0.0, posinf=1e6, neginf=-1e6)


def chance_score(labels: np.ndarray) -> float:
    """The floor a probe must clear: what always answering the largest class scores; for
    multi-label labels, the average precision of scores that know nothing, each label's share
    of the images (averaged over the labels some image holds)."""
    if labels.ndim == 2:
        shares = (labels > 0).mean(axis=0)
        return float(shares[shares > 0].mean())
    return float(np.bincount(labels).max() / len(labels))


def likely_mislabelled(
    probabilities: np.ndarray,
    labels: np.ndarray,
    image_ids: list[int],
    filenames: list[str],
    classes: list[str],
) -> list[dict[str, Any]]:
    """The images confident learning flags, most confident disagreement first: each with its
    given label, the label the probe suggests and the probe's probability of it."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: cleanlab's default forks a process pool, whose children inherit the worker's
    # SIGTERM handler and never exit when the pool ends them (same result either way).
    flagged = find_label_issues(
        labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    issues = []
    for index in flagged:
        suggested = int(np.argmax(probabilities[index]))
        if suggested == labels[index]:  # flagged for low confidence only: no better label
            continue
        issues.append(
            {
                "image_id": int(image_ids[index]),
                "filename": filenames[index],
                "label": classes[int(labels[index])],
                "suggested": classes[suggested],
                "confidence": round(float(probabilities[index, suggested]), 4),
            }
        )
    return issues


def label_review(
    result: Probe,
    labels: np.ndarray,
    image_ids: list[int],
    filenames: list[str],
    classes: list[str],
    *,
    features: str,
    job_id: str,
) -> dict[str, Any]:
    """The dataset's label review as stored with it and shown in its report."""
    from datetime import UTC, datetime

    return {
        "method": REVIEW_METHOD,
        "features": features,
        "job_id": job_id,
        "created_at": datetime.now(UTC).isoformat(),
        "images_checked": len(labels),
        "probe_accuracy": result.score,
        "issues": likely_mislabelled(result.probabilities, labels, image_ids, filenames, classes),
    }
