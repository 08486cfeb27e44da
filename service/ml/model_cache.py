"""Serving stored SavedModels: unpack once, load once, keep the most recent few in memory;
and the class activation maps of their `explain` signature, drawn over the image."""

from __future__ import annotations

import gc
import io
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.ml.export import sha256, unpack_archive
from service.ml.frozen import frozen_serve
from service.ml.runtime import import_tensorflow

# How much of the overlay is the heat map's colour; the rest is the image.
OVERLAY_ALPHA = 0.5
# "jet": dark blue (no evidence) → cyan → yellow → dark red (the map's peak).
_COLOURS = np.array(
    [[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]],
    dtype=np.float64,
)


class ModelCorrupt(RuntimeError):
    """The stored SavedModel does not match the checksum written with it; nothing is loaded."""


class ExplanationUnavailable(RuntimeError):
    """The stored SavedModel has no `explain` signature (it was exported before there was one)."""


@dataclass(frozen=True)
class Explanation:
    """Class activation maps for some classes of each image of a batch."""

    method: str  # "cam" or "grad-cam"
    probabilities: np.ndarray  # [batch, K], as `serve` gives them
    classes: np.ndarray  # [batch, n] the class indices explained
    maps: np.ndarray  # [batch, n, fh, fw] at the backbone's feature resolution
    heatmaps: np.ndarray  # [batch, n, h, w] the maps resized to the input
    ood_scores: np.ndarray | None = None  # [batch], where the model has an unknown-input score


@dataclass(frozen=True)
class UnknownThresholds:
    """A model's validation ood_scores at evenly spaced quantile levels, the unknown_rate its
    training asked for, and how many images the scores came from: the threshold for any rate
    is read from them, and drift compares with them (service/monitoring/drift.py)."""

    quantiles: np.ndarray
    unknown_rate: float
    images: int  # the validation images the quantiles were read from

    def threshold(self, unknown_rate: float | None = None) -> float:
        """The score above which `unknown_rate` (default: the training's) of the validation
        images lie."""
        rate = self.unknown_rate if unknown_rate is None else unknown_rate
        levels = np.linspace(0.0, 1.0, len(self.quantiles))
        return float(np.interp(1.0 - rate, levels, self.quantiles))


@dataclass(frozen=True)
class Features:
    features: np.ndarray  # [batch, channels]
    probabilities: np.ndarray  # [batch, classes]
    ood_scores: np.ndarray | None  # [batch]
    from_backbone: bool  # False: `features` are the probabilities (an older model)


@dataclass
class LoadedModel:
    model_id: str
    classes: list[str]
    input_size: int
    serve: Callable[[Any], Any]
    explain: Callable[[Any, Any], Any] | None = None
    frozen: bool = False  # `serve` is the frozen graph (service/ml/frozen.py), not as stored
    # With an `unknowns` signature: `serve` answers each image's probabilities followed by its
    # ood_score (one more column), thresholded by these.
    unknowns: UnknownThresholds | None = None
    # What answers features (`_features_signature`); None for a model stored before them.
    features: Callable[[Any], Any] | None = None
    # A multi-label model's threshold per label: it answers every label reaching its own.
    thresholds: list[float] | None = None

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """`serve`'s rows for a batch of raw pixels, shape (n, size, size, 3): the class
        probabilities, and the ood_score after them where the model has one."""
        return np.asarray(self.serve(pixels.astype(np.float32, copy=False)))

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`scores`' rows as (probabilities, ood_scores or None)."""
        if self.unknowns is None:
            return rows, None
        return rows[:, :-1], rows[:, -1]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of raw pixels."""
        return self.split(self.scores(pixels))[0]

    def features_and_scores(self, pixels: np.ndarray) -> Features:
        """Each image's features, probabilities and ood_score (None without a score) in one
        pass. A model stored before the `features` signature answers its probabilities as
        its features: how alike two images are is then only how alike the model's answers
        are."""
        pixels = pixels.astype(np.float32, copy=False)
        if self.features is None:
            probabilities, ood_scores = self.split(self.scores(pixels))
            return Features(probabilities, probabilities, ood_scores, from_backbone=False)
        answer = self.features(pixels)
        ood = answer.get("ood_score")
        return Features(
            np.asarray(answer["features"]),
            np.asarray(answer["probabilities"]),
            None if ood is None else np.asarray(ood),
            from_backbone=True,
        )

    def explanation(self, pixels: np.ndarray, top_k: int) -> Explanation:
        """Maps of each image's `top_k` best classes (best first, in `top_scores`' order):
        one `serve` call picks them, one `explain` call draws them."""
        if self.explain is None:
            raise ExplanationUnavailable(
                f"model {self.model_id} was stored before models carried class activation "
                "maps; train it again to explain its answers"
            )
        pixels = pixels.astype(np.float32, copy=False)
        probabilities, ood_scores = self.split(self.scores(pixels))
        count = min(top_k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :count].astype(np.int32)
        answer = self.explain(pixels, order)
        return Explanation(
            method=answer["method"].numpy()[0].decode(),
            probabilities=probabilities,
            classes=order,
            maps=np.asarray(answer["maps"]),
            heatmaps=np.asarray(answer["heatmaps"]),
            ood_scores=ood_scores,
        )


@dataclass(frozen=True)
class ModelSource:
    """What is needed to load a model: read from the database by the caller."""

    model_id: str
    sha256: str
    classes: list[str]
    input_size: int
    fetch_archive: Callable[[], bytes]
    thresholds: list[float] | None = None  # a multi-label model's, per label


class ModelCache:
    """An LRU of loaded models. Loading is serialised per model: N concurrent first requests
    load it once.

    With `freeze`, every load ends by moving all the objects the process holds out of the
    garbage collector's full scans (`gc.freeze`). A loaded TensorFlow model is hundreds of
    thousands of objects that live as long as it does; scanned, they made each full collection
    a pause of serving that grew with the models held (364 ms with one MobileNetV2, measured in
    docs/scaling.md). Frozen objects are still freed when their last reference goes; what an
    evicted model leaves in reference cycles is handed back to the collector (`gc.unfreeze`),
    as is everything when the cache is closed."""

    def __init__(self, directory: Path, capacity: int, *, freeze: bool = False) -> None:
        self.directory = directory
        self.capacity = capacity
        self.freeze = freeze
        self._evicted_since_freeze = False
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        # Counted for service/metrics.py, which reads them at scrape time.
        self.hits = 0  # answered from memory (or by a concurrent request's load)
        self.loads = 0
        self.evictions = 0  # dropped to stay within `capacity`

    def __len__(self) -> int:
        return len(self._models)

    def get(self, source: ModelSource) -> LoadedModel:
        with self._lock:
            model = self._touch(source.model_id)
            if model is not None:
                self.hits += 1
                return model
            loading = self._loading.setdefault(source.model_id, threading.Lock())
        with loading:
            try:
                with self._lock:
                    model = self._touch(source.model_id)
                    if model is not None:
                        self.hits += 1
                if model is None:
                    model = self._load(source)
                    with self._lock:
                        self._models[source.model_id] = model
                        while len(self._models) > self.capacity:
                            self._models.popitem(last=False)
                            self.evictions += 1
                            self._evicted_since_freeze = True
                    self._refreeze()
                return model
            finally:
                with self._lock:
                    self._loading.pop(source.model_id, None)

    def peek(self, model_id: str) -> LoadedModel | None:
        """The model if it is loaded; never loads it."""
        with self._lock:
            return self._touch(model_id)

    def _touch(self, model_id: str) -> LoadedModel | None:
        model = self._models.get(model_id)
        if model is not None:
            self._models.move_to_end(model_id)
        return model

    def _load(self, source: ModelSource) -> LoadedModel:
        tf = import_tensorflow()

        directory = self.directory / f"{source.model_id}-{source.sha256[:16]}"
        if not (directory / "saved_model.pb").exists():
            scratch = directory.with_name(directory.name + ".partial")
            shutil.rmtree(scratch, ignore_errors=True)
            archive = source.fetch_archive()
            actual = sha256(archive or b"")
            if actual != source.sha256:
                raise ModelCorrupt(
                    f"model {source.model_id}: the stored SavedModel ({len(archive or b'')} "
                    f"bytes) fails its sha256 check (stored {source.sha256[:12]}…, "
                    f"read {actual[:12]}…); it will not be loaded"
                )
            unpack_archive(archive, scratch)
            scratch.rename(directory)
        loaded = tf.saved_model.load(str(directory))
        os.utime(directory)  # when it was last loaded: what a restart warms up first
        self.loads += 1
        serve, unknowns = _serve_and_thresholds(loaded, source.input_size)
        frozen = frozen_serve(source.model_id, serve, source.input_size)
        return LoadedModel(
            model_id=source.model_id,
            classes=source.classes,
            input_size=source.input_size,
            serve=frozen or _keep_alive(loaded, serve),
            explain=_keep_alive(loaded, loaded.explain) if hasattr(loaded, "explain") else None,
            features=_features_signature(loaded),
            frozen=frozen is not None,
            unknowns=unknowns,
            thresholds=source.thresholds,
        )

    def evict(self, model_id: str) -> None:
        with self._lock:
            evicted = self._models.pop(model_id, None) is not None
            self._evicted_since_freeze |= evicted
        if evicted and self.freeze:
            gc.unfreeze()  # so that a full collection frees its cycles; the next load refreezes
        for directory in self.directory.glob(f"{model_id}-*"):
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        """Forget every model, and hand what was frozen back to the collector."""
        with self._lock:
            self._models.clear()
        if self.freeze:
            gc.unfreeze()

    def _refreeze(self) -> None:
        """After a load: the new model out of full collections (see the class). When a model
        has gone since the last freeze, its cycles are collected first, not frozen for good."""
        if not self.freeze:
            return
        with self._lock:
            evicted, self._evicted_since_freeze = self._evicted_since_freeze, False
        if evicted:
            gc.unfreeze()
            gc.collect()
        gc.freeze()


def _serve_and_thresholds(loaded: Any, input_size: int) -> tuple[Any, UnknownThresholds | None]:
    """What the API serves: `unknowns`' probabilities and ood_score as one row per image, in
    one pass of the backbone, and its thresholds; or `serve` alone, for a model stored before
    models carried an unknown-input score."""
    import tensorflow as tf

    if not hasattr(loaded, "unknowns"):
        return loaded.serve, None
    spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels: tf.Tensor) -> tf.Tensor:
        answer = loaded.unknowns(pixels)
        return tf.concat([answer["probabilities"], answer["ood_score"][:, None]], axis=1)

    quantiles, rate, images = (variable.numpy() for variable in loaded.unknown_thresholds)
    return serve, UnknownThresholds(quantiles.astype(np.float64), float(rate), int(images))


def _features_signature(loaded: Any) -> Callable[..., Any] | None:
    """What answers `features` (service/ml/export.py): `unknowns` where it carries them, else
    the `features` signature; None for a model stored before either did."""
    if hasattr(loaded, "unknowns"):
        outputs = loaded.signatures["unknowns"].structured_outputs
        return _keep_alive(loaded, loaded.unknowns) if "features" in outputs else None
    return _keep_alive(loaded, loaded.features) if hasattr(loaded, "features") else None


def _keep_alive(owner: Any, function: Callable[..., Any]) -> Callable[..., Any]:
    """The restored function, holding a reference to the object that owns its variables."""

    def call(*inputs: Any) -> Any:
        return function(*inputs)

    call.owner = owner  # type: ignore[attr-defined]
    return call


def heatmap_overlay(pixels: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The map, scaled to its own range and coloured (jet), blended over the image's pixels
    (uint8 [h, w, 3], as the model saw them). Scaled per map: CAM values have no fixed unit."""
    low, high = float(heatmap.min()), float(heatmap.max())
    level = (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)
    position = np.clip(level, 0.0, 1.0) * (len(_COLOURS) - 1)
    below = np.minimum(np.floor(position).astype(int), len(_COLOURS) - 2)
    fraction = (position - below)[..., None]
    colour = _COLOURS[below] * (1 - fraction) + _COLOURS[below + 1] * fraction
    blended = (1 - OVERLAY_ALPHA) * pixels.astype(np.float64) + OVERLAY_ALPHA * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def configure_tensorflow_threads(*, intra_op: int, inter_op: int) -> None:
    """Apply the API's TensorFlow thread settings (0: TensorFlow's default).

    They go through the environment variables TensorFlow reads when it first runs an op, not
    `tf.config`: that would import TensorFlow at start-up, and whatever first runs an op (a
    model load, a backbone built for /backbones/{name}/layers) gets them. The `api` command
    sets them before it serves, so they are the API process's own and no process it shares an
    environment with (a test's workers) inherits them. A process that has already run an op is
    left as it is.
    """
    for variable, threads in (
        ("TF_NUM_INTRAOP_THREADS", intra_op),
        ("TF_NUM_INTEROP_THREADS", inter_op),
    ):
        if threads:
            os.environ[variable] = str(threads)
