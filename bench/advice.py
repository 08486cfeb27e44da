"""Advice time: what `POST /datasets/{id}/advice` costs the worker per 1,000 images, against
one plain pass of the backbone over the same images (the least any measurement could cost).

    python bench/advice.py [--images 1000] [--size 96] [--folds 5] [--quick]

MobileNetV2 at 96 px with a weights file (ImageNet weights cannot be downloaded here; a
seeded random weights file costs the same to run), so the advice makes both of its passes
(pretrained and random weights) and both probes. Run in this process: the advice through
`service.ml.probe.measure` as the worker calls it, the baseline as `backbone.predict` on the
decoded pixels. Then the same advice again with the features in the store (the second
advice, or a job with the same frozen backbone). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
from PIL import Image

from bench.quick import parse_args
from service.advice.spec import AdviceSpec
from service.ml.data import LabelledImages
from service.ml.features import MemoryFeatureStore
from service.ml.images import to_pixels
from service.ml.probe import ProbeSettings, measure

CLASSES = 5


class Quiet:
    def on_progress(self, progress: dict[str, int]) -> None: ...

    def on_epoch(self, row: dict[str, float]) -> None: ...

    def should_stop(self) -> bool:
        return False


def images(count: int, size: int) -> LabelledImages:
    """JPEG photos' stand-ins: smooth colour fields with noise, a class per hue."""
    rng = np.random.default_rng(0)
    data, labels = [], []
    for number in range(count):
        label = number % CLASSES
        base = np.zeros((size, size, 3)) + rng.uniform(0, 255, 3) * 0.3
        base[..., label % 3] += 120 + 20 * (label // 3)
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        data.append(buffer.getvalue())
        labels.append(label)
    return LabelledImages(
        images=data,
        labels=np.array(labels, dtype=np.int32),
        classes=[f"class{n}" for n in range(CLASSES)],
        ids=list(range(1, count + 1)),
        filenames=[f"{n}.jpg" for n in range(count)],
    )


def baseline_seconds(sample: LabelledImages, size: int, weights: Path) -> float:
    """Decode and one backbone pass: the floor under any feature-based measurement."""
    keras.backend.clear_session()
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    backbone.load_weights(str(weights))
    clock = time.perf_counter()
    pixels = np.stack([to_pixels(data, size) for data in sample.images]).astype("float32")
    backbone.predict(keras.applications.mobilenet_v2.preprocess_input(pixels), verbose=0)
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold probes")
    args = parse_args(parser, {"images": 20, "size": 32, "folds": 2})
    sample = images(args.images, args.size)
    spec = AdviceSpec.model_validate(
        {
            "dataset_id": "d_bench",
            "backbone": {"name": "MobileNetV2", "weights": "file:w", "input_size": args.size},
            "max_images": args.images,
            "folds": args.folds,
        }
    )
    with tempfile.TemporaryDirectory() as directory:
        weights = Path(directory) / "backbone.weights.h5"
        keras.utils.set_random_seed(1)
        keras.applications.MobileNetV2(
            include_top=False, weights=None, input_shape=(args.size, args.size, 3)
        ).save_weights(str(weights))
        baseline = baseline_seconds(sample, args.size, weights)
        store = MemoryFeatureStore()
        clock = time.perf_counter()
        settings = ProbeSettings(backbone=spec.backbone, folds=spec.folds, seed=spec.seed)
        first = measure(settings, sample, Quiet(), backbone_weights=weights, store=store)
        advice = time.perf_counter() - clock
        clock = time.perf_counter()
        again = measure(settings, sample, Quiet(), backbone_weights=weights, store=store)
        cached = time.perf_counter() - clock
    per = 1000 / args.images
    print(f"MobileNetV2 at {args.size} px, {args.images} images, {CLASSES} classes")
    print(f"baseline (decode + one backbone pass): {baseline * per:.1f} s per 1,000")
    print(
        f"advice (two passes, two {first.pretrained.folds}-fold probes): {advice * per:.1f} s "
        f"per 1,000 — features {first.seconds['features'] * per:.1f} s, probes "
        f"{first.seconds['probe'] * per:.1f} s; {advice / baseline:.2f}× the baseline"
    )
    print(
        f"advice again, pretrained features from the store (reused={again.reused}): "
        f"{cached * per:.1f} s per 1,000; {cached / baseline:.2f}× the baseline"
    )
    print(
        f"advice_s_per_1000={advice * per:.2f} advice_ratio={advice / baseline:.2f} "
        f"cached_s_per_1000={cached * per:.2f} cached_ratio={cached / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
