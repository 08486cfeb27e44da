"""A frozen backbone's pooled features: the extractor training's cached stages use, the key
that names what they depend on, and the store that keeps them between jobs.

The features of an image depend on the backbone, its weights, the input size and the
pooling, nothing else (no augmentation runs while they are cached), so a later job or
advice with the same four reuses them instead of running the backbone again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from service.training.spec import BackboneSpec

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from service.ml.build import Network


class FeatureStore(Protocol):
    """Where features outlive a job (the worker's is the database:
    service/storage/feature_store.py)."""

    def load(self, key: str, image_ids: Sequence[int]) -> np.ndarray | None:
        """The features of `image_ids` in that order, or None unless all are stored."""
        ...

    def save(self, key: str, image_ids: Sequence[int], features: np.ndarray) -> None: ...


class MemoryFeatureStore:
    """A FeatureStore in a dict: for in-process runs (benchmarks, tests) with no database."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, np.ndarray]] = {}

    def load(self, key: str, image_ids: Sequence[int]) -> np.ndarray | None:
        stored = self.rows.get(key, {})
        if not all(image_id in stored for image_id in image_ids):
            return None
        return np.stack([stored[image_id] for image_id in image_ids])

    def save(self, key: str, image_ids: Sequence[int], features: np.ndarray) -> None:
        self.rows.setdefault(key, {}).update(zip(image_ids, features, strict=True))


def feature_key(backbone: BackboneSpec, pooling: str) -> str | None:
    """The cache key of a pretrained backbone's features; None for random weights, whose
    values depend on how the job seeded its build (they are never shared)."""
    if not backbone.pretrained:
        return None
    return f"{backbone.name}|{backbone.weights}|{backbone.input_size}|{pooling}"


class FeatureExtractor:
    """The network up to its pooling layer, and a head model that shares the real head's
    layers and takes those features: a frozen stage trains the head alone on them.

    Valid while the backbone stays frozen and unchanged: a later stage that trains the
    backbone makes the features stale.
    """

    def __init__(self, network: Network) -> None:
        import keras

        from service.ml.build import on_features

        pooled = network.head_layers[0].output
        self.pooling = network.head_layers[0]
        self.extractor = keras.Model(network.model.inputs, pooled, name="features")
        self.head: keras.Model = on_features(network.head_layers[1:], tuple(pooled.shape[1:]))
        self.feature_bytes = 4 * math.prod(int(dim) for dim in pooled.shape[1:])

    def extract(
        self,
        pixels: tf.data.Dataset,
        count: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Features of the first `count` images of `pixels` (batches whose first element is the
        pixels; the rows past `count`, a padded last batch's filler, are dropped), in order;
        `on_batch(k)` after batch k — it may raise to stop."""
        import keras

        class Batches(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
                if on_batch is not None:
                    on_batch(batch + 1)

        # predict, not predict_on_batch: under MirroredStrategy the latter answers every
        # replica's copy of the batch (Keras 3.15). float32 whatever the network computes in.
        features = self.extractor.predict(pixels, verbose=0, callbacks=[Batches()])
        return np.asarray(features[:count], np.float32)


def cached_or_extracted(
    store: FeatureStore | None,
    key: str | None,
    image_ids: Sequence[int] | None,
    extract: Callable[[], np.ndarray],
) -> tuple[np.ndarray, bool]:
    """The stored features of `image_ids` under `key` when all are there, else `extract()`'s
    (then stored). Also whether they came from the store."""
    if store is None or key is None or image_ids is None:
        return extract(), False
    stored = store.load(key, image_ids)
    if stored is not None:
        return stored, True
    features = extract()
    store.save(key, image_ids, features)
    return features, False


def stratified_sample(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Positions of at most `cap` images, chosen by `seed`: two of each class (while it has
    them; the probe's folds need them), the rest of `cap` shared in proportion to the classes'
    sizes. All of them when there are no more than `cap`. Ascending."""
    if len(labels) <= cap:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    reserved = np.minimum(counts, 2)
    rest = counts - reserved
    shares = reserved + np.floor(max(cap - reserved.sum(), 0) * rest / max(rest.sum(), 1))
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[: int(share)]
        for label, share in zip(classes, shares, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
