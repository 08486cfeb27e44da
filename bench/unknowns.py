"""Unknown inputs: how well each model's `ood_score` tells new images of its classes from
images of none, against the maximum-softmax baseline and the other candidate methods, and
what the score adds to a prediction's latency.

    python bench/unknowns.py [--seeds 3] [--epochs 12] [--size 32] [--runs 300]
                             [--freeze none|backbone] [--backbone NAME] [--quick]

Per seed, in this process: a model trained by the worker's own training function
(`service.ml.train.train`, which fits the score at the end as a job does) on scikit-learn's digits
5–7 (8×8, upscaled to 32 px), MobileNetV2 (`--backbone`) from random weights (ImageNet weights
cannot be downloaded here), every layer trained (`--quick`: MobileNet, frozen). Three quarters of
the 5–7 digits train (a fifth of those held out for validation, as a job does); the last quarter is
the **known** test set.
Unknown: digits 8 and 9 (**near**), uniform noise and crops of scikit-learn's two sample
photographs (**far**; scikit-learn's, not scikit-image's: the same kind of image, without
another package).

Each method ranks the known test images against each unknown set (AUROC, 1.0: every unknown
scored above every known):
- `ood_score`: the service's (service/ml/unknowns.py: Mahalanobis at each stage depth,
  standardised on the validation split, the largest);
- `msp`: 1 − the top softmax probability (Hendrycks & Gimpel 2017), the baseline;
- `energy`: −logsumexp of the logits (Liu et al. 2020);
- `knn`: distance to the 5th nearest training image on L2-normalised final pooled features
  (Sun et al. 2022);
- `mahalanobis_final`: Mahalanobis distance on the final pooled features alone (Lee et al.
  2018 without the ensemble).
Then: the share of known test images flagged at the model's threshold (asked: 5 %), and the
latency of one image through the served graph with and without the score (the stored
SavedModel loaded and frozen as the API does; p50 and p95 of --runs calls). The last line is
machine-readable. Last, drift: the API's monitor (service/monitoring/drift.py) fed each
model's own scores, 8 images a request: 5,000 known images, then a stream of 30 % unknowns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from bench.quick import add_backbone, parse_args

METHODS = ("ood_score", "msp", "energy", "knn", "mahalanobis_final")
UNKNOWN_SETS = ("near", "noise", "photos")


class Quiet:
    def on_progress(self, progress: dict[str, int]) -> None: ...

    def on_epoch(self, row: dict[str, float]) -> None: ...

    def should_stop(self) -> bool:
        return False


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    truth = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return float(roc_auc_score(truth, np.r_[known, unknown]))


def digit_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((size, size))
    return np.asarray(image.convert("RGB"))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def image_sets(seed: int, size: int, limit: int) -> dict[str, Any]:
    """Training digits (PNG bytes and labels), and the known and unknown test pixels."""
    from sklearn.datasets import load_digits, load_sample_images

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    known = [i for i in order if digits.target[i] in (5, 6, 7)][:limit]
    near = [i for i in order if digits.target[i] in (8, 9)][: limit // 2]
    cut = len(known) * 3 // 4
    photos = load_sample_images().images
    crops = []
    for _ in range(len(near)):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(size, 200))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size))
        crops.append(np.asarray(crop))
    return {
        "train": [png(digit_pixels(digits.images[i], size)) for i in known[:cut]],
        "labels": np.array([digits.target[i] - 5 for i in known[:cut]], dtype=np.int32),
        "known": np.stack([digit_pixels(digits.images[i], size) for i in known[cut:]]),
        "near": np.stack([digit_pixels(digits.images[i], size) for i in near]),
        "noise": rng.integers(0, 256, (len(near), size, size, 3)).astype(np.uint8),
        "photos": np.stack(crops),
    }


def train_model(sets: dict[str, Any], seed: int, args: argparse.Namespace) -> Any:
    from service.ml.data import LabelledImages
    from service.ml.train import train
    from service.training.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "dataset_id": "bench",
            "backbone": {"name": args.backbone, "weights": None, "input_size": args.size},
            "head": {"pooling": "avg", "dropout": 0.2},
            "freeze": {"mode": args.freeze},
            "training": {
                "epochs": args.epochs,
                "batch_size": 32,
                "learning_rate": 0.001,
                "seed": seed,
            },
        }
    )
    data = LabelledImages(images=sets["train"], labels=sets["labels"], classes=["5", "6", "7"])
    started = time.perf_counter()
    result = train(spec, data, Quiet(), backbone_weights=None, feature_cache=False)
    print(
        f"seed {seed}: trained in {time.perf_counter() - started:.0f} s, validation accuracy "
        f"{result.metrics.get('val_accuracy', float('nan')):.3f}",
        flush=True,
    )
    return result


def method_scores(result: Any, sets: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Every method's score (higher: stranger) of every test set."""
    import tensorflow as tf

    from service.ml.unknowns import Tap, distances, fit_detector, pooled_features, scores_of

    tap = Tap(result.network.model)

    def features(pixels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        batches = tf.data.Dataset.from_tensor_slices(pixels.astype(np.float32)).batch(64)
        return pooled_features(tap, batches)

    output = tap.head[-1]
    kernel, bias = (np.asarray(weight) for weight in output.weights)
    train_pooled, _ = features(
        np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in sets["train"]])
    )
    final_train = train_pooled[-1]
    final_only = fit_detector(
        tap.layers[-1:], ([final_train], sets["labels"]), None, 3, 0.05
    ).depths[0]
    normalised_train = final_train / np.linalg.norm(final_train, axis=1, keepdims=True)
    scores: dict[str, dict[str, np.ndarray]] = {method: {} for method in METHODS}
    for name in ("known", *UNKNOWN_SETS):
        pooled, probabilities = features(sets[name])
        final = pooled[-1]
        logits = final @ kernel + bias
        normalised = final / np.linalg.norm(final, axis=1, keepdims=True)
        scores["ood_score"][name] = scores_of(result.unknowns, pooled)
        scores["msp"][name] = 1 - probabilities.max(axis=1)
        top = logits.max(axis=1)
        scores["energy"][name] = -(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))
        scores["knn"][name] = -np.sort(normalised @ normalised_train.T, axis=1)[:, -5]
        scores["mahalanobis_final"][name] = distances(final, final_only)
    return scores


def latency(result: Any, size: int, runs: int) -> dict[str, float]:
    """One image through the served graph (frozen, as the API loads it), with and without the
    score: milliseconds at p50 and p95."""
    import tensorflow as tf

    from service.ml.export import export_savedmodel, sha256
    from service.ml.frozen import frozen_serve
    from service.ml.model_cache import ModelCache, ModelSource

    archive = export_savedmodel(result.network.model, result.temperature, result.unknowns)
    with tempfile.TemporaryDirectory() as scratch:
        cache = ModelCache(Path(scratch), capacity=1)
        source = ModelSource("m_bench", sha256(archive), ["5", "6", "7"], size, lambda: archive)
        with_score = cache.get(source)
        assert with_score.frozen and with_score.unknowns is not None
        stored = tf.saved_model.load(next(Path(scratch).glob("m_bench-*")).as_posix())
        plain = frozen_serve("m_bench", stored.serve, size)
        assert plain is not None
        image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        timings: dict[str, list[float]] = {"serve": [], "with_score": []}
        calls = {"serve": plain, "with_score": with_score.serve}
        for _ in range(10):
            for call in calls.values():
                call(image)
        for _ in range(runs):  # interleaved, so both meet the same machine
            for name, call in calls.items():
                started = time.perf_counter()
                np.asarray(call(image))
                timings[name].append((time.perf_counter() - started) * 1000)
    figures = {}
    for name, values in timings.items():
        figures[f"{name}_p50_ms"] = statistics.median(values)
        figures[f"{name}_p95_ms"] = float(np.percentile(values, 95))
    figures["added_p95_ms"] = figures["with_score_p95_ms"] - figures["serve_p95_ms"]
    return figures


def drift(result: Any, scores: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """The API's drift monitor fed the model's own scores, 8 images a request: 5,000 known
    test images (drawn again and again from the held-out digits), then a stream of 30 %
    unknowns (near and far alike). False alarms during the first; images until it fires in
    the second."""
    from service.monitoring.drift import DriftMonitor

    rng = np.random.default_rng(seed)
    reference = result.unknowns.thresholds
    threshold = reference.threshold()
    fired: list[bool] = []
    monitor = DriftMonitor(on_change=lambda model_id, test: fired.append(test.drifting))

    def send(stream: np.ndarray) -> int | None:
        for start in range(0, len(stream), 8):
            batch = stream[start : start + 8]
            monitor.observe("m", reference, batch, [bool(s > threshold) for s in batch])
            if fired and fired[-1]:
                return start + len(batch)
        return None

    known = scores["known"]
    strange = np.concatenate([scores[name] for name in UNKNOWN_SETS])
    send(rng.choice(known, 5000))
    false_alarms = sum(fired)
    fired.clear()
    mixed = rng.choice(known, 2000)
    swapped = rng.random(2000) < 0.3
    mixed[swapped] = rng.choice(strange, int(swapped.sum()))
    to_fire = send(mixed)
    return {
        "drift_false_alarms": float(false_alarms),
        "drift_images_to_fire": float(to_fire) if to_fire is not None else float("nan"),
        "drift_reference_images": float(reference.images),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--limit", type=int, default=10_000, help="digits 5–7 used, at most")
    parser.add_argument("--freeze", default="none", choices=["none", "backbone"])
    add_backbone(parser)
    quick = {"seeds": 1, "epochs": 1, "runs": 10, "limit": 90, "freeze": "backbone"}
    args = parse_args(parser, quick, argv)

    per_seed = []
    for seed in range(args.seeds):
        sets = image_sets(seed, args.size, args.limit)
        result = train_model(sets, seed, args)
        scores = method_scores(result, sets)
        threshold = result.unknowns.threshold
        row: dict[str, Any] = {
            "seed": seed,
            "auroc": {
                method: {name: auroc(s["known"], s[name]) for name in UNKNOWN_SETS}
                for method, s in scores.items()
            },
            "known_flagged": float(np.mean(scores["ood_score"]["known"] > threshold)),
            "validation_flagged": result.unknowns.report["flagged_share"],
        }
        row["drift"] = drift(result, scores["ood_score"], seed)
        if seed == 0:
            row["latency"] = latency(result, args.size, args.runs)
        per_seed.append(row)
        print(f"seed {seed}: AUROC per unknown set ({', '.join(UNKNOWN_SETS)})", flush=True)
        for method, figures in row["auroc"].items():
            print(f"  {method:18s} " + "  ".join(f"{figures[n]:.3f}" for n in UNKNOWN_SETS))
        print(f"  known test images flagged at the 5 % threshold: {row['known_flagged']:.3f}")
        figures = row["drift"]
        print(
            f"  drift: {figures['drift_false_alarms']:.0f} alarms in 5,000 known images; fired "
            f"{figures['drift_images_to_fire']:.0f} images into 30 % unknowns "
            f"({figures['drift_reference_images']:.0f} validation images)"
        )

    mean = {
        method: {
            name: statistics.mean(r["auroc"][method][name] for r in per_seed)
            for name in UNKNOWN_SETS
        }
        for method in METHODS
    }
    timing = per_seed[0]["latency"]
    print(
        f"one image: serve p95 {timing['serve_p95_ms']:.2f} ms, with the score "
        f"{timing['with_score_p95_ms']:.2f} ms (added {timing['added_p95_ms']:.2f} ms)"
    )
    figures = {
        "bench": "unknowns",
        "seeds": args.seeds,
        "epochs": args.epochs,
        "mean_auroc": mean,
        "near_auroc": mean["ood_score"]["near"],
        "near_gain_over_msp": mean["ood_score"]["near"] - mean["msp"]["near"],
        "far_auroc_min": min(mean["ood_score"][n] for n in ("noise", "photos")),
        "known_flagged": statistics.mean(r["known_flagged"] for r in per_seed),
        "added_p95_ms": timing["added_p95_ms"],
        "drift_false_alarms": sum(r["drift"]["drift_false_alarms"] for r in per_seed),
        "drift_images_to_fire_max": max(r["drift"]["drift_images_to_fire"] for r in per_seed),
        "per_seed": per_seed,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
