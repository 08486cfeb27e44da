"""Searches: does a search within a budget find a spec as good as an exhaustive grid
over the same space, for a fraction of its compute, and better than the default spec?

    python bench/search.py [--seeds 3] [--per-class 20] [--trials 30] [--finalists 3]
                           [--budget-seconds 600] [--backbone NAME] [--quick]

In this process, with the service's own ML code (no HTTP service): `SearchLab` and `Search`
as the search task drives them (service/searches/task.py), `train` for every job.

Data: scikit-learn's digits (1,797 8×8 greys), upscaled to 32 px RGB PNGs. ImageNet weights
cannot be downloaded here, so the backbone is pretrained through the service's own training
on digits 0–4 (every image, from random weights, nothing frozen) and its weights saved to a
`.weights.h5` file; the target task names them "file:digits-0-4", so its specs count as
pretrained (BN frozen, features cached under a key) as with an uploaded weights file.
`--quick` pretrains 100 digits for one epoch with the backbone frozen (`--pretrain-freeze`:
the file is written the same way, of random weights), then runs every step below at tiny sizes.

Target: digits 5–9, 20 training images per class drawn per seed (the search and the grid see
only those and split their validation images from them as a job does); the other digits 5–9
are the held-out test set, predicted by the trained network from `to_pixels`' pixels, as
serving does. Per seed:
1. the search: range test, `--trials` head configurations, `--finalists` fine-tuned at every
   freeze depth; its best spec trained by `train` (what `train_best` queues), scored on the
   test set. Its compute: the search plus that training (what a user pays for a model);
2. a grid over the same space (learning rate × dropout × hidden layer × freeze depth at one
   L2 and one label smoothing), each point a job through the same `job_spec`, the best chosen
   by validation accuracy (ties: the lower loss) as a user would, scored on the test set;
   the grid shares a feature store, as jobs on one dataset do;
3. the default spec (JobSpec's defaults: frozen backbone, avg pooling, dropout 0.2, Adam at
   1e-3, 5 epochs) with the same backbone;
4. whether the range test's pick lies within 3× of the grid's best learning rate.
Then one search with a budget of `--budget-seconds` (600: ten minutes) on seed 0's data, its
head configurations counted (quick mode: a few seconds of its head phase alone, and the count
projected to the head phase's share of ten minutes). Last, one fine-tuning trial's `train`
timed scored as a trial (its metrics alone) against scored as a job (calibrated, with its
unknown-input score), alternated: `trial_seconds_ratio`.

Goals: search_minus_grid_points ≥ −0.5, compute_ratio ≤ 0.25,
search_minus_default_points ≥ 2, head_trials_in_10_minutes ≥ 60, lr_within_3x_seeds ≥ 2 of 3.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from bench.quick import add_backbone, parse_args
from service.ml.data import LabelledImages
from service.ml.features import MemoryFeatureStore
from service.ml.images import to_pixels
from service.ml.search import SearchLab
from service.ml.train import TrainingResult, train
from service.searches.spec import SearchSpec
from service.searches.study import HEAD_SHARE, Search, Trial, picked_rate, range_spec, rank_key
from service.searches.trials import HEAD, choice, default_depths, job_spec
from service.training.spec import JobSpec

SIZE = 32
SOURCE = range(0, 5)  # the digits the backbone is pretrained on
TARGET = range(5, 10)  # the digits the search and the grid learn
WEIGHTS_ID = "file:digits-0-4"
TEN_MINUTES = 600.0
# The grid's one L2 and one label smoothing: inside the search's ranges, mid-scale.
GRID_L2 = 1e-4
GRID_SMOOTHING = 0.1
# The freeze depth a fine-tuning trial is timed at when the space names none: the middle
# of the search's default depths for MobileNetV2 at 32 px.
FINE_TUNE_DEPTH = 15


class Quiet:
    def on_progress(self, progress: dict[str, int]) -> None: ...

    def on_epoch(self, row: dict[str, float]) -> None: ...

    def should_stop(self) -> bool:
        return False


@dataclass(frozen=True)
class Digits:
    """Every digit as a 32 px RGB PNG, and its digit (0–9)."""

    images: list[bytes]
    digits: np.ndarray

    def labelled(self, positions: np.ndarray, first: int) -> LabelledImages:
        """Those images as a dataset whose classes are the digits from `first` on; the
        positions, from 1, are their ids (the feature store's keys, as rows are a dataset's)."""
        classes = sorted({int(digit) for digit in self.digits[positions]})
        assert classes[0] == first, classes
        return LabelledImages(
            images=[self.images[i] for i in positions],
            labels=(self.digits[positions] - first).astype(np.int32),
            classes=[str(digit) for digit in classes],
            ids=[int(i) + 1 for i in positions],
        )

    def pixels(self, positions: np.ndarray) -> np.ndarray:
        """What the model takes: float32 pixels 0–255, decoded as training and serving do."""
        return np.stack([to_pixels(self.images[i], SIZE) for i in positions]).astype(np.float32)


def load() -> Digits:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = []
    for grey in data.images:
        buffer = io.BytesIO()
        image = Image.fromarray((grey * 255 / 16).astype(np.uint8))
        image.resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(buffer, "PNG")
        images.append(buffer.getvalue())
    return Digits(images, data.target.astype(np.int32))


def target_split(digits: Digits, seed: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` training images of each target digit, drawn by `seed`; the rest of the
    target digits, the held-out test set."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(digits.digits == digit), per_class, replace=False)
        for digit in TARGET
    ]
    train_positions = np.sort(np.concatenate(chosen))
    target = np.flatnonzero(digits.digits >= TARGET.start)
    return train_positions, np.setdiff1d(target, train_positions)


def backbone(args: argparse.Namespace, weights: str | None) -> dict[str, Any]:
    return {"name": args.backbone, "weights": weights, "input_size": SIZE}


def pretrain(digits: Digits, args: argparse.Namespace, path: Path) -> None:
    """The backbone, trained whole on digits 0–4 by the service's trainer, saved to `path`."""
    clock = time.perf_counter()
    source = np.flatnonzero(digits.digits < TARGET.start)
    if args.pretrain_images < len(source):
        source = np.sort(np.random.default_rng(0).choice(source, args.pretrain_images, False))
    spec = JobSpec.model_validate(
        {
            "dataset_id": "d_digits_0_4",
            "backbone": backbone(args, None),
            "freeze": {"mode": args.pretrain_freeze},
            "training": {"epochs": args.pretrain_epochs},
        }
    )
    keras.backend.clear_session()
    result = train(spec, digits.labelled(source, SOURCE.start), Quiet(), backbone_weights=None)
    result.network.backbone.save_weights(str(path))
    print(
        f"backbone: {args.backbone} at {SIZE} px from random weights, trained "
        f"{'whole' if args.pretrain_freeze == 'none' else 'frozen (its head alone)'} on "
        f"{len(source)} digits 0–4 for {args.pretrain_epochs} epochs: validation accuracy "
        f"{result.metrics['val_accuracy']:.3f}, {time.perf_counter() - clock:.0f} s",
        flush=True,
    )


def search_spec(args: argparse.Namespace, seed: int, budget: dict[str, float]) -> SearchSpec:
    space: dict[str, Any] = {"pooling": args.pooling}
    if args.depths is not None:
        space["freeze_depths"] = args.depths
    return SearchSpec.model_validate(
        {
            "search_id": "s_bench",
            "dataset_id": "d_digits_5_9",
            "dataset_version": 1,
            "backbone": backbone(args, WEIGHTS_ID),
            "budget": budget,
            "space": space,
            "head_epochs": args.head_epochs,
            "fine_tune_epochs": args.fine_tune_epochs,
            "finalists": args.finalists,
            "seed": seed,
        }
    )


def trained(
    spec: JobSpec, data: LabelledImages, weights: Path, store: MemoryFeatureStore
) -> TrainingResult:
    keras.backend.clear_session()
    return train(spec, data, Quiet(), backbone_weights=weights, feature_store=store)


def held_out_accuracy(model: keras.Model, test: tuple[np.ndarray, np.ndarray]) -> float:
    """The share of the test digits the model's top class gets right. Called eagerly, not
    through `predict`: tracing a new model's predict step costs more than these images."""
    pixels, labels = test
    predicted = [
        np.argmax(np.asarray(model(pixels[start : start + 256], training=False)), axis=1)
        for start in range(0, len(pixels), 256)
    ]
    return float(np.mean(np.concatenate(predicted) == labels))


@dataclass(frozen=True)
class SearchRun:
    """One search as the task runs it, and what it found."""

    best: Trial | None  # None: no trial finished within the budget
    picked: float  # the range test's pick, inside the space's bounds
    trials: list[Trial]
    depths: list[int]
    seconds: float  # features, range test, head trials, fine-tuning
    head_seconds: float  # the head phase alone
    store: MemoryFeatureStore  # the dataset's features, as the search stored them

    @property
    def heads(self) -> int:
        return sum(trial.phase == HEAD for trial in self.trials)


def run_search(
    spec: SearchSpec, data: LabelledImages, weights: Path, *, fine_tune: bool = True
) -> SearchRun:
    """What service/searches/task.py does with a search job, less the database; without
    `fine_tune`, its head phase alone."""
    clock = time.perf_counter()
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
    tested = lab.range_test(base)
    trials: list[Trial] = []
    # The task counts the range test against a budget in seconds, not the feature pass.
    runner = Search(spec, lab, [], record=trials.append, spent=tested.seconds)
    picked = picked_rate(spec, tested.picked)
    heads_clock = time.perf_counter()
    runner.heads(picked)
    head_seconds = time.perf_counter() - heads_clock
    if fine_tune:
        runner.fine_tune(picked)
    return SearchRun(
        best=runner.best(),
        picked=picked,
        trials=trials,
        depths=spec.space.freeze_depths or default_depths(lab.backbone_layers),
        seconds=time.perf_counter() - clock,
        head_seconds=head_seconds,
        store=store,
    )


@dataclass(frozen=True)
class GridRun:
    points: int
    best: dict[str, Any]
    val_accuracy: float
    test_accuracy: float
    seconds: float


def grid_points(args: argparse.Namespace, depths: list[int]) -> list[dict[str, Any]]:
    """The grid over the search's space. One pooling: at 32 px the backbone's last feature
    map is 1×1, where average and max pooling are the same numbers."""
    return [
        {
            "learning_rate": rate,
            "dropout": dropout,
            "l2": GRID_L2,
            "label_smoothing": GRID_SMOOTHING,
            "pooling": "avg",
            "dense": choice([width] if width else []),
            "freeze_depth": depth,
        }
        for rate, dropout, width, depth in itertools.product(
            args.grid_lr, args.grid_dropout, args.grid_dense, args.grid_depths or depths
        )
    ]


def run_grid(
    spec: SearchSpec,
    data: LabelledImages,
    weights: Path,
    points: list[dict[str, Any]],
    test: tuple[np.ndarray, np.ndarray],
    store: MemoryFeatureStore,
) -> GridRun:
    """Every point trained as a job, the jobs sharing the dataset's features in `store` as
    jobs do; the best by validation accuracy, then the lower loss (the search's own order),
    scored on the test set after the clock stops."""
    clock = time.perf_counter()
    best: tuple[tuple[float, float], dict[str, Any], keras.Model] | None = None
    for params in points:
        result = trained(job_spec(spec, params, spec.dataset_version), data, weights, store)
        rank = rank_key(float(result.metrics["val_accuracy"]), result.metrics.get("val_loss"))
        if best is None or rank < best[0]:
            best = (rank, params, result.network.model)
    seconds = time.perf_counter() - clock
    assert best is not None
    (accuracy, _), params, model = best
    return GridRun(len(points), params, -accuracy, held_out_accuracy(model, test), seconds)


def trial_cost(
    args: argparse.Namespace, digits: Digits, weights: Path, reps: int
) -> tuple[float, float]:
    """Median seconds of one fine-tuning trial's `train` scored as a trial (the metrics
    alone) and as a job (its calibration and unknown-input score too), alternated in this
    process on seed 0's images after a first run has stored their features."""
    train_positions, _ = target_split(digits, 0, args.per_class)
    data = digits.labelled(train_positions, TARGET.start)
    spec = search_spec(args, 0, {"trials": 1})
    depth = max(args.depths or [FINE_TUNE_DEPTH])
    params = {**grid_points(args, [depth])[0], "freeze_depth": depth}
    job = job_spec(spec, params, spec.dataset_version)
    store = MemoryFeatureStore()
    trained(job, data, weights, store)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(reps):
        for trial in (True, False):
            clock = time.perf_counter()
            keras.backend.clear_session()
            train(job, data, Quiet(), backbone_weights=weights, feature_store=store, trial=trial)
            seconds[trial].append(time.perf_counter() - clock)
    return statistics.median(seconds[True]), statistics.median(seconds[False])


def default_spec(args: argparse.Namespace, seed: int) -> JobSpec:
    body = {"dataset_id": "d_digits_5_9", "backbone": backbone(args, WEIGHTS_ID)}
    return JobSpec.model_validate({**body, "training": {"seed": seed}})


def within(rate: float, other: float, factor: float = 3.0) -> bool:
    return max(rate / other, other / rate) <= factor


@dataclass(frozen=True)
class SeedRow:
    seed: int
    search: float  # held-out accuracy of the search's best spec, trained
    grid: float  # of the grid's best point
    default: float  # of the default spec
    search_seconds: float  # the search, then its best spec's training
    training_seconds: float  # that training alone
    grid_seconds: float
    picked: float  # the range test's learning rate
    grid_rate: float  # the grid's best point's
    search_rate: float  # the search's best trial's


def one_seed(args: argparse.Namespace, digits: Digits, weights: Path, seed: int) -> SeedRow:
    train_positions, test_positions = target_split(digits, seed, args.per_class)
    data = digits.labelled(train_positions, TARGET.start)
    test = (digits.pixels(test_positions), digits.digits[test_positions] - TARGET.start)
    spec = search_spec(args, seed, {"trials": args.trials})
    found = run_search(spec, data, weights)
    assert found.best is not None, "a budget in trials always finishes some"
    clock = time.perf_counter()
    best_spec = job_spec(spec, found.best.params, spec.dataset_version)
    best = trained(best_spec, data, weights, found.store)  # what train_best queues
    training = time.perf_counter() - clock
    store = MemoryFeatureStore()  # a dataset's: the grid extracts its features first
    grid = run_grid(spec, data, weights, grid_points(args, found.depths), test, store)
    default = trained(default_spec(args, seed), data, weights, store)
    pruned = sum(trial.state == "pruned" for trial in found.trials)
    print(
        f"seed {seed}: search {found.heads} heads + {len(found.trials) - found.heads} "
        f"fine-tuning trials, {pruned} of them pruned; depths {found.depths}; in "
        f"{found.seconds:.0f} s; best trial {found.best.number} {found.best.params} val "
        f"{found.best.value:.3f} (trained again: {best.metrics['val_accuracy']:.3f})\n"
        f"        fine-tuning trials (depth: last score, state): {fine_tuning(found.trials)}\n"
        f"        grid {grid.points} points in {grid.seconds:.0f} s; best {grid.best} val "
        f"{grid.val_accuracy:.3f}",
        flush=True,
    )
    return SeedRow(
        seed=seed,
        search=held_out_accuracy(best.network.model, test),
        grid=grid.test_accuracy,
        default=held_out_accuracy(default.network.model, test),
        search_seconds=found.seconds + training,
        training_seconds=training,
        grid_seconds=grid.seconds,
        picked=found.picked,
        grid_rate=float(grid.best["learning_rate"]),
        search_rate=float(found.best.params["learning_rate"]),
    )


def fine_tuning(trials: list[Trial]) -> str:
    """The fine-tuning trials in order: which depths the finalists reached, and how far."""
    return " ".join(
        f"{trial.params['freeze_depth']}:{trial.scores[-1] if trial.scores else 0:.2f}"
        f"{trial.state[0]}"
        for trial in trials
        if trial.phase != HEAD
    )


ROW_HEADER = (
    f"{'seed':>4} {'search':>7} {'grid':>7} {'default':>7} {'search_s':>9} {'grid_s':>8} "
    f"{'ratio':>6} {'picked_lr':>10} {'grid_lr':>9} {'best_lr':>9} {'3x':>3}"
)


def print_row(row: SeedRow) -> None:
    """Held-out accuracies; seconds (the search's with its best's training); learning rates."""
    print(
        f"{row.seed:4d} {row.search:7.3f} {row.grid:7.3f} {row.default:7.3f} "
        f"{row.search_seconds:9.1f} {row.grid_seconds:8.1f} "
        f"{row.search_seconds / row.grid_seconds:6.3f} {row.picked:10.2e} "
        f"{row.grid_rate:9.2e} {row.search_rate:9.2e} "
        f"{'yes' if within(row.picked, row.grid_rate) else 'no':>3}",
        flush=True,
    )


@dataclass(frozen=True)
class Minutes:
    """The search with a budget in seconds: head configurations it tried, and at that rate
    in the head phase's share of ten minutes."""

    budget: float
    heads: int
    projected: float
    seconds: float
    test: float | None  # its best spec's held-out accuracy (not trained in quick mode)


def ten_minutes(args: argparse.Namespace, digits: Digits, weights: Path) -> Minutes:
    train_positions, test_positions = target_split(digits, 0, args.per_class)
    data = digits.labelled(train_positions, TARGET.start)
    test = (digits.pixels(test_positions), digits.digits[test_positions] - TARGET.start)
    spec = search_spec(args, 0, {"seconds": args.budget_seconds})
    # Quick mode counts the head phase alone: the seeds' searches ran the fine-tuning path.
    found = run_search(spec, data, weights, fine_tune=not args.quick)
    projected = found.heads / max(found.head_seconds, 1e-9) * TEN_MINUTES * HEAD_SHARE
    accuracy = None
    if found.best is not None and not args.quick:
        best_spec = job_spec(spec, found.best.params, spec.dataset_version)
        best = trained(best_spec, data, weights, found.store)
        accuracy = held_out_accuracy(best.network.model, test)
    return Minutes(args.budget_seconds, found.heads, projected, found.seconds, accuracy)


def summary(rows: list[SeedRow], minutes: Minutes) -> dict[str, Any]:
    """The figures, each beside its goal; the per-seed differences' means."""
    search_grid = statistics.mean(100 * (row.search - row.grid) for row in rows)
    search_default = statistics.mean(100 * (row.search - row.default) for row in rows)
    compute = sum(row.search_seconds for row in rows) / sum(row.grid_seconds for row in rows)
    search_only = sum(row.search_seconds - row.training_seconds for row in rows) / sum(
        row.grid_seconds for row in rows
    )
    lr_seeds = sum(within(row.picked, row.grid_rate) for row in rows)
    # A budget of ten minutes counts its trials; a shorter one (quick mode) projects them.
    in_ten = minutes.heads if minutes.budget == TEN_MINUTES else round(minutes.projected)
    figures: dict[str, Any] = {
        "bench": "search",
        "seeds": len(rows),
        "search_test_accuracy_mean": statistics.mean(row.search for row in rows),
        "grid_test_accuracy_mean": statistics.mean(row.grid for row in rows),
        "default_test_accuracy_mean": statistics.mean(row.default for row in rows),
        "search_minus_grid_points": round(search_grid, 2),
        "compute_ratio": round(compute, 3),
        "compute_ratio_search_only": round(search_only, 3),
        "search_minus_default_points": round(search_default, 2),
        "head_trials_in_10_minutes": in_ten,
        "head_trials_counted": minutes.heads,
        "head_trials_budget_s": minutes.budget,
        "head_trials_per_10_minutes_projected": round(minutes.projected),
        "lr_within_3x_seeds": lr_seeds,
    }
    goals = [
        ("search_minus_grid_points", search_grid >= -0.5, "≥ -0.5, held-out points, mean"),
        ("compute_ratio", compute <= 0.25, "≤ 0.25: search + its best's training ÷ grid"),
        ("search_minus_default_points", search_default >= 2, "≥ 2"),
        ("head_trials_in_10_minutes", in_ten >= 60, "≥ 60"),
        ("lr_within_3x_seeds", lr_seeds >= math.ceil(2 * len(rows) / 3), "≥ 2 of 3"),
    ]
    print()
    for name, met, goal in goals:
        print(f"{name}={figures[name]} (goal {goal}: {'met' if met else 'NOT met'})")
    print(f"compute_ratio_search_only={search_only:.3f} (the search without its best's training)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20, help="training images per digit")
    parser.add_argument("--trials", type=int, default=30, help="head configurations")
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--depths", type=int, nargs="+", help="default: the search's own")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--grid-lr", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1])
    parser.add_argument("--grid-dropout", type=float, nargs="+", default=[0.0, 0.4])
    parser.add_argument("--grid-dense", type=int, nargs="+", default=[0, 128], help="0: none")
    parser.add_argument("--grid-depths", type=int, nargs="+", help="default: the search's")
    parser.add_argument("--pooling", nargs="+", default=["avg", "max"], choices=["avg", "max"])
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-images", type=int, default=1797, help="of digits 0–4")
    parser.add_argument(
        "--pretrain-freeze", choices=["none", "backbone"], default="none", help="none: whole"
    )
    parser.add_argument("--budget-seconds", type=float, default=TEN_MINUTES)
    add_backbone(parser)
    quick = {
        "seeds": 1,
        "trials": 3,
        "finalists": 1,
        "depths": [4],
        "head_epochs": 2,
        "fine_tune_epochs": 1,
        "grid_lr": [1e-3, 1e-2],
        "grid_dropout": [0.2],
        "grid_dense": [0],
        "grid_depths": [0],  # fine-tuning runs in the search's trials already
        "pooling": ["avg"],
        "pretrain_epochs": 1,
        "pretrain_images": 100,
        # Its weights file is all the rest reads: written alike from a frozen backbone, whose
        # training skips the whole network's backward pass (a third of a quick run's time).
        "pretrain_freeze": "backbone",
        "budget_seconds": 2.0,
    }
    args = parse_args(parser, quick)
    tf.get_logger().setLevel("ERROR")  # Keras's retracing notes: every job is a new model
    started = time.perf_counter()
    digits = load()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as scratch:
        weights = Path(scratch) / "digits-0-4.weights.h5"
        pretrain(digits, args, weights)
        print(
            f"target: digits 5–9, {args.per_class} training images each; search: "
            f"{args.trials} head trials, {args.finalists} finalists; grid: "
            f"{len(args.grid_lr) * len(args.grid_dropout) * len(args.grid_dense)} points "
            f"× the freeze depths\n",
            flush=True,
        )
        rows = [one_seed(args, digits, weights, seed) for seed in range(args.seeds)]
        print(f"\nheld-out test accuracy; seconds on this machine ({os.cpu_count()} CPUs)")
        print(ROW_HEADER)
        for row in rows:
            print_row(row)
        minutes = ten_minutes(args, digits, weights)
        as_trial, as_job = trial_cost(args, digits, weights, reps=1 if args.quick else 5)
    print(
        f"\na fine-tuning trial's train(): {as_trial:.2f} s scored as a trial, {as_job:.2f} s "
        f"as a job (calibrated, with its unknown-input score): {as_trial / as_job:.3f}"
    )
    print(
        f"\nsearch with a budget of {minutes.budget:g} s: {minutes.heads} head configurations "
        f"({minutes.projected:.0f} at that rate in ten minutes' head share), "
        f"{minutes.seconds:.0f} s in all"
        + ("" if minutes.test is None else f"; its best's held-out accuracy {minutes.test:.3f}")
    )
    figures = summary(rows, minutes)
    if minutes.test is not None:
        figures["budget_search_test_accuracy"] = minutes.test
    figures["trial_seconds_ratio"] = round(as_trial / as_job, 3)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(f"seconds={figures['seconds']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
