"""What fine-tuning changed: each backbone layer's weights against those the job started from.

For a layer with weights, `weight_change` is ‖W − W₀‖ / ‖W₀‖, the Frobenius norm taken over
all the variables the layer holds (kernel, bias, depthwise kernel, BatchNormalization gamma
and beta, …), trained in this job or not, except a BatchNormalization layer's moving mean and
variance. Those are not learnt by gradient but averaged from the data (and recomputed after
each stage), so they move for other reasons and get a figure each: `moving_mean_change` and
`moving_variance_change`, the same relative norm.

W₀ is the backbone as built from its source weights (ImageNet, a weights file, a stored
model), before any training. Layers without source weights (a backbone from random
initialisation, every head layer) get no figure: their change from a random draw says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from service.ml.build import leaf_layers

# The keys each layer row gains; they are the model_layers columns that store them.
DRIFT_KEYS = ("weight_change", "moving_mean_change", "moving_variance_change")


@dataclass(frozen=True)
class LayerWeights:
    """Copies of one layer's variables: the learnt ones, and BN's moving statistics apart."""

    params: list[np.ndarray]
    moving_mean: np.ndarray | None = None
    moving_variance: np.ndarray | None = None


# Layer path (as the layer table names it) → its weights at one moment.
Snapshot = dict[str, LayerWeights]


def snapshot(backbone: keras.Model) -> Snapshot:
    """Copies of the backbone's weights now, by the paths the classifier's layer table uses
    (the backbone is a layer of the classifier, so its name prefixes them)."""
    return {
        path: _layer_weights(layer)
        for path, layer, _ in leaf_layers(backbone, f"{backbone.name}/")
        if layer.weights
    }


def _copy(variable: Any) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(variable), copy=True)


def _layer_weights(layer: keras.layers.Layer) -> LayerWeights:
    if not isinstance(layer, keras.layers.BatchNormalization):
        return LayerWeights([_copy(weight) for weight in layer.weights])
    # Identity, not the variables' `trainable` flag: freezing a layer clears that flag too.
    statistics = (layer.moving_mean, layer.moving_variance)
    params = [_copy(w) for w in layer.weights if not any(w is s for s in statistics)]
    return LayerWeights(params, _copy(layer.moving_mean), _copy(layer.moving_variance))


def relative_change(before: list[np.ndarray], after: list[np.ndarray]) -> float | None:
    """‖after − before‖ / ‖before‖ over all the arrays together, in float64.

    Exactly 0.0 when nothing moved; None when there is nothing to compare, or when `before`
    is all zeros and something moved (no relative figure exists then).
    """
    if not before:
        return None
    moved = sum(
        float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        for a, b in zip(after, before, strict=True)
    )
    if moved == 0.0:
        return 0.0
    size = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in before)
    return float(np.sqrt(moved / size)) if size > 0.0 else None


def _optional(before: np.ndarray | None, after: np.ndarray | None) -> float | None:
    if before is None or after is None:
        return None
    return relative_change([before], [after])


def compare(origin: LayerWeights, now: LayerWeights) -> dict[str, float | None]:
    """One layer's figures, keyed as DRIFT_KEYS."""
    return {
        "weight_change": relative_change(origin.params, now.params),
        "moving_mean_change": _optional(origin.moving_mean, now.moving_mean),
        "moving_variance_change": _optional(origin.moving_variance, now.moving_variance),
    }


def with_drift(
    rows: list[dict[str, Any]], backbone: keras.Model, origin: Snapshot | None
) -> list[dict[str, Any]]:
    """The layer table's rows, each with DRIFT_KEYS: the backbone's weights now against
    `origin` (None: the backbone started from random weights, so every figure is None)."""
    now = snapshot(backbone) if origin is not None else {}
    figures = {path: compare(start, now[path]) for path, start in (origin or {}).items()}
    empty = dict.fromkeys(DRIFT_KEYS)
    return [{**row, **figures.get(row["path"], empty)} for row in rows]
