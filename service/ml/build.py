"""Building the network and applying a freeze spec.

raw pixels (0–255) → the backbone's own preprocess_input → backbone (include_top=False) → head,
so the exported SavedModel takes raw pixels and answers probabilities.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import keras

from service.ml.backbones import get_backbone
from service.spec import FreezeSpec, HeadSpec, JobSpec

# Keras names layers from process-wide counters; builds in the API are serialised so that
# clear_session() keeps the names a client sees stable.
_build_lock = threading.Lock()


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be had; the message names the file and where it goes."""


@keras.saving.register_keras_serializable(package="transfer_service")
class PreprocessInput(keras.layers.Layer):
    """The backbone's own `preprocess_input`, inside the model so it takes raw pixels."""

    def __init__(self, backbone: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess = get_backbone(backbone).preprocess_input

    def call(self, inputs: Any) -> Any:
        return self._preprocess(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "backbone": self.backbone}


@dataclass
class Network:
    model: keras.Model
    backbone: keras.Model


def keras_home() -> Path:
    import os

    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def make_backbone(name: str, input_size: int, weights: str | Path | None) -> keras.Model:
    """`weights`: "imagenet", None, or a path to a `.weights.h5` file of this backbone."""
    backbone = get_backbone(name)
    shape = (input_size, input_size, 3)
    if weights == "imagenet":
        try:
            return backbone.constructor(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as error:
            url = re.search(r"https?://\S+?\.h5", str(error))
            if url is None:
                raise
            filename = url.group(0).rsplit("/", 1)[1]
            raise WeightsUnavailable(
                f"ImageNet weights for {name} are not in the Keras cache and could not be "
                f"downloaded ({error}). Put {filename} (from {url.group(0)}) into "
                f"{keras_home() / 'models'}, or upload it to POST /weights."
            ) from None
    model = backbone.constructor(include_top=False, weights=None, input_shape=shape)
    if weights is not None:
        model.load_weights(str(weights))
    return model


def build_network(spec: JobSpec, num_classes: int, backbone_weights: str | Path | None) -> Network:
    size = spec.input_size
    backbone = make_backbone(spec.backbone.name, size, backbone_weights)
    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = PreprocessInput(spec.backbone.name, name="preprocess_input")(inputs)
    frozen_batchnorm = spec.freeze.batchnorm == "frozen"
    # training=False keeps the backbone's BN layers in inference mode even where its other
    # layers train (the Keras transfer-learning guide); with trainable BN they follow fit().
    x = backbone(x, training=False) if frozen_batchnorm else backbone(x)
    outputs = _head(x, spec.head, num_classes)
    model = keras.Model(inputs, outputs, name="classifier")
    apply_freeze(backbone, spec.freeze)
    return Network(model=model, backbone=backbone)


def _head(x: Any, head: HeadSpec, num_classes: int) -> Any:
    pooling = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[head.pooling]
    x = pooling(name=f"head_{head.pooling}_pool" if head.pooling != "flatten" else "head_flatten")(
        x
    )
    for number, width in enumerate(head.dense, start=1):
        x = keras.layers.Dense(width, activation="relu", name=f"head_dense_{number}")(x)
    if head.dropout > 0:
        x = keras.layers.Dropout(head.dropout, name="head_dropout")(x)
    # float32 output keeps softmax stable under mixed precision.
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)


def trainable_from_index(layer_names: list[str], trainable_from: str | int) -> int:
    """The index of the first trainable backbone layer for mode "partial"."""
    if isinstance(trainable_from, int):
        if -trainable_from > len(layer_names):
            raise ValueError(
                f"freeze.trainable_from {trainable_from} asks for more layers than the "
                f"backbone's {len(layer_names)}"
            )
        return len(layer_names) + trainable_from
    try:
        return layer_names.index(trainable_from)
    except ValueError:
        raise ValueError(
            f"freeze.trainable_from: the backbone has no layer named {trainable_from!r}; "
            "GET /backbones/{name}/layers lists them"
        ) from None


def apply_freeze(backbone: keras.Model, freeze: FreezeSpec) -> None:
    """Set `trainable` on the backbone's layers; call before compile (and recompile after)."""
    if freeze.mode == "backbone":
        backbone.trainable = False
        return
    backbone.trainable = True
    start = 0
    if freeze.mode == "partial":
        assert freeze.trainable_from is not None
        start = trainable_from_index(
            [layer.name for layer in backbone.layers], freeze.trainable_from
        )
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= start
    if freeze.batchnorm == "frozen":
        for layer in backbone._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def backbone_layer_rows(name: str, input_size: int) -> list[dict[str, Any]]:
    """The backbone's own layers, for choosing a freeze point (built with random weights)."""
    return [dict(row) for row in _backbone_layer_rows(name, input_size)]


@lru_cache(maxsize=8)
def _backbone_layer_rows(name: str, input_size: int) -> tuple[dict[str, Any], ...]:
    with _build_lock:
        keras.backend.clear_session()
        backbone = make_backbone(name, input_size, None)
        rows = tuple(
            {
                "index": index,
                "name": layer.name,
                "class_name": type(layer).__name__,
                "params": int(sum(_size(weight) for weight in layer.weights)),
            }
            for index, layer in enumerate(backbone.layers)
        )
        del backbone
        keras.backend.clear_session()
        return rows


def backbone_layer_names(name: str, input_size: int) -> list[str]:
    return [row["name"] for row in _backbone_layer_rows(name, input_size)]


def _size(weight: Any) -> int:
    count = 1
    for dim in weight.shape:
        count *= int(dim)
    return count


def describe_layers(model: keras.Model) -> list[dict[str, Any]]:
    """Every layer, nested models flattened, with its effective trainable status.

    A layer is trainable only if it and every model around it are; its parameters count as
    trainable only then. The totals over the rows equal Keras's own counts.
    """
    rows: list[dict[str, Any]] = []

    def walk(container: keras.Model, prefix: str, parent_trainable: bool) -> None:
        for layer in container.layers:
            effective = parent_trainable and layer.trainable
            path = f"{prefix}{layer.name}"
            if isinstance(layer, keras.Model):
                walk(layer, f"{path}/", effective)
                continue
            total = sum(_size(weight) for weight in layer.weights)
            trainable = sum(_size(weight) for weight in layer.trainable_weights) if effective else 0
            rows.append(
                {
                    "index": len(rows),
                    "name": layer.name,
                    "path": path,
                    "class_name": type(layer).__name__,
                    "trainable": effective,
                    "trainable_params": int(trainable),
                    "non_trainable_params": int(total - trainable),
                    "output_shape": _output_shape(layer),
                }
            )

    walk(model, "", model.trainable)
    return rows


def _output_shape(layer: keras.layers.Layer) -> list[int | None] | None:
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(output, list | tuple):
        output = output[0]
    return [None if dim is None else int(dim) for dim in output.shape]


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable), as `model.summary()` reports them."""
    trainable = sum(_size(weight) for weight in model.trainable_weights)
    non_trainable = sum(_size(weight) for weight in model.non_trainable_weights)
    return int(trainable), int(non_trainable)


def preview_layers(spec: JobSpec, num_classes: int) -> list[dict[str, Any]]:
    """The layer table the trained model would have, built without weights or training."""
    with _build_lock:
        keras.backend.clear_session()
        network = build_network(spec, num_classes, None)
        rows = describe_layers(network.model)
        del network
        keras.backend.clear_session()
        return rows
