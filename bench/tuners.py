"""Which search library: the head phase of a search (service/searches/study.py) on Optuna's
TPE sampler with its median pruner, as the service runs it, against KerasTuner's Bayesian
optimisation and random search, and Optuna's random sampler as the floor, each given the same
head trials on the same cached features after the same range test.

    python bench/tuners.py [--seeds 5] [--per-class 20] [--trials 30] [--head-epochs 10]
                           [--backbone NAME] [--quick]

In this process, with the service's own ML code: `SearchLab` (features extracted once per
seed, shared by every library; its range test picks the learning rate's centre) and the head
trial it runs for the service. The data and the backbone are bench/search.py's: digits 0–4
pretrain the backbone through the service's `train`; the target is digits 5–9,
`--per-class` training images each (a job's validation split comes out of them), the other
digits 5–9 held out. Per seed, for each library, `--trials` head configurations over the
search's own space (learning rate within 10× of the range test's pick, dropout, L2, label
smoothing, pooling, dense widths), translated one to one into KerasTuner's HyperParameters:
- `optuna_tpe`: the service's `Search.heads` (TPE, median pruner);
- `kerastuner_bayes`: a `keras_tuner.Tuner` whose `run_trial` runs the same head trial
  (KerasTuner's documented way to tune what it does not build), on BayesianOptimizationOracle
  (a Gaussian process; KerasTuner's sampler most like TPE);
- `kerastuner_random`: the same Tuner on RandomSearchOracle;
- `optuna_random`: Optuna's RandomSampler, nothing pruned.
Every library's best trial is chosen by one rule, the service's (validation accuracy, then
the lower loss), trained again by `train` as `train_best` would, and scored on the held-out
digits. Seconds: the trials' own (training), and the library's own time around them (wall
time less the trials': sampling, bookkeeping, KerasTuner's trial files), per trial.

There is no goal: the figures are the measurement issue 28 asked the library choice to rest
on (docs/searches.md). The last line is machine-readable: per library the mean held-out
accuracy, best validation accuracy, trial seconds and overhead per trial over the seeds, and
`tpe_minus_kerastuner_points` (held-out, Optuna TPE − KerasTuner Bayesian, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras_tuner
import optuna
import tensorflow as tf
from optuna.distributions import BaseDistribution, FloatDistribution

from bench.quick import add_backbone, parse_args
from bench.search import (
    TARGET,
    Digits,
    held_out_accuracy,
    load,
    pretrain,
    search_spec,
    target_split,
    trained,
)
from service.ml.features import MemoryFeatureStore
from service.ml.search import SearchLab
from service.searches.spec import SearchSpec
from service.searches.study import (
    Search,
    Trial,
    head_distributions,
    picked_rate,
    range_spec,
    rank_key,
)
from service.searches.trials import job_spec

LIBRARIES = ("optuna_tpe", "kerastuner_bayes", "kerastuner_random", "optuna_random")


@dataclass(frozen=True)
class Tried:
    """One head trial as every library's run records it."""

    params: dict[str, Any]
    value: float | None  # the last validation accuracy; None: pruned
    val_loss: float | None
    seconds: float

    @property
    def rank(self) -> tuple[float, float]:
        return rank_key(self.value, self.val_loss)


@dataclass(frozen=True)
class LibraryRun:
    library: str
    best: Tried
    test_accuracy: float
    trial_seconds: float
    overhead_per_trial: float
    pruned: int


def never_stop(epoch: int, score: float, loss: float) -> bool:
    return False


class HeadTrials:
    """The seed's lab and its search's space: runs one head trial of given parameters."""

    def __init__(self, spec: SearchSpec, lab: SearchLab, picked: float) -> None:
        self.spec = spec
        self.lab = lab
        self.picked = picked
        self.space = head_distributions(spec, picked)
        self.tried: list[Tried] = []

    def run(self, params: dict[str, Any]) -> Tried:
        run = self.lab.head_trial(job_spec(self.spec, params, 1), never_stop)
        tried = Tried(params, run.scores[-1], run.val_loss, run.seconds)
        self.tried.append(tried)
        return tried


def optuna_tpe(trials: HeadTrials) -> list[Tried]:
    """The service's own head phase, pruning included."""
    stored: list[Trial] = []
    Search(trials.spec, trials.lab, [], record=stored.append).heads(trials.picked)
    return [
        Tried(t.params, t.value if t.state == "complete" else None, t.val_loss, t.seconds)
        for t in stored
    ]


def optuna_random(trials: HeadTrials) -> list[Tried]:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=trials.spec.seed)
    )
    for _ in range(trials_budget(trials)):
        asked = study.ask(trials.space)
        study.tell(asked, trials.run(dict(asked.params)).value)
    return trials.tried


def trials_budget(trials: HeadTrials) -> int:
    assert trials.spec.budget.trials is not None
    return trials.spec.budget.trials


def kt_space(space: dict[str, BaseDistribution]) -> keras_tuner.HyperParameters:
    """The search's Optuna space as KerasTuner's HyperParameters, one to one."""
    hp = keras_tuner.HyperParameters()
    for name, distribution in space.items():
        if isinstance(distribution, FloatDistribution):
            sampling = "log" if distribution.log else "linear"
            hp.Float(name, distribution.low, distribution.high, sampling=sampling)
        else:
            hp.Choice(name, list(distribution.choices))  # type: ignore[attr-defined]
    return hp


class LabTuner(keras_tuner.Tuner):
    """KerasTuner driving the service's head trial: `run_trial` answers its objective."""

    def __init__(self, trials: HeadTrials, oracle: keras_tuner.Oracle, directory: str) -> None:
        super().__init__(oracle=oracle, directory=directory, project_name="heads")
        self.trials = trials

    def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args: Any, **kwargs: Any) -> Any:
        tried = self.trials.run(dict(trial.hyperparameters.values))
        return {"val_accuracy": tried.value}


def kerastuner(oracle_class: type[keras_tuner.Oracle]) -> Callable[[HeadTrials], list[Tried]]:
    def run(trials: HeadTrials) -> list[Tried]:
        oracle = oracle_class(
            objective=keras_tuner.Objective("val_accuracy", "max"),
            max_trials=trials_budget(trials),
            seed=trials.spec.seed,
            hyperparameters=kt_space(trials.space),
            allow_new_entries=False,
            tune_new_entries=False,
        )
        with tempfile.TemporaryDirectory(prefix="bench-kt-") as directory:
            LabTuner(trials, oracle, directory).search(verbose=0)
        return trials.tried

    return run


RUNNERS: dict[str, Callable[[HeadTrials], list[Tried]]] = {
    "optuna_tpe": optuna_tpe,
    "kerastuner_bayes": kerastuner(keras_tuner.oracles.BayesianOptimizationOracle),
    "kerastuner_random": kerastuner(keras_tuner.oracles.RandomSearchOracle),
    "optuna_random": optuna_random,
}


def one_seed(
    args: argparse.Namespace, digits: Digits, weights: Path, seed: int
) -> list[LibraryRun]:
    train_positions, test_positions = target_split(digits, seed, args.per_class)
    data = digits.labelled(train_positions, TARGET.start)
    test = (digits.pixels(test_positions), digits.digits[test_positions] - TARGET.start)
    spec = search_spec(args, seed, {"trials": args.trials})
    store = MemoryFeatureStore()
    base = range_spec(spec)
    lab = SearchLab(
        base,
        data,
        list(spec.space.pooling),
        backbone_weights=weights,
        store=store,
        should_stop=lambda: False,
    )
    picked = picked_rate(spec, lab.range_test(base).picked)
    runs = []
    for library in LIBRARIES:
        trials = HeadTrials(spec, lab, picked)
        clock = time.perf_counter()
        tried = RUNNERS[library](trials)
        wall = time.perf_counter() - clock
        best = min(tried, key=lambda one: one.rank)
        model = trained(job_spec(spec, best.params, 1), data, weights, store).network.model
        trial_seconds = sum(one.seconds for one in tried)
        runs.append(
            LibraryRun(
                library=library,
                best=best,
                test_accuracy=held_out_accuracy(model, test),
                trial_seconds=trial_seconds,
                overhead_per_trial=(wall - trial_seconds) / len(tried),
                pruned=sum(one.value is None for one in tried),
            )
        )
        print(
            f"seed {seed} {library:>17}: {len(tried)} trials ({runs[-1].pruned} pruned) in "
            f"{wall:.1f} s; best val {best.value:.3f}, held-out {runs[-1].test_accuracy:.3f}",
            flush=True,
        )
    return runs


def summary(runs: list[LibraryRun]) -> dict[str, Any]:
    figures: dict[str, Any] = {"bench": "tuners", "seeds": len(runs) // len(LIBRARIES)}
    print(f"\n{'library':>17} {'held-out':>8} {'best val':>8} {'trials_s':>8} {'overhead':>9}")
    for library in LIBRARIES:
        own = [run for run in runs if run.library == library]
        row = {
            "test_accuracy": statistics.mean(run.test_accuracy for run in own),
            "best_val_accuracy": statistics.mean(run.best.value or 0.0 for run in own),
            "trial_seconds": statistics.mean(run.trial_seconds for run in own),
            "overhead_s_per_trial": statistics.mean(run.overhead_per_trial for run in own),
        }
        figures[library] = {key: round(value, 4) for key, value in row.items()}
        print(
            f"{library:>17} {row['test_accuracy']:8.3f} {row['best_val_accuracy']:8.3f} "
            f"{row['trial_seconds']:8.1f} {row['overhead_s_per_trial']:9.3f}"
        )
    tpe = [run.test_accuracy for run in runs if run.library == "optuna_tpe"]
    bayes = [run.test_accuracy for run in runs if run.library == "kerastuner_bayes"]
    difference = statistics.mean(100 * (a - b) for a, b in zip(tpe, bayes, strict=True))
    figures["tpe_minus_kerastuner_points"] = round(difference, 2)
    print(f"\ntpe_minus_kerastuner_points={difference:.2f} (held-out, mean over seeds)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=20, help="training images per digit")
    parser.add_argument("--trials", type=int, default=30, help="head configurations")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--pooling", nargs="+", default=["avg", "max"], choices=["avg", "max"])
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-images", type=int, default=1797, help="of digits 0–4")
    parser.add_argument("--pretrain-freeze", choices=["none", "backbone"], default="none")
    add_backbone(parser)
    quick = {
        "seeds": 1,
        "trials": 2,
        "head_epochs": 2,
        "pooling": ["avg"],
        "pretrain_epochs": 1,
        "pretrain_images": 100,
        "pretrain_freeze": "backbone",  # as bench/search.py's quick run
    }
    args = parse_args(parser, quick)
    # search_spec's other fields: the head phase alone runs here.
    args.depths, args.fine_tune_epochs, args.finalists = None, 1, 1
    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()
    digits = load()
    with tempfile.TemporaryDirectory(prefix="bench-tuners-") as scratch:
        weights = Path(scratch) / "digits-0-4.weights.h5"
        pretrain(digits, args, weights)
        runs = [run for seed in range(args.seeds) for run in one_seed(args, digits, weights, seed)]
    figures = summary(runs)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
