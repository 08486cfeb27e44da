"""Classifying images with a stored model, whatever shape the request came in.

The model row is read in a short transaction of its own, the images are decoded and resized
exactly as training did, the model comes from the cache, and the pixels go through the
dynamic batcher. Problems are domain exceptions; the HTTP layer maps them to status codes.
TensorFlow is imported only when the cache first loads a model.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
import numpy as np
from sqlalchemy import select

from service.ml.batching import Batcher
from service.ml.images import UndecodableImage, to_pixels
from service.ml.serving import LoadedModel, ModelCache, ModelCorrupt, ModelSource
from service.schemas import Score
from service.storage.db import Database
from service.storage.tables import TrainedModel

__all__ = [
    "BadImage",
    "Classification",
    "Image",
    "ModelCorrupt",
    "ModelNotFound",
    "Serving",
    "ServingError",
    "TooManyImages",
    "decode_base64",
    "decode_images",
    "model_source",
    "top_scores",
]


class ServingError(Exception):
    """A request that cannot be classified; the message says why, for the client."""


class ModelNotFound(ServingError):
    pass


class BadImage(ServingError):
    """An image that cannot be decoded; the message names it (`files[1] 'bad.png': …`)."""


class TooManyImages(ServingError):
    pass


@dataclass(frozen=True)
class Image:
    where: str  # where it came from, for error messages: files[0] 'a.jpg', instances[2]
    name: str  # what the answer calls it
    data: bytes


@dataclass(frozen=True)
class Classification:
    model_id: str
    classes: list[str]
    probabilities: np.ndarray  # one row per image, in the order they were given

    def top(self, top_k: int, threshold: float = 0.0) -> list[list[Score]]:
        return top_scores(self.probabilities, self.classes, top_k, threshold)


@dataclass(frozen=True)
class Serving:
    """What classifying needs: where models are stored, the loaded ones, the batcher."""

    database: Database
    cache: ModelCache
    batcher: Batcher
    max_images: int

    async def classify(self, model_id: str, images: Sequence[Image]) -> Classification:
        """Class probabilities for the images, one row each, in order."""
        if len(images) > self.max_images:
            raise TooManyImages(f"{len(images)} images sent; at most {self.max_images} per request")
        # One trip to a worker thread for the lookup, the decoding and the (cached) model.
        model, pixels = await anyio.to_thread.run_sync(self._prepare, model_id, images)
        probabilities = await self.batcher.predict(model.model_id, model.probabilities, pixels)
        return Classification(model.model_id, model.classes, probabilities)

    def _prepare(self, model_id: str, images: Sequence[Image]) -> tuple[LoadedModel, np.ndarray]:
        source = model_source(self.database, model_id)
        pixels = decode_images(images, source.input_size)
        return self.cache.get(source), pixels


def model_source(database: Database, model_id: str) -> ModelSource:
    """What the cache needs to load the model, read in a short transaction of its own: a
    prediction holds no database connection while it waits for the model."""
    with database.session() as session:
        row = session.execute(
            select(
                TrainedModel.savedmodel_sha256, TrainedModel.classes, TrainedModel.input_size
            ).where(TrainedModel.id == model_id)
        ).first()
    if row is None:
        raise ModelNotFound(f"model_id: no model {model_id!r}")

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
    )


def decode_images(images: Sequence[Image], size: int) -> np.ndarray:
    """Raw pixels for the batch, decoded and resized exactly as the training pipeline does."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for number, image in enumerate(images):
        try:
            batch[number] = to_pixels(image.data, size)
        except UndecodableImage as error:
            raise BadImage(f"{image.where}: {error}") from None
    return batch


def decode_base64(where: str, encoded: str) -> bytes:
    """An image sent as base64 text; `where` names it in the error (`instances[0].b64`)."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(f"{where}: not valid base64") from None


def top_scores(
    probabilities: np.ndarray, classes: list[str], top_k: int, threshold: float = 0.0
) -> list[list[Score]]:
    """Each row's `top_k` best labels, best first, leaving out those below `threshold`."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [
        [
            Score(label=classes[index], score=float(row[index]))
            for index in indices
            if row[index] >= threshold
        ]
        for row, indices in zip(probabilities, order, strict=True)
    ]
