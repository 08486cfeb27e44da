"""The training/validation split, numpy only: the worker trains on it, and the dataset health
report (which runs in the API process, without TensorFlow) recomputes it to find duplicates
that straddle it."""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): `fraction` of each class, chosen by `seed`, to validation.

    Every class keeps at least one training image; a class of one image has none in validation.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    validation: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(round(len(members) * fraction), len(members) - 1) if fraction > 0 else 0
        validation.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))
