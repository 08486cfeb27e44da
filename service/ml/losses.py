"""What a head is fitted to: a softmax over classes (one label per image), or a sigmoid per
label (several labels per image), each with its loss and the metric its history reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from service.ml.multilabel import RANKING_METRIC, ranking_metric


@keras.saving.register_keras_serializable(package="transfer_service")
class LabelBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy per label, averaged over labels, each label's positive term
    weighted: a rare label's few positives count as much as its many negatives, as "balanced"
    class weights do for a softmax. Label smoothing pulls targets towards 0.5."""

    def __init__(
        self,
        positive_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        name: str = "label_binary_crossentropy",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.positive_weights = positive_weights
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        # Keras's own element-wise loss: from the sigmoid's logits where the output keeps
        # them, so a saturated sigmoid still has a gradient (a clipped log has none).
        elements = ops.binary_crossentropy(y_true, y_pred)
        if self.positive_weights is not None:
            # w·y·(−log p) + (1 − y)·(−log(1 − p)) for 0/1 targets, as one factor per element.
            weights = ops.convert_to_tensor(self.positive_weights, dtype=elements.dtype)
            elements = elements * (1.0 + (weights - 1.0) * y_true)
        return ops.mean(elements, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "positive_weights": self.positive_weights,
            "label_smoothing": self.label_smoothing,
        }


@dataclass(frozen=True)
class Objective:
    """How the head is compiled: `multi_label` picks the sigmoid and its loss; its
    `positive_weights` (one per label, from the training split) weight rare labels."""

    multi_label: bool = False
    positive_weights: tuple[float, ...] | None = None

    def loss(self, label_smoothing: float, weighted: bool = True) -> keras.losses.Loss:
        """The training loss; `weighted=False`: the plain one the validation split reports."""
        if not self.multi_label:
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        weights = list(self.positive_weights) if weighted and self.positive_weights else None
        return LabelBinaryCrossentropy(weights, label_smoothing)

    def metrics(self) -> list[keras.metrics.Metric]:
        """`accuracy` in the history: the share of images whose class is right; multi-label,
        the share of (image, label) answers right at 0.5, which early stopping can follow,
        and `mean_average_precision`: how well each label's scores rank its images first,
        averaged over the labels (Keras's area under the precision-recall curve per label),
        what a search ranks multi-label trials by."""
        if self.multi_label:
            return [
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(curve="PR", multi_label=True, name=RANKING_METRIC),
            ]
        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    @property
    def score(self) -> str:
        """The metric a search ranks trials by: accuracy; multi-label, RANKING_METRIC."""
        return ranking_metric(self.multi_label)


SINGLE_LABEL = Objective()


def objective_for(labels: np.ndarray, positive_weights: np.ndarray | None) -> Objective:
    """The objective of training labels: class indices [n], or a multi-hot matrix [n, k]."""
    if labels.ndim == 1:
        return SINGLE_LABEL
    weights = None if positive_weights is None else tuple(float(w) for w in positive_weights)
    return Objective(multi_label=True, positive_weights=weights)
