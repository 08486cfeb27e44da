"""Which images are most worth a person's label: uncertainty first, then diversity.

1. Uncertainty: the margin between the model's top two probabilities (small: the model can
   hardly choose). A multi-label model decides each label on its own, against its own
   threshold: its margin is the smallest distance of any label's probability to that
   label's threshold (the label it is least sure to give or withhold; Brinker 2006's
   "BinMin"). The `SHORTLIST` × `limit` images of smallest margin are the shortlist.
2. Diversity: greedy k-center over the shortlist on L2-normalised features, measured from the
   images already labelled as well as from those picked before. Each pick maximises
   (1 − margin) × its cosine distance to the nearest image labelled or picked, so ten
   near-identical doubtful frames take one place, not ten, an image like one just labelled
   waits, and a doubtful image unlike the others still comes early. With no labelled images
   given, the first pick is the smallest margin.

This is Cluster-Margin's recipe (Citovsky et al. 2021: a margin shortlist, diversified),
with the k-center step of core-set selection (Sener & Savarese 2018) in place of its
clustering; as in core-set selection, the centres start from the labelled set.
bench/active.py measures it against margin alone and against random picks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METHOD = (
    "uncertainty then diversity: the {shortlist}×limit images with the smallest margin between "
    "{margin}, ordered by greedy k-center on L2-normalised features (each pick maximises "
    "(1 − margin) × cosine distance to the nearest image picked before or among the "
    "{labelled} newest labelled images of the dataset)"
)
# What METHOD's margin is between: a softmax's, and a multi-label model's.
MARGIN = "the model's top two probabilities"
MULTI_LABEL_MARGIN = "a label's probability and its threshold (the closest label)"
SHORTLIST = 5


@dataclass(frozen=True)
class Pick:
    index: int  # into the candidates
    margin: float
    # Cosine distance to the nearest image labelled or picked before; None: the first pick
    # when no labelled images were given.
    distance: float | None


def margins(probabilities: np.ndarray, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Top probability minus the second, per row (the top alone for a single class); with a
    multi-label model's `thresholds`, the smallest |probability − threshold| of the row."""
    if thresholds is not None:
        distances = np.abs(probabilities - np.asarray(thresholds))
        return np.min(distances, axis=1).astype(np.float64)
    if probabilities.shape[1] < 2:
        return probabilities[:, 0].astype(np.float64)
    top_two = -np.sort(-probabilities, axis=1)[:, :2]
    return (top_two[:, 0] - top_two[:, 1]).astype(np.float64)


def rank(
    probabilities: np.ndarray,
    features: np.ndarray,
    limit: int,
    *,
    diverse: bool = True,
    thresholds: Sequence[float] | None = None,
    labelled: np.ndarray | None = None,
) -> list[Pick]:
    """Up to `limit` candidates in the order to label them. `diverse=False`: margin alone;
    `thresholds`: a multi-label model's, per label; `labelled`: features of images already
    labelled, which k-center's distances start from."""
    margin = margins(probabilities, thresholds)
    order = np.argsort(margin, kind="stable")
    if not diverse:
        return [Pick(int(i), float(margin[i]), None) for i in order[:limit]]
    shortlist = order[: SHORTLIST * limit]
    if not len(shortlist):
        return []  # nothing left to label (its features may not even be the labelled ones')
    unit = _normalised(features[shortlist])
    uncertainty = 1.0 - margin[shortlist]
    nearest = np.full(len(shortlist), np.inf)
    if labelled is not None and len(labelled):
        nearest = _cosine_distances(unit, _normalised(labelled)).min(axis=1)
    picks: list[Pick] = []
    chosen = np.zeros(len(shortlist), dtype=bool)
    distance: float | None
    for _ in range(min(limit, len(shortlist))):
        if np.isinf(nearest).all():
            best, distance = 0, None  # the shortlist starts with the smallest margin
        else:
            value = np.where(chosen, -np.inf, uncertainty * nearest)
            best = int(np.argmax(value))
            distance = float(nearest[best])
        chosen[best] = True
        picks.append(Pick(int(shortlist[best]), float(margin[shortlist[best]]), distance))
        nearest = np.minimum(nearest, _cosine_distances(unit, unit[best : best + 1])[:, 0])
    return picks


def _cosine_distances(unit: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Between rows of L2-normalised arrays; clipped, as rounding can take one a hair below
    zero."""
    return np.clip(1.0 - unit @ others.T, 0.0, 2.0)


def _normalised(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)
