"""Two models scored on the same images: how much better the second is, and how sure we are.

Both answers are paired (each image judged by both models), which is what makes small test
sets informative: the interval and the test look only at how the two differ image by image.
- the difference in accuracy, b − a, with a paired bootstrap percentile interval
  (Efron & Tibshirani 1993, ch. 13): the images are resampled, both answers kept together;
- McNemar's exact test (the binomial test on the discordant pairs; Dietterich 1998
  recommends it for comparing two classifiers on one test set).
Pure NumPy and SciPy: the API and the benchmarks import it without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import f1_score

BOOTSTRAP_ROUNDS = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Difference:
    """b − a in accuracy and its interval at CONFIDENCE."""

    estimate: float
    low: float
    high: float

    @property
    def b_is_better(self) -> bool:
        """The whole interval above zero: the evidence a promotion asks for."""
        return self.low > 0


def paired_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> Difference:
    """b − a in accuracy over the same images, with a percentile interval from `rounds`
    resamplings of the images (each keeps both models' answers)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("both models need an answer for each of the same images")
    per_image = b.astype(np.int8) - a.astype(np.int8)
    rng = np.random.default_rng(seed)
    # In blocks, so that memory stays flat for large test sets.
    means = np.concatenate(
        [
            per_image[rng.integers(0, len(per_image), (block, len(per_image)))].mean(axis=1)
            for block in _blocks(rounds, len(per_image))
        ]
    )
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Difference(float(per_image.mean()), float(low), float(high))


def _blocks(rounds: int, images: int, cells: int = 4_000_000) -> list[int]:
    size = max(1, cells // max(images, 1))
    return [min(size, rounds - start) for start in range(0, rounds, size)]


def verdict(difference: Difference) -> str:
    """The difference in one sentence, saying plainly when it is not evidence."""
    points = f"{difference.estimate * 100:+.1f} points of accuracy"
    interval = f"95 % interval {difference.low * 100:+.1f} to {difference.high * 100:+.1f}"
    if difference.b_is_better:
        return f"b is better: {points} ({interval})"
    if difference.high < 0:
        return f"b is worse: {points} ({interval})"
    return (
        f"no clear difference: {points} ({interval}, which includes 0); not the evidence to "
        "promote b"
    )


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: of the images exactly one model gets right, is the
    split between them further from even than chance would make it?"""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def per_class(
    truth: list[str], answers: list[str], classes: list[str]
) -> tuple[list[float], float]:
    """Each class's share of its images answered right (its recall), in `classes`' order, and
    the macro F1 over those classes (a class a model never answers scores 0)."""
    truth_array, answers_array = np.asarray(truth), np.asarray(answers)
    recalls = [float(np.mean(answers_array[truth_array == name] == name)) for name in classes]
    macro = f1_score(truth, answers, labels=classes, average="macro", zero_division=0)
    return recalls, float(macro)


def _held(sets: list[str], labels: list[str]) -> np.ndarray:
    """Which of `labels` each label set holds (a label outside them, which a model may answer
    and the images never hold, counts only against its exact match)."""
    from service.datasets.label_files import split_labels

    index = {name: j for j, name in enumerate(labels)}
    matrix = np.zeros((len(sets), len(labels)), dtype=bool)
    for row, joined in enumerate(sets):
        matrix[row, [index[name] for name in split_labels(joined) if name in index]] = True
    return matrix


def per_label(truth: list[str], answers: list[str], labels: list[str]) -> tuple[list[float], float]:
    """`per_class` for label sets (manifest strings): each label's share of the images holding
    it that were answered it, and the macro F1 over the labels."""
    held, given = (_held(sets, labels) for sets in (truth, answers))
    recalls = [float(given[held[:, j], j].mean()) for j in range(len(labels))]
    macro = f1_score(held, given, average="macro", zero_division=0)
    return recalls, float(macro)
