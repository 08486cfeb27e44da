"""A trained head's weights, kept with its model so that a retrain starts from them (a warm
start): each head layer's weights by layer name, and the classes the classifier's columns
stand for. Stored as an `.npz` (no pickle: loading it runs nothing)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from service.ml.build import Network

CLASSIFIER = "predictions"  # build._head_layers' last layer: one column per class
_CLASSES = "__classes__"


@dataclass(frozen=True)
class HeadWeights:
    classes: list[str]
    layers: dict[str, list[np.ndarray]]


def head_bytes(network: Network, classes: list[str]) -> bytes:
    arrays = {
        f"{layer.name}/{number}": weights
        for layer in network.head_layers
        for number, weights in enumerate(layer.get_weights())
    }
    arrays[_CLASSES] = np.frombuffer(json.dumps(classes).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_head(blob: bytes) -> HeadWeights:
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        classes = json.loads(arrays[_CLASSES].tobytes())
        layers: dict[str, list[np.ndarray]] = {}
        for key in sorted(k for k in arrays.files if k != _CLASSES):
            name, _, number = key.rpartition("/")
            layers.setdefault(name, []).insert(int(number), arrays[key])
    return HeadWeights(classes, layers)


def warm_head(network: Network, head: HeadWeights, classes: list[str]) -> int:
    """Start `network`'s head from `head`: each hidden layer whose shapes agree, and the
    classifier's column of each class both know (matched by name, whatever their order);
    a new class's column keeps its fresh initialisation. Answers the classes carried over
    (0 when the classifier's input changed shape: nothing of it is reused)."""
    carried = 0
    for layer in network.head_layers:
        saved = head.layers.get(layer.name)
        current = layer.get_weights()
        if saved is None or not current:
            continue
        if layer.name == CLASSIFIER:
            carried = _carry_columns(layer, current, saved, head.classes, classes)
        elif [w.shape for w in saved] == [w.shape for w in current]:
            layer.set_weights(saved)
    return carried


def _carry_columns(
    layer: object,
    current: list[np.ndarray],
    saved: list[np.ndarray],
    old: list[str],
    new: list[str],
) -> int:
    kernel, bias = (array.copy() for array in current)
    if saved[0].shape[0] != kernel.shape[0]:
        return 0
    position = {name: index for index, name in enumerate(old)}
    shared = [(j, position[name]) for j, name in enumerate(new) if name in position]
    for j, i in shared:
        kernel[:, j], bias[j] = saved[0][:, i], saved[1][i]
    layer.set_weights([kernel, bias])  # type: ignore[attr-defined]
    return len(shared)
