"""Keras weights files for a backbone: recognised by content, checked against the backbone,
loaded as weights only (never as a model, so nothing in them runs)."""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import keras
from keras.src.utils.naming import to_snake_case

from service.backbones import get_backbone
from service.ml.build import isolated_build


class WeightsMismatch(ValueError):
    """The file is not a weights file for this backbone; the message names what differs."""


def _open(data: bytes) -> h5py.File:
    try:
        return h5py.File(io.BytesIO(data), "r")
    except OSError:
        raise WeightsMismatch(
            "not an HDF5 file; expected a Keras weights file (.weights.h5, or the legacy .h5 "
            "such as mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5)"
        ) from None


def _is_legacy(handle: h5py.File) -> bool:
    """Keras 2's format (what keras.applications downloads) lists its layers in an attribute."""
    return "layer_names" in handle.attrs or "model_weights" in handle


def weights_suffix(data: bytes) -> str:
    """The file name ending Keras's `load_weights` needs for this content."""
    with _open(data) as handle:
        return ".h5" if _is_legacy(handle) else ".weights.h5"


@contextmanager
def weights_file(data: bytes) -> Iterator[Path]:
    """`data` in a scratch file named so that `load_weights` reads it in its own format."""
    with tempfile.TemporaryDirectory(prefix="weights-") as scratch:
        path = Path(scratch) / f"backbone{weights_suffix(data)}"
        path.write_bytes(data)
        yield path


def _shapes(group: h5py.Group, names: list[str]) -> list[tuple[int, ...]]:
    return sorted(tuple(group[name].shape) for name in names)


def _expected(layer: keras.layers.Layer) -> list[tuple[int, ...]]:
    return sorted(tuple(int(dim) for dim in weight.shape) for weight in layer.weights)


def _first_mismatch(backbone: keras.Model, handle: h5py.File) -> str | None:
    layers = [layer for layer in backbone.layers if layer.weights]
    if _is_legacy(handle):
        # Keras loads these by position among the layers that have weights.
        root = handle.get("model_weights", handle)
        names = [
            name.decode() if isinstance(name, bytes) else str(name)
            for name in root.attrs["layer_names"]
        ]
        saved = []
        for name in names:
            weight_names = [
                w.decode() if isinstance(w, bytes) else str(w)
                for w in root[name].attrs["weight_names"]
            ]
            if weight_names:
                saved.append((name, _shapes(root[name], weight_names)))
        for layer, (name, shapes) in zip(layers, saved, strict=False):
            if shapes != _expected(layer):
                return (
                    f"layer {layer.name!r} expects weights of shapes {_expected(layer)}; "
                    f"the file's layer {name!r} in its place has {shapes}"
                )
        if len(saved) != len(layers):
            return f"the file has weights for {len(saved)} layers, the backbone {len(layers)}"
        return None
    # Keras 3 files name each layer's group by its class, numbered in the model's order.
    seen: dict[str, int] = {}
    for layer in backbone.layers:
        base = to_snake_case(type(layer).__name__)
        number = seen.get(base, 0)
        seen[base] = number + 1
        if not layer.weights:
            continue
        key = base if number == 0 else f"{base}_{number}"
        group = handle.get(f"layers/{key}/vars")
        if group is None:
            return f"layer {layer.name!r} ({key}) is not in the file"
        shapes = _shapes(group, list(group.keys()))
        if shapes != _expected(layer):
            return (
                f"layer {layer.name!r} expects weights of shapes {_expected(layer)}; "
                f"the file has {shapes}"
            )
    return None


def check_weights(backbone_name: str, data: bytes) -> None:
    """Raise WeightsMismatch unless `data` loads into the backbone (include_top=False)."""
    backbone = get_backbone(backbone_name)
    size = backbone.min_input_size
    with isolated_build():
        model = backbone.constructor(include_top=False, weights=None, input_shape=(size, size, 3))
        with _open(data) as handle:
            mismatch = _first_mismatch(model, handle)
        if mismatch:
            raise WeightsMismatch(f"does not fit {backbone_name} (include_top=False): {mismatch}")
        with weights_file(data) as path, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.load_weights(str(path))
            except Exception as error:
                message = f"does not load into {backbone_name}: {error}"
                raise WeightsMismatch(message[:500]) from None
