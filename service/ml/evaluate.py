"""Scoring a model's probabilities on the validation split: per-class precision, recall, F1,
the confusion matrix, and each image's scores for the evaluation's samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Decimals kept of each probability in the evaluation's samples: every validation image's
# scores are stored with the model, so their size counts; four are more than a person reads.
SAMPLE_SCORE_DECIMALS = 4


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
