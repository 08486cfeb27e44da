"""Drift: is what a model is being sent still like what it learnt from?

For every model it serves, the API process keeps the ood_scores of the last WINDOW images it
answered (no image is kept: the score is the model's own summary of how far an image's
features lie from its training split's, service/ml/unknowns.py). Every TEST_EVERY images, a
two-sample Kolmogorov–Smirnov test compares the window with the validation split's scores
(stored in the model as quantiles, with how many images they came from). The window drifts
when the largest gap between the two distribution functions, D, passes the critical value for
a false-alarm rate of FALSE_ALARM_RATE per test:

    D > c(α) · sqrt((n + m) / (n · m)),   c(α) = sqrt(−ln(α / 2) / 2)

with n the validation images and m the window. Both sample sizes count, so a small
validation split widens the threshold instead of raising false alarms. A model starts and
stops drifting on a test's verdict; each change is announced (webhook `model.drift`).

Each API process judges its own traffic (docs/scaling.md): with several behind a balancer,
each sees a share of the same stream, and its windows fill more slowly.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from service.ml.model_cache import UnknownThresholds
from service.storage.tables import utcnow

WINDOW = 300  # images
TEST_EVERY = 25  # images between tests
FALSE_ALARM_RATE = 0.001  # per test
HISTORY = 500  # tests remembered per model, for the chart
MAX_MODELS = 1000  # models watched per process, at most: the least recently served go


@dataclass(frozen=True)
class DriftTest:
    at: datetime
    statistic: float  # D
    threshold: float  # the critical D
    p_value: float
    unknown_share: float  # of the window's images flagged unknown
    drifting: bool


@dataclass
class _Watch:
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    unknown: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    since_test: int = 0
    drifting: bool = False
    tests: deque[DriftTest] = field(default_factory=lambda: deque(maxlen=HISTORY))


def critical_value(reference: int, window: int, alpha: float = FALSE_ALARM_RATE) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(
        (reference + window) / (reference * window)
    )


def kolmogorov_p_value(statistic: float, reference: int, window: int) -> float:
    """The asymptotic two-sample p-value of D (Kolmogorov's distribution)."""
    effective = reference * window / (reference + window)
    lam = (math.sqrt(effective) + 0.12 + 0.11 / math.sqrt(effective)) * statistic
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)), 0.0, 1.0))


def ks_statistic(window: np.ndarray, reference: UnknownThresholds) -> float:
    """D between the window's scores and the validation scores, which the model keeps as
    quantiles: the validation sample is read back from them, one score per image."""
    count = reference.images
    levels = (np.arange(count) + 0.5) / count
    sample = np.sort(
        np.interp(levels, np.linspace(0.0, 1.0, len(reference.quantiles)), reference.quantiles)
    )
    window = np.sort(window)
    points = np.concatenate([sample, window])
    below_reference = np.searchsorted(sample, points, side="right") / len(sample)
    below_window = np.searchsorted(window, points, side="right") / len(window)
    return float(np.max(np.abs(below_reference - below_window)))


class DriftMonitor:
    """The windows of every model this process serves. `on_change(model_id, test)` is called
    when a model starts or stops drifting."""

    def __init__(self, on_change: Callable[[str, DriftTest], None] | None = None) -> None:
        self.on_change = on_change
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()

    def observe(
        self,
        model_id: str,
        reference: UnknownThresholds,
        ood_scores: np.ndarray,
        unknown: list[bool],
    ) -> DriftTest | None:
        """Add a request's images to the model's window; the test's result when one ran."""
        with self._lock:
            watch = self._watches.pop(model_id, None) or _Watch()
            self._watches[model_id] = watch  # most recently served last
            while len(self._watches) > MAX_MODELS:
                self._watches.pop(next(iter(self._watches)))
            watch.scores.extend(float(score) for score in ood_scores)
            watch.unknown.extend(unknown)
            watch.since_test += len(ood_scores)
            if watch.since_test < TEST_EVERY or len(watch.scores) < WINDOW:
                return None
            watch.since_test = 0
            test = self._test(watch, reference)
            changed = test.drifting != watch.drifting
            watch.drifting = test.drifting
            watch.tests.append(test)
        if changed and self.on_change is not None:
            self.on_change(model_id, test)
        return test

    @staticmethod
    def _test(watch: _Watch, reference: UnknownThresholds) -> DriftTest:
        window = np.fromiter(watch.scores, dtype=np.float64)
        statistic = ks_statistic(window, reference)
        threshold = critical_value(reference.images, len(window))
        return DriftTest(
            at=utcnow(),
            statistic=statistic,
            threshold=threshold,
            p_value=kolmogorov_p_value(statistic, reference.images, len(window)),
            unknown_share=float(np.mean(np.fromiter(watch.unknown, dtype=bool))),
            drifting=statistic > threshold,
        )

    def latest(self) -> list[tuple[str, DriftTest]]:
        """Each watched model's last test (those tested at least once)."""
        with self._lock:
            return [(key, watch.tests[-1]) for key, watch in self._watches.items() if watch.tests]

    def state(self, model_id: str) -> tuple[int, bool, list[DriftTest]]:
        """The images in the model's window, whether it drifts, and its tests, oldest first."""
        with self._lock:
            watch = self._watches.get(model_id)
            if watch is None:
                return 0, False, []
            return len(watch.scores), watch.drifting, list(watch.tests)
