"""The review queue (service/ml/review.py) as active learning: how many labels does it need
to reach the accuracy random picks reach with 300, against margin alone?

    python bench/active.py [--seeds 5] [--budget 300] [--steps 10 30] [--epochs 20]
                           [--backbone NAME] [--quick]

A simulation on scikit-learn's digits (1,797 8×8 images, 10 classes), upscaled to 32 px RGB
(0–255) as bench/unknowns.py does, with the service's own network: `build_network` from
random weights (ImageNet weights cannot be downloaded here), its frozen backbone's pooled
features from `FeatureExtractor`, computed once per run. The backbone is ResNet50, not the
benches' MobileNetV2: from random weights the MobileNets' stacks of BatchNormalization and
depthwise convolutions shrink every feature to ~1e-12, which a Dense head cannot learn from,
while ResNet50's residual sums keep them near unit scale (a logistic-regression probe on 70 %
of the digits reaches ~0.97 on the rest; the service's head, printed as the ceiling, 0.92–0.96:
Adam's steps on these uncentred features make its accuracy wobble by a few points from one
retrain to the next, so a single run's labels needed move by 10–20 between dropout seeds).
The head is the one a job trains on cached features (`FeatureExtractor.head`: dropout 0.2, a
Dense softmax), compiled by `compile_for_stage` (Adam, 1e-3, categorical cross-entropy) and
fitted on the service's `Epochs` batches (32). After each round it is retrained for `--epochs`
epochs, warm-started from the previous round's weights, with a fresh optimizer.

Per seed: 30 % of the digits, stratified, are the test set; the rest is the unlabelled pool,
20 of it labelled at random to start. Each round labels `step` more (the first of `--steps`,
10, is the issue's protocol), chosen by
- queue: `review.rank(probabilities, features, step, labelled=…)`: margin shortlist, then
  k-center whose distances start from the images labelled so far (as the service's queue
  starts from its dataset's newest labelled images);
- random: uniformly from the pool;
- margin: `review.rank(..., diverse=False)`: the smallest margins alone;
then retrains the head and measures test accuracy, up to `--budget` labels.
Printed per step: each strategy's median test accuracy over the seeds at about 50/100/150/
200/300 labels; per seed the target (random's accuracy at the last round) and the labels each
strategy needed to reach it ("300+": not within the budget); the medians of those (the goal
for the queue at 10 a round: ≤ 150, and fewer than margin alone). Then the slowest
warm-started retrain of a round (`warm_retrain_s`, goal ≤ 60 s). The extra steps (30 a round
by default) are no goal: they show how the diversity step fares when a round is larger.
The last line is machine-readable: the first step's figures (labels never reached count as
the budget + the step; `random_300_accuracy_median` is random's at the last round, 300 labels
unless `--budget`), the extra steps' labels as `queue_labels_median_step30` and so on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from bench.quick import add_backbone, parse_args
from service.ml import review
from service.ml.build import build_network
from service.ml.features import FeatureExtractor
from service.ml.pipeline import Epochs
from service.ml.split import stratified_split
from service.ml.train import compile_for_stage
from service.training.spec import JobSpec

BACKBONE = "ResNet50"  # see the docstring: random-weight MobileNets give no usable features
START = 20  # labels before the first round
TEST_FRACTION = 0.3
MILESTONES = (50, 100, 150, 200, 300)
CLASSES = 10

# Picks `count` positions into the pool from the pool's probabilities and features, and
# the features of the images labelled so far.
Chooser = Callable[[np.ndarray, np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]
# Test accuracy by the number of labels: one strategy, one seed.
Curve = dict[int, float]


def queue(
    probabilities: np.ndarray, features: np.ndarray, labelled: np.ndarray, count: int, _: object
) -> np.ndarray:
    picks = review.rank(probabilities, features, count, labelled=labelled)
    return np.array([pick.index for pick in picks])


def random(
    probabilities: np.ndarray, _: object, __: object, count: int, rng: np.random.Generator
) -> np.ndarray:
    return rng.choice(len(probabilities), size=count, replace=False)


def margin(
    probabilities: np.ndarray, features: np.ndarray, _: object, count: int, __: object
) -> np.ndarray:
    picks = review.rank(probabilities, features, count, diverse=False)
    return np.array([pick.index for pick in picks])


STRATEGIES: dict[str, Chooser] = {"queue": queue, "random": random, "margin": margin}


def digits(images: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and labels of `images` digits, a stratified sample when fewer than all."""
    from sklearn.datasets import load_digits

    data = load_digits()
    chosen = np.arange(len(data.target))
    if images < len(chosen):
        chosen = stratified_split(data.target, images / len(chosen), seed=0)[1]
    pixels = [
        np.asarray(
            Image.fromarray((data.images[i] * 255 / 16).astype(np.uint8))
            .resize((size, size))
            .convert("RGB")
        )
        for i in chosen
    ]
    return np.stack(pixels).astype(np.float32), data.target[chosen].astype(np.int32)


@dataclass
class Head:
    """The service's head on cached features. Every retrain starts from the weights it is
    given and from the optimizer as `compile_for_stage` built it, as a job's new stage does;
    restoring that state instead of compiling again keeps the traced training step."""

    model: keras.Model
    initial: list[np.ndarray]
    optimizer_state: list[np.ndarray]
    epochs: int
    batch_size: int
    seconds: list[float] = field(default_factory=list)

    def retrain(
        self, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, seed: int
    ) -> list[np.ndarray]:
        """The weights after `epochs` epochs on (x, y), batched as a job's cached stage is
        (each epoch shuffled by `seed` and its number)."""
        clock = time.perf_counter()
        self.model.set_weights(weights)
        variables = self.model.optimizer.variables
        for variable, value in zip(variables, self.optimizer_state, strict=True):
            variable.assign(value)
        rows = tf.data.Dataset.from_tensor_slices((x, np.eye(CLASSES, dtype=np.float32)[y]))
        epochs = Epochs(rows, len(x), self.batch_size, seed, pixels=False)
        self.model.fit(
            epochs.batches(0, self.epochs),
            steps_per_epoch=epochs.steps,
            epochs=self.epochs,
            shuffle=False,  # the dataset shuffles itself, by the seed
            verbose=0,
        )
        self.seconds.append(time.perf_counter() - clock)
        return self.model.get_weights()

    def reseed(self, seed: int) -> None:
        """Dropout's masks from `seed` alone, whatever trained before: its generator's state
        is a variable of the model, but none of the weights `set_weights` restores."""
        for variable in self.model.variables:
            if variable.path.endswith("seed_generator_state"):
                variable.assign([seed + 1, 0])  # + 1: never the (0, 0) "no seed"

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(x, training=False))


def network(backbone: str, size: int, epochs: int, pixels: np.ndarray) -> tuple[np.ndarray, Head]:
    """The frozen backbone's features of `pixels`, and the head that trains on them."""
    spec = JobSpec.model_validate(
        {
            "dataset_id": "d_bench",
            "backbone": {"name": backbone, "weights": None, "input_size": size},
            "freeze": {"mode": "backbone"},
            "training": {"epochs": epochs},
        }
    )
    keras.utils.set_random_seed(spec.training.seed)
    extractor = FeatureExtractor(build_network(spec, CLASSES, None))
    batches = tf.data.Dataset.from_tensor_slices(pixels).batch(spec.training.batch_size)
    features = extractor.extract(batches, len(pixels))
    model = extractor.head
    compile_for_stage(model, spec.stages[0], spec.training)
    state = [variable.numpy() for variable in model.optimizer.variables]
    return features, Head(model, model.get_weights(), state, epochs, spec.training.batch_size)


def curve(
    choose: Chooser,
    head: Head,
    data: tuple[np.ndarray, np.ndarray],
    seed: int,
    step: int,
    budget: int,
) -> Curve:
    """One strategy's rounds on one seed's split, `step` labels a round up to `budget`."""
    features, labels = data
    pool, test = stratified_split(labels, TEST_FRACTION, seed)
    rng = np.random.default_rng(seed)
    labelled = rng.choice(pool, size=START, replace=False)
    weights = head.initial
    head.reseed(seed)
    accuracy: Curve = {}
    while True:
        # A shuffling seed per round and seed: no two rounds batch alike.
        shuffle = seed * 1000 + len(labelled)
        weights = head.retrain(weights, features[labelled], labels[labelled], shuffle)
        predicted = head.probabilities(features[test]).argmax(axis=1)
        accuracy[len(labelled)] = float(np.mean(predicted == labels[test]))
        if len(labelled) + step > budget:
            return accuracy
        rest = np.setdiff1d(pool, labelled)
        probabilities = head.probabilities(features[rest])
        picks = choose(probabilities, features[rest], features[labelled], step, rng)
        labelled = np.concatenate([labelled, rest[picks]])


def ceiling(head: Head, data: tuple[np.ndarray, np.ndarray], rounds: int) -> float:
    """Test accuracy of the head trained on the whole pool (seed 0's split), `rounds`
    retrains long: what the features allow the labels to reach."""
    features, labels = data
    pool, test = stratified_split(labels, TEST_FRACTION, 0)
    weights = head.initial
    head.reseed(0)
    for number in range(rounds):
        weights = head.retrain(weights, features[pool], labels[pool], number)
    return float(np.mean(head.probabilities(features[test]).argmax(axis=1) == labels[test]))


def labels_needed(accuracy: Curve, target: float) -> int | None:
    """The fewest labels at which the accuracy reached `target`; None: never."""
    return next((count for count, value in sorted(accuracy.items()) if value >= target), None)


def print_accuracy(curves: dict[str, list[Curve]]) -> None:
    """Median test accuracy at the last round at or below each milestone."""
    counts = sorted(curves["random"][0])
    columns = sorted({max(c for c in counts if c <= m) for m in MILESTONES if m >= counts[0]})
    print(f"median test accuracy over {len(curves['random'])} seeds, by labels")
    print(f"{'strategy':<10}" + "".join(f"{count:>8d}" for count in columns))
    for name, runs in curves.items():
        cells = [statistics.median(run[count] for run in runs) for count in columns]
        print(f"{name:<10}" + "".join(f"{value:8.3f}" for value in cells))


def print_needed(curves: dict[str, list[Curve]], step: int) -> dict[str, float]:
    """Per seed the target and the labels each strategy needed; their medians (never:
    the last round + `step`, so that a median never reached reads as past the budget)."""
    last = max(curves["random"][0])
    print(f"labels needed to reach random's accuracy at {last} labels")
    print(f"{'seed':>4} {'target':>7}" + "".join(f"{name:>8}" for name in curves))
    counts: dict[str, list[int]] = {name: [] for name in curves}
    for seed, final in enumerate(curves["random"]):
        row = f"{seed:4d} {final[last]:7.3f}"
        for name, runs in curves.items():
            count = labels_needed(runs[seed], final[last])
            counts[name].append(last + step if count is None else count)
            row += f"{f'{last}+' if count is None else count:>8}"
        print(row)
    medians = {name: float(statistics.median(values)) for name, values in counts.items()}
    shown = ", ".join(f"{name} {value:g}" for name, value in medians.items())
    print(f"median labels needed: {shown} ({last + step}: not within the budget)")
    return medians


def simulate(
    head: Head, data: tuple[np.ndarray, np.ndarray], args: argparse.Namespace, step: int
) -> tuple[dict[str, list[Curve]], dict[str, float]]:
    clock = time.perf_counter()
    curves: dict[str, list[Curve]] = {name: [] for name in STRATEGIES}
    for seed in range(args.seeds):
        for name, choose in STRATEGIES.items():
            curves[name].append(curve(choose, head, data, seed, step, args.budget))
    print(f"\n{step} labels a round ({time.perf_counter() - clock:.0f} s)")
    print_accuracy(curves)
    return curves, print_needed(curves, step)


def summary(
    args: argparse.Namespace, results: dict[int, tuple[dict[str, list[Curve]], dict[str, float]]]
) -> dict[str, Any]:
    first, *extra = args.steps
    curves, medians = results[first]
    last = max(curves["random"][0])
    figures: dict[str, Any] = {
        "bench": "active",
        "seeds": args.seeds,
        "step": first,
        "backbone": args.backbone,
        "queue_labels_median": medians["queue"],
        "margin_labels_median": medians["margin"],
        "random_labels_median": medians["random"],
        "random_300_accuracy_median": statistics.median(run[last] for run in curves["random"]),
    }
    for step in extra:
        figures |= {f"{name}_labels_median_step{step}": v for name, v in results[step][1].items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=300, help="labels at most")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30], help="labels a round")
    parser.add_argument("--epochs", type=int, default=20, help="head epochs per round")
    parser.add_argument("--images", type=int, default=1797, help="digits used (at most 1797)")
    parser.add_argument("--size", type=int, default=32, help="input side in pixels")
    add_backbone(parser)
    parser.set_defaults(backbone=BACKBONE)
    quick = {"seeds": 1, "budget": 60, "steps": [10], "epochs": 5, "images": 300}
    args = parse_args(parser, {"backbone": BACKBONE, **quick})
    started = time.perf_counter()
    pixels, labels = digits(args.images, args.size)
    features, head = network(args.backbone, args.size, args.epochs, pixels)
    print(
        f"{len(labels)} digits, {args.backbone} at {args.size} px from random weights: "
        f"{features.shape[1]} features each, in {time.perf_counter() - started:.1f} s; "
        f"{args.seeds} seeds, {START} labels then rounds up to {args.budget}, "
        f"{args.epochs} head epochs a round",
        flush=True,
    )
    results = {step: simulate(head, (features, labels), args, step) for step in args.steps}
    # The first retrain also traces the training step: counted, as a worker pays it too.
    warm, typical = max(head.seconds), statistics.median(head.seconds)
    top = ceiling(head, (features, labels), rounds=3)
    print(f"\nceiling: the head on the whole pool, 3 rounds long: test accuracy {top:.3f}")
    print(
        f"warm_retrain_s={warm:.2f} (slowest warm-started head retrain of a round, median "
        f"{typical:.2f} s; goal ≤ 60)"
    )
    figures = summary(args, results)
    figures |= {"warm_retrain_s": round(warm, 3), "ceiling_accuracy": top}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
