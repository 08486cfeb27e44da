"""Building the network and applying a freeze spec.

raw pixels (0–255) → the backbone's own preprocess_input → backbone (include_top=False) → head,
so the exported SavedModel takes raw pixels and answers probabilities.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import keras

from service.backbones import get_backbone
from service.training.spec import AugmentSpec, FreezeSpec, HeadSpec, JobSpec

# Keras names layers from process-wide counters; builds in the API are serialised so that
# clear_session() keeps the names a client sees stable.
_build_lock = threading.Lock()


@contextmanager
def isolated_build() -> Iterator[None]:
    """For the API process: one build at a time, from a fresh Keras session, cleaned after."""
    with _build_lock:
        keras.backend.clear_session()
        try:
            yield
        finally:
            keras.backend.clear_session()


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
    # Everything after the backbone, in order; the first is the (weightless) pooling layer.
    head_layers: list[keras.layers.Layer]


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


def build_network(
    spec: JobSpec,
    num_classes: int,
    backbone_weights: str | Path | None,
    multi_label: bool = False,
) -> Network:
    """The whole classifier, frozen as the first stage says (later stages re-freeze it); its
    output a softmax over the classes, or with `multi_label` a sigmoid per label."""
    size = spec.input_size
    backbone = make_backbone(spec.backbone.name, size, backbone_weights)
    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    x = inputs
    if spec.training.augmenting:
        assert spec.training.augment is not None
        x = augmentation(spec.training.augment, spec.training.seed)(x)
    x = PreprocessInput(spec.backbone.name, name="preprocess_input")(x)
    # training=False keeps the backbone's BN layers in inference mode even where its other
    # layers train (the Keras transfer-learning guide). When some stage trains BN layers the
    # call follows fit(), and a frozen BN layer stays in inference mode by Keras 3's own rule.
    x = backbone(x) if spec.trains_batchnorm else backbone(x, training=False)
    head_layers = _head_layers(spec.head, num_classes, multi_label)
    for layer in head_layers:
        x = layer(x)
    model = keras.Model(inputs, x, name="classifier")
    apply_freeze(backbone, spec.freeze)
    return Network(model=model, backbone=backbone, head_layers=head_layers)


def augmentation(augment: AugmentSpec, seed: int) -> keras.Sequential:
    """Random transforms of raw pixels; Keras runs them in training only, so the exported
    model is unchanged at inference."""
    layers: list[keras.layers.Layer] = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip(augment.flip, seed=seed, name="random_flip"))
    if augment.rotation:
        layers.append(
            keras.layers.RandomRotation(
                augment.rotation, fill_mode="reflect", seed=seed, name="random_rotation"
            )
        )
    if augment.zoom:
        layers.append(
            keras.layers.RandomZoom(
                augment.zoom, fill_mode="reflect", seed=seed, name="random_zoom"
            )
        )
    if augment.contrast:
        layers.append(
            keras.layers.RandomContrast(
                augment.contrast, value_range=(0, 255), seed=seed, name="random_contrast"
            )
        )
    return keras.Sequential(layers, name="augment")


def _head_layers(head: HeadSpec, num_classes: int, multi_label: bool) -> list[keras.layers.Layer]:
    pooling = {
        "avg": lambda: keras.layers.GlobalAveragePooling2D(name="head_avg_pool"),
        "max": lambda: keras.layers.GlobalMaxPooling2D(name="head_max_pool"),
        "flatten": lambda: keras.layers.Flatten(name="head_flatten"),
    }[head.pooling]
    layers = [pooling()]
    penalty = keras.regularizers.L2(head.l2) if head.l2 > 0 else None
    for number, width in enumerate(head.dense, start=1):
        layers.append(
            keras.layers.Dense(
                width, activation="relu", kernel_regularizer=penalty, name=f"head_dense_{number}"
            )
        )
    if head.dropout > 0:
        layers.append(keras.layers.Dropout(head.dropout, name="head_dropout"))
    # The served probabilities are float32 whatever dtype policy the layers before run in.
    layers.append(
        keras.layers.Dense(
            num_classes,
            activation="sigmoid" if multi_label else "softmax",
            kernel_regularizer=penalty,
            dtype="float32",
            name="predictions",
        )
    )
    return layers


def feature_head(
    head: HeadSpec, features: int, num_classes: int, multi_label: bool = False
) -> keras.Model:
    """The head alone, after its pooling, on pooled features of width `features`: the model a
    cached stage trains (`FeatureExtractor.head`), standing alone for a search's head trials."""
    return on_features(_head_layers(head, num_classes, multi_label)[1:], (features,))


def on_features(layers: list[keras.layers.Layer], shape: tuple[int, ...]) -> keras.Model:
    """A head's layers after its pooling, as a model of their own on features of `shape`."""
    inputs = keras.Input(shape, name="features")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


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
    with isolated_build():
        backbone = make_backbone(name, input_size, None)
        return tuple(
            {
                "index": index,
                "name": layer.name,
                "class_name": type(layer).__name__,
                "params": int(sum(_size(weight) for weight in layer.weights)),
            }
            for index, layer in enumerate(backbone.layers)
        )


def backbone_layer_names(name: str, input_size: int) -> list[str]:
    return [row["name"] for row in _backbone_layer_rows(name, input_size)]


def _size(weight: Any) -> int:
    count = 1
    for dim in weight.shape:
        count *= int(dim)
    return count


def leaf_layers(
    model: keras.Model, prefix: str = ""
) -> Iterator[tuple[str, keras.layers.Layer, bool]]:
    """(path, layer, effective trainable) of every layer, nested models flattened into paths
    like "mobilenetv2_1.00_96/block_16_project"; the one naming of layers the tables share."""

    def walk(
        container: keras.Model, prefix: str, parent_trainable: bool
    ) -> Iterator[tuple[str, keras.layers.Layer, bool]]:
        for layer in container.layers:
            effective = parent_trainable and layer.trainable
            path = f"{prefix}{layer.name}"
            if isinstance(layer, keras.Model):
                yield from walk(layer, f"{path}/", effective)
            else:
                yield path, layer, effective

    return walk(model, prefix, model.trainable)


def describe_layers(model: keras.Model) -> list[dict[str, Any]]:
    """Every layer, nested models flattened, with its effective trainable status.

    A layer is trainable only if it and every model around it are; its parameters count as
    trainable only then. The totals over the rows equal Keras's own counts.
    """
    rows: list[dict[str, Any]] = []
    for path, layer, effective in leaf_layers(model):
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


def preview_layers(spec: JobSpec, num_classes: int) -> list[list[dict[str, Any]]]:
    """The layer table of every stage, built without weights or training; the last one is
    what the trained model will show."""
    with isolated_build():
        network = build_network(spec, num_classes, None)
        tables = []
        for stage in spec.stages:
            apply_freeze(network.backbone, stage.freeze)
            tables.append(describe_layers(network.model))
        return tables
