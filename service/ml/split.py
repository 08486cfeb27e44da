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
    Multi-label images (`labels` a 0/1 matrix) are split by their `strata`.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    validation: list[np.ndarray] = []
    keys = strata(labels)
    for key in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == key))
        count = min(round(len(members) * fraction), len(members) - 1) if fraction > 0 else 0
        validation.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(validation))


def strata(labels: np.ndarray) -> np.ndarray:
    """What the split stratifies by: a single-label image's class; a multi-label image's rarest
    label (-1 for none). Rare labels are the ones a plain random split can leave out of
    validation altogether, so each image goes with the label it is scarcest evidence for."""
    if labels.ndim == 1:
        return labels
    held = labels > 0
    rarity = np.where(held, held.sum(axis=0)[None, :], np.iinfo(np.int64).max)
    return np.where(held.any(axis=1), np.argmin(rarity, axis=1), -1)
