"""Classifying images with a stored model, whatever shape the request came in.

The model row is resolved (`registry.resolve`: an id, or a name, version or alias) and read in
a short transaction of its own, the images are decoded and resized
exactly as training did, the model comes from the cache, and the pixels go through the
dynamic batcher. Explaining (class activation maps) bypasses the batcher: it is asked for
rarely, costs more, and answers more than probabilities. What cannot be classified is a
domain problem (service/problems.py), whose status the API and the console take from the
same table; the model cache's own errors become problems here. TensorFlow is imported only
when the cache first loads a model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import anyio.to_thread
import numpy as np
from sqlalchemy import select

from service import logs, metrics
from service.ml.batching import Batcher
from service.ml.images import UndecodableImage, to_pixels
from service.ml.model_cache import (
    Explanation,
    ExplanationUnavailable,
    LoadedModel,
    ModelCache,
    ModelCorrupt,
    ModelSource,
    UnknownThresholds,
    heatmap_overlay,
    png,
)
from service.models.registry import ModelRef, resolve
from service.predictions.schemas import Heatmap, Score
from service.problems import BadContent, Conflict, Invalid, TooLarge, Unavailable
from service.storage.db import Database
from service.storage.tables import TrainedModel

__all__ = [
    "MAX_EXPLAIN_TOP_K",
    "Classification",
    "Image",
    "Serving",
    "check_explain_top_k",
    "decode_base64",
    "decode_images",
    "heatmaps",
    "model_source",
    "top_scores",
]


logger = logging.getLogger(__name__)

# Model ids `Serving` remembers as found, at most.
FOUND_LIMIT = 10_000
# Classes explained per image, at most: each is a map drawn (a gradient pass for Grad-CAM)
# and, for /predict, a PNG encoded. 64 images × top_k 1000 asked for 64,000 of them; this
# bounds a request at 64 × 10 (the default top_k, 5, is under it).
MAX_EXPLAIN_TOP_K = 10


def check_explain_top_k(top_k: int) -> None:
    """Invalid, naming `top_k`, when explaining would draw more maps per image than
    MAX_EXPLAIN_TOP_K."""
    if top_k > MAX_EXPLAIN_TOP_K:
        raise Invalid(
            f"with explain, top_k is at most {MAX_EXPLAIN_TOP_K} (a map is drawn for each "
            f"label returned), not {top_k}",
            field=("top_k",),
        )


@dataclass(frozen=True)
class Image:
    where: str  # where it came from, for error messages: files[0] 'a.jpg', instances[2]
    name: str  # what the answer calls it
    data: bytes


@dataclass(frozen=True)
class Unknown:
    ood_score: float  # higher: stranger to the model
    unknown: bool  # past the threshold


@dataclass(frozen=True)
class Classification:
    model_id: str
    classes: list[str]
    probabilities: np.ndarray  # one row per image, in the order they were given
    # When explained: per image, the heat map of each class explained, by class name.
    heatmaps: list[dict[str, Heatmap]] | None = None
    # Each image's ood_score, and the model's thresholds; None for a model stored before
    # models carried an unknown-input score (service/ml/unknowns.py).
    ood_scores: np.ndarray | None = None
    unknowns: UnknownThresholds | None = None
    input_size: int = 0  # the model's
    thresholds: list[float] | None = None  # a multi-label model's, per label

    def unknown(self, unknown_rate: float | None = None) -> list[Unknown | None]:
        """Each image's ood_score and whether it passes the threshold for `unknown_rate`
        (default: the one the model was trained for); None each without a score."""
        if self.ood_scores is None or self.unknowns is None:
            return [None] * len(self.probabilities)
        threshold = self.unknowns.threshold(unknown_rate)
        return [Unknown(float(score), bool(score > threshold)) for score in self.ood_scores]

    def top(self, top_k: int, threshold: float | None = None) -> list[list[Score]]:
        """Each image's best labels, those below `threshold` left out; explained ones carry
        their heat map. A multi-label model's labels each have their own threshold, which a
        `threshold` given overrides; a softmax's default is 0 (every label, to `top_k`)."""
        cutoff: float | Sequence[float] = threshold if threshold is not None else 0.0
        if self.thresholds is not None and threshold is None:
            cutoff = self.thresholds
        rows = top_scores(self.probabilities, self.classes, top_k, cutoff)
        if self.heatmaps is None:
            return rows
        return [
            [score.model_copy(update={"heatmap": maps.get(score.label)}) for score in row]
            for row, maps in zip(rows, self.heatmaps, strict=True)
        ]


@dataclass(frozen=True)
class Serving:
    """What classifying needs: where models are stored, the loaded ones, the batcher.

    `recheck_seconds`: how long a model id looked up is taken as found without reading its
    row again. A row never changes once stored; it can only be deleted, and `evict` forgets
    it here at once, so the window only delays when another API process stops serving a
    model deleted through this one or the console. 0: every request reads the row. Names,
    versions and aliases are resolved by every request, as they move.
    """

    database: Database
    cache: ModelCache
    batcher: Batcher
    max_images: int
    recheck_seconds: float = 0.0
    _found: dict[str, tuple[ModelSource, float]] = field(default_factory=dict, repr=False)
    # (name, alias) → the model id this process last answered it with (see `_rolled_out`).
    _served: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _rolling: set[str] = field(default_factory=set, repr=False)
    _rolling_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    async def classify(self, model: str | ModelRef, images: Sequence[Image]) -> Classification:
        """Class probabilities for the images, one row each, in order. `model`: a model id, or
        a reference resolved once, so the whole request runs on one version."""
        self._check_count(images)
        started = time.perf_counter()
        # One trip to a worker thread for the lookup, the decoding, the (cached) model and
        # joining its lane; the lane's thread answers the future.
        loaded, answer = await anyio.to_thread.run_sync(self._submit, model, images)
        logs.bind(model_id=loaded.model_id)
        probabilities, ood_scores = loaded.split(await asyncio.wrap_future(answer))
        metrics.observe_predict(loaded.model_id, time.perf_counter() - started)
        return Classification(
            loaded.model_id,
            loaded.classes,
            probabilities,
            ood_scores=ood_scores,
            unknowns=loaded.unknowns,
            input_size=loaded.input_size,
            thresholds=loaded.thresholds,
        )

    async def explain(
        self, model: str | ModelRef, images: Sequence[Image], top_k: int
    ) -> Classification:
        """`classify`'s answer, with the class activation maps of each image's `top_k` best
        classes. One worker-thread trip does it all, outside the batcher: the model's
        `explain` signature, then the overlays' PNG encoding. Invalid for a `top_k` over
        MAX_EXPLAIN_TOP_K, before any image is decoded."""
        check_explain_top_k(top_k)
        self._check_count(images)
        started = time.perf_counter()
        answer = await anyio.to_thread.run_sync(self._explain, model, images, top_k)
        logs.bind(model_id=answer.model_id)
        metrics.observe_predict(answer.model_id, time.perf_counter() - started)
        return answer

    def _check_count(self, images: Sequence[Image]) -> None:
        if len(images) > self.max_images:
            raise TooLarge(f"{len(images)} images sent; at most {self.max_images} per request")

    def _explain(
        self, model: str | ModelRef, images: Sequence[Image], top_k: int
    ) -> Classification:
        loaded, pixels = self._prepare(model, images)
        try:
            explanation = loaded.explanation(pixels, top_k)
        except ExplanationUnavailable as error:
            raise Conflict(str(error)) from None
        return Classification(
            loaded.model_id,
            loaded.classes,
            explanation.probabilities,
            heatmaps(explanation, pixels, loaded.classes),
            explanation.ood_scores,
            loaded.unknowns,
            loaded.input_size,
            loaded.thresholds,
        )

    def _submit(
        self, model: str | ModelRef, images: Sequence[Image]
    ) -> tuple[LoadedModel, Future[np.ndarray]]:
        loaded, pixels = self._prepare(model, images)
        return loaded, self.batcher.submit(loaded.model_id, loaded.scores, pixels)

    def _prepare(
        self, model: str | ModelRef, images: Sequence[Image]
    ) -> tuple[LoadedModel, np.ndarray]:
        source = self._source(model)
        # Decoded before the model is loaded: a bad image is the request's 400, whatever the
        # model's state, and costs no load.
        pixels = decode_images(images, source.input_size)
        if not (isinstance(model, ModelRef) and model.name and model.alias):
            return self._loaded(source), pixels
        loaded = self._rolled_out((model.name, model.alias), source)
        if loaded.input_size != source.input_size:  # the version before, of another size
            pixels = decode_images(images, loaded.input_size)
        return loaded, pixels

    def _rolled_out(self, alias: tuple[str, str], source: ModelSource) -> LoadedModel:
        """The model to answer an alias with, without a stall when the alias moves: the
        version it points to once that is loaded; until then, the version this process last
        answered it with, while the new one loads in the background (TF Serving's
        availability-preserving policy). With no earlier version at hand, it loads here."""
        if self.cache.peek(source.model_id) is None:
            before = self._served.get(alias)
            previous = self.cache.peek(before) if before else None
            if previous is not None:
                self._load_in_background(source)
                return previous
        loaded = self._loaded(source)  # counted as the cache's hit, or loaded here
        self._served[alias] = source.model_id
        return loaded

    def _load_in_background(self, source: ModelSource) -> None:
        with self._rolling_lock:
            if source.model_id in self._rolling:
                return
            self._rolling.add(source.model_id)

        def load() -> None:
            try:
                self.cache.get(source)
            except Exception:  # its own requests, once the old version is gone, say why
                logger.exception("rollout: model %s could not be loaded", source.model_id)
            finally:
                with self._rolling_lock:
                    self._rolling.discard(source.model_id)

        threading.Thread(target=load, name=f"rollout-{source.model_id}", daemon=True).start()

    def model(self, model: str | ModelRef) -> LoadedModel:
        """The loaded model, for work that calls it directly (the review queue): blocking."""
        return self._loaded(self._source(model))

    def _loaded(self, source: ModelSource) -> LoadedModel:
        try:
            return self.cache.get(source)
        except ModelCorrupt as error:  # the cache's, which batch jobs meet too: a problem here
            raise Unavailable(str(error)) from None

    def _source(self, model: str | ModelRef) -> ModelSource:
        model_id = model if isinstance(model, str) else model.model_id
        now = time.monotonic()
        found = self._found.get(model_id) if model_id is not None else None
        if found is not None and now - found[1] < self.recheck_seconds:
            return found[0]
        source = model_source(self.database, model)
        if self.recheck_seconds > 0 and source.model_id == model_id:
            if len(self._found) >= FOUND_LIMIT:
                self._found.clear()  # ids of models deleted elsewhere do not pile up
            self._found[model_id] = (source, now)
        return source

    def evict(self, model_id: str) -> None:
        """Forget a deleted model: its row here, its loaded graph and unpacked files."""
        self._found.pop(model_id, None)
        self.cache.evict(model_id)


def model_source(database: Database, model: str | ModelRef) -> ModelSource:
    """What the cache needs to load the model (a model id, or a reference to resolve), read in
    a short transaction of its own: a prediction holds no database connection while it waits
    for the model. An unknown model is the registry's NotFound."""
    ref = model if isinstance(model, ModelRef) else ModelRef(model_id=model)
    with database.session() as session:
        return stored_source(database, resolve(session, ref, only=SOURCE_COLUMNS))


# What `stored_source` reads of a model row.
SOURCE_COLUMNS = (
    TrainedModel.id,
    TrainedModel.savedmodel_sha256,
    TrainedModel.classes,
    TrainedModel.input_size,
    TrainedModel.thresholds,
)


def stored_source(database: Database, row: TrainedModel) -> ModelSource:
    """What the cache needs to load a model row: its columns now, its archive (17 MB and
    more) only if the cache has to load it, in a session of its own."""
    model_id = row.id

    def fetch_archive() -> bytes:
        with database.session() as reading:
            return reading.scalar(
                select(TrainedModel.savedmodel).where(TrainedModel.id == model_id)
            )

    return ModelSource(
        model_id=model_id,
        sha256=row.savedmodel_sha256,
        classes=list(row.classes),
        input_size=row.input_size,
        fetch_archive=fetch_archive,
        thresholds=row.thresholds,
    )


def decode_images(images: Sequence[Image], size: int) -> np.ndarray:
    """Raw pixels for the batch, decoded and resized exactly as the training pipeline does."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for number, image in enumerate(images):
        try:
            batch[number] = to_pixels(image.data, size)
        except UndecodableImage as error:
            raise BadContent(f"{image.where}: {error}") from None
    return batch


def heatmaps(
    explanation: Explanation, pixels: np.ndarray, classes: list[str]
) -> list[dict[str, Heatmap]]:
    """Per image, each explained class's map: the overlay on the pixels the model saw (a
    base64 PNG) and the low-resolution map itself."""
    return [
        {
            classes[int(index)]: Heatmap(
                method=explanation.method,
                png=_png_base64(heatmap_overlay(image, explanation.heatmaps[i, j])),
                map=explanation.maps[i, j].astype(float).tolist(),
            )
            for j, index in enumerate(explanation.classes[i])
        }
        for i, image in enumerate(pixels)
    ]


def _png_base64(pixels: np.ndarray) -> str:
    return base64.b64encode(png(pixels)).decode("ascii")


def decode_base64(where: str, encoded: str) -> bytes:
    """An image sent as base64 text; `where` names it in the error (`instances[0].b64`)."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadContent(f"{where}: not valid base64") from None


def top_scores(
    probabilities: np.ndarray,
    classes: list[str],
    top_k: int,
    threshold: float | Sequence[float] = 0.0,
) -> list[list[Score]]:
    """Each row's `top_k` best labels, best first, leaving out those below `threshold` (one
    for all labels, or one per label)."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    cutoff = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(classes),))
    return [
        [
            Score(label=classes[index], score=float(row[index]))
            for index in indices
            if row[index] >= cutoff[index]
        ]
        for row, indices in zip(probabilities, order, strict=True)
    ]
