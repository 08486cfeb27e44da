"""The search itself, on Optuna: its TPE sampler proposes head configurations, its median
pruner ends the hopeless ones early, and its successive-halving pruner shares the fine-tuning
epochs among the finalists. The studies live in memory for one run of the job; the trials
are the service's own rows (`search_trials`), written as each ends, and a resumed job
rebuilds its studies from them (Optuna's `create_trial`/`add_trial`), so it goes on from its
finished trials. Optuna's RDBStorage is not used: it would keep its own twelve tables beside
the service's migrations and read the service's `alembic_version` row as its own schema's.

No TensorFlow here: the lab (service/ml/search.py) trains; this decides what it trains."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from service.searches.spec import MAX_TRIALS, SearchSpec
from service.searches.trials import (
    FINE_TUNE,
    HEAD,
    choice,
    default_depths,
    default_params,
    job_spec,
)
from service.training.spec import JobSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The head phase's share of a budget in seconds; fine-tuning the finalists has the rest.
HEAD_SHARE = 0.5
# The median pruner judges a head trial from its second epoch, once five trials finished.
STARTUP_TRIALS = 5
# An L2 range from 0 is sampled on a log scale from this (no penalty worth the name).
L2_LEAST = 1e-12
# Successive halving keeps the better half of the finalists at each rung (epochs 1, 2, 4…).
REDUCTION = 2


class Run(Protocol):
    scores: list[float]
    val_loss: float | None
    stopped_early: bool
    seconds: float


class Lab(Protocol):
    """What the search trains with (service/ml/search.py's SearchLab)."""

    backbone_layers: int

    def range_test(self, spec: JobSpec) -> Any: ...

    def head_trial(self, spec: JobSpec, report: Callable[[int, float, float], bool]) -> Run: ...

    def fine_tune_trial(
        self, spec: JobSpec, report: Callable[[int, float, float], bool]
    ) -> Run: ...


@dataclass(frozen=True)
class Trial:
    """A finished trial, as stored."""

    number: int
    phase: str
    params: dict[str, Any]
    scores: list[float]
    value: float | None
    val_loss: float | None
    state: str  # complete, pruned, stopped
    reason: str
    seconds: float

    @property
    def rank(self) -> tuple[float, float]:
        return rank_key(self.value, self.val_loss)


def rank_key(value: float | None, val_loss: float | None) -> tuple[float, float]:
    """Better first when sorted: the score, then the lower loss (none, or not finite: last)."""
    loss = val_loss if val_loss is not None and math.isfinite(val_loss) else 1e9
    return (-(value or 0.0), loss)


class Search:
    """One run of a search job: the range test, the head phase, the fine-tuning phase, each
    picking up after the trials `done` holds. `record` stores a trial as it ends."""

    def __init__(
        self,
        spec: SearchSpec,
        lab: Lab,
        done: list[Trial],
        record: Callable[[Trial], None],
        spent: float = 0.0,
    ) -> None:
        self.spec = spec
        self.lab = lab
        self.trials = sorted(done, key=lambda trial: trial.number)
        self.record = record
        self.started = time.monotonic() - spent - sum(trial.seconds for trial in done)

    def spent(self) -> float:
        return time.monotonic() - self.started

    def of(self, phase: str, state: str | None = None) -> list[Trial]:
        return [t for t in self.trials if t.phase == phase and state in (None, t.state)]

    # -- the head phase -------------------------------------------------------------------

    def heads(self, picked: float) -> None:
        """Head configurations on the cached features until the budget's trials are done,
        or its first HEAD_SHARE of seconds spent."""
        distributions = head_distributions(self.spec, picked)
        done = self.of(HEAD)
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.spec.seed + len(done)),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=1),
        )
        for trial in done:
            study.add_trial(_frozen(trial, distributions))
        while self._more_heads():
            asked = study.ask(distributions)
            self._run(
                study,
                asked,
                HEAD,
                self.lab.head_trial,
                "below the median of the earlier trials at that epoch",
            )

    def _more_heads(self) -> bool:
        budget = self.spec.budget
        if len(self.of(HEAD)) >= MAX_TRIALS:
            return False
        if budget.trials is not None:
            return len(self.of(HEAD)) < budget.trials
        assert budget.seconds is not None
        return self.spent() < budget.seconds * HEAD_SHARE

    # -- the fine-tuning phase ------------------------------------------------------------

    def fine_tune(self, picked: float) -> None:
        """The best `finalists` head configurations, each at every freeze depth, trained as
        jobs; successive halving stops the weaker at each rung of epochs."""
        depths = self.spec.space.freeze_depths or default_depths(self.lab.backbone_layers)
        distributions = {
            **head_distributions(self.spec, picked),
            "freeze_depth": CategoricalDistribution(depths),
        }
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=self.spec.seed),
            pruner=optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=REDUCTION
            ),
        )
        for trial in self.of(FINE_TUNE):
            study.add_trial(_frozen(trial, distributions))
        tried = [_key(trial.params) for trial in self.of(FINE_TUNE)]
        for params in self.candidates(depths):
            if _key(params) in tried:
                continue
            if self._out_of_time():
                return
            study.enqueue_trial(params)
            asked = study.ask(distributions)
            self._run(
                study,
                asked,
                FINE_TUNE,
                self.lab.fine_tune_trial,
                "outside the better "
                f"1/{REDUCTION} of the finalists at that rung (successive halving)",
            )

    def candidates(self, depths: list[int]) -> list[dict[str, Any]]:
        finalists = sorted(self.of(HEAD, "complete"), key=lambda trial: trial.rank)
        unique: list[dict[str, Any]] = []
        for trial in finalists:
            if trial.params not in unique:
                unique.append(trial.params)
        return [
            {**params, "freeze_depth": depth}
            for params in unique[: self.spec.finalists]
            for depth in depths
        ]

    # -- one trial ------------------------------------------------------------------------

    def _run(
        self,
        study: optuna.Study,
        asked: optuna.Trial,
        phase: str,
        trainer: Callable[[JobSpec, Callable[[int, float, float], bool]], Run],
        pruned_because: str,
    ) -> None:
        why: list[str] = []

        def report(epoch: int, score: float, loss: float) -> bool:
            asked.report(score, epoch)
            if asked.should_prune():
                why.append(f"pruned after epoch {epoch} ({score:.3f}): {pruned_because}")
            elif self._out_of_time():
                why.append(f"stopped after epoch {epoch}: the budget's time ran out")
            return bool(why)

        params = dict(asked.params)
        run = trainer(job_spec(self.spec, params, self.spec.dataset_version), report)
        state = "complete"
        if run.stopped_early:
            state = "pruned" if why[0].startswith("pruned") else "stopped"
        value = run.scores[-1] if run.scores else None
        if state == "complete" and value is not None:
            study.tell(asked, value)
        else:
            study.tell(asked, state=TrialState.PRUNED)
        epochs = len(run.scores)
        trial = Trial(
            number=len(self.trials),
            phase=phase,
            params=params,
            scores=run.scores,
            value=value,
            val_loss=run.val_loss,
            state=state,
            reason=why[0] if why else _completed(phase, params, epochs),
            seconds=round(run.seconds, 3),
        )
        self.trials.append(trial)
        self.record(trial)

    def _out_of_time(self) -> bool:
        seconds = self.spec.budget.seconds
        return seconds is not None and self.spent() >= seconds

    def best(self) -> Trial | None:
        """The best finished fine-tuning trial; without one (the budget ran out first), the
        best head trial, whose spec fine-tunes nothing."""
        for phase in (FINE_TUNE, HEAD):
            complete = self.of(phase, "complete")
            if complete:
                return min(complete, key=lambda trial: trial.rank)
        return None


def _completed(phase: str, params: dict[str, Any], epochs: int) -> str:
    if phase == FINE_TUNE and not params.get("freeze_depth"):
        return "completed: the head alone, the backbone frozen"
    what = "fine-tuning epoch" if phase == FINE_TUNE else "epoch"
    return f"completed its {epochs} {what}{'s' * (epochs != 1)}"


def picked_rate(spec: SearchSpec, picked: float) -> float:
    """The range test's pick, inside the space's learning-rate bounds."""
    low, high = spec.space.learning_rate
    return min(max(picked, low), high)


def head_distributions(spec: SearchSpec, picked: float) -> dict[str, BaseDistribution]:
    """The head's space: the learning rate within 10× of the range test's pick (inside the
    space's bounds), the rest as the space says."""
    space = spec.space
    rate = picked_rate(spec, picked)
    low = max(space.learning_rate[0], rate / 10)
    high = min(space.learning_rate[1], rate * 10)
    l2_low, l2_high = (max(bound, L2_LEAST) for bound in space.l2)
    return {
        "learning_rate": FloatDistribution(low, max(high, low), log=True),
        "dropout": FloatDistribution(*space.dropout),
        "l2": FloatDistribution(l2_low, l2_high, log=True),
        "label_smoothing": FloatDistribution(*space.label_smoothing),
        "pooling": CategoricalDistribution(space.pooling),
        "dense": CategoricalDistribution([choice(widths) for widths in space.dense]),
    }


def range_spec(spec: SearchSpec) -> JobSpec:
    """What the range test trains: the space's plainest head."""
    return job_spec(spec, default_params(spec), spec.dataset_version)


def _frozen(trial: Trial, distributions: dict[str, BaseDistribution]) -> optuna.trial.FrozenTrial:
    """A stored trial as Optuna's study takes it back."""
    complete = trial.state == "complete" and trial.value is not None
    return optuna.trial.create_trial(
        params=trial.params,
        distributions={name: distributions[name] for name in trial.params},
        value=trial.value if complete else None,
        intermediate_values={epoch: score for epoch, score in enumerate(trial.scores, start=1)},
        state=TrialState.COMPLETE if complete else TrialState.PRUNED,
    )


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))
