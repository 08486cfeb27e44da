"""Training speed: feature caching for frozen backbones, and the worker's overhead per epoch.

    python bench/train.py [--per-class 150] [--size 96] [--epochs 10] [--backbone NAME] [--quick]

One data set, one process, both sides measured here and now, on MobileNetV2 (MobileNet under
`--quick`):
- cache_ratio: a frozen-backbone job in the service's trainer, one backbone pass over the
  data then 10 head epochs on the cached features, ÷ plain `model.fit` of the same network
  for 10 epochs on pixels already decoded in memory. (Building the network, which both
  need, is left out of both; the figure with everything in `train()` is printed too.)
- overhead_ratio: for a job that cannot use the cache (the top of the backbone trains), the
  median epoch in the real worker (SQLite queue, heartbeats, progress writes, tf.data decode)
  ÷ the median epoch of plain `model.fit` on decoded pixels; the first epoch (tracing) is left
  out of both.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
from PIL import Image

from bench.quick import add_backbone, parse_args
from service.ml.build import build_network
from service.ml.data import LabelledImages
from service.ml.images import to_pixels
from service.ml.split import stratified_split
from service.ml.train import compile_for_stage, train
from service.training.spec import JobSpec

CLASSES = {"red": 0, "green": 1, "blue": 2}


class Silent:
    def on_progress(self, progress: dict[str, int]) -> None: ...

    def on_epoch(self, row: dict[str, float]) -> None: ...

    def should_stop(self) -> bool:
        return False


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def make_images(per_class: int, side: int) -> LabelledImages:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for channel in CLASSES.values():
        for _ in range(per_class):
            pixels = rng.integers(0, 90, (side, side, 3), dtype=np.uint8)
            pixels[..., channel] += 140
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            images.append(buffer.getvalue())
            labels.append(channel)
    return LabelledImages(images, np.array(labels, dtype=np.int32), list(CLASSES))


def plain_fit(spec: JobSpec, data: LabelledImages, epochs: int) -> tuple[float, list[float]]:
    """Keras alone: the network built the same way, fit on decoded pixels held in memory."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.training.seed)
    training = spec.training
    train_index, val_index = stratified_split(data.labels, training.validation_split, 0)
    pixels = np.stack([to_pixels(image, spec.input_size) for image in data.images]).astype(
        "float32"
    )
    onehot = np.eye(len(data.classes), dtype="float32")[data.labels]
    network = build_network(spec, len(data.classes), None)
    compile_for_stage(network.model, spec.stages[0], training)
    timer = EpochTimer()
    started = time.perf_counter()
    network.model.fit(
        pixels[train_index],
        onehot[train_index],
        validation_data=(pixels[val_index], onehot[val_index]),
        batch_size=training.batch_size,
        epochs=epochs,
        callbacks=[timer],
        verbose=0,
    )
    return time.perf_counter() - started, timer.seconds


def worker_epochs(spec: JobSpec, data: LabelledImages, scratch: Path) -> list[float]:
    """The job through the real API and worker on a fresh SQLite file; its epochs' seconds."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings
    from service.job_kinds import KINDS
    from service.jobs.runner import Worker
    from service.storage.db import Database

    settings = Settings(_env_file=None, data_dir=scratch, database_url="", api_key=None)
    database = Database(settings.database_url)
    database.upgrade()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
            archive.writestr(f"{data.classes[label]}/{number:05d}.png", image)
    with TestClient(create_app(settings)) as client:
        files = {"file": ("bench.zip", buffer.getvalue(), "application/zip")}
        dataset = client.post("/datasets", files=files).json()
        body = spec.model_dump(mode="json") | {"dataset_id": dataset["id"]}
        job_id = client.post("/jobs", json=body).json()["id"]
        keras.backend.clear_session()
        Worker(database, settings, KINDS).run_until_idle()
        job = client.get(f"/jobs/{job_id}").json()
    database.dispose()
    assert job["status"] == "succeeded", job
    return [row["seconds"] for row in job["history"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--overhead-epochs", type=int, default=4)
    add_backbone(parser)
    args = parse_args(parser, {"per_class": 8, "size": 32, "epochs": 2, "overhead_epochs": 2})

    data = make_images(args.per_class, args.size + 32)
    common = {
        "dataset_id": "d_bench",
        "backbone": {"name": args.backbone, "weights": None, "input_size": args.size},
        "head": {"pooling": "avg", "dense": [64], "dropout": 0.2},
        "training": {"epochs": args.epochs, "batch_size": 32, "validation_split": 0.2},
    }
    frozen = JobSpec.model_validate({**common, "freeze": {"mode": "backbone"}})
    print(f"{len(data.images)} images, {args.backbone} at {args.size} px, {args.epochs} epochs")

    plain_seconds, _ = plain_fit(frozen, data, args.epochs)
    print(f"plain model.fit, frozen backbone:        {plain_seconds:8.2f} s")
    keras.backend.clear_session()
    started = time.perf_counter()
    result = train(frozen, data, Silent(), backbone_weights=None)
    everything = time.perf_counter() - started
    assert result.cached_stages == [1]
    phases = result.seconds
    cached_seconds = phases["features"] + phases["fit"]
    print(
        f"cached: backbone pass + {args.epochs} head epochs: {cached_seconds:8.2f} s "
        f"({phases['features']:.2f} + {phases['fit']:.2f})"
    )
    print(
        f"cached, everything in train():           {everything:8.2f} s "
        f"(ratio {everything / plain_seconds:.3f}; build {phases['build']:.2f}, "
        f"decode and evaluate the rest)"
    )

    partial = JobSpec.model_validate(
        {
            **common,
            "freeze": {"mode": "partial", "trainable_from": -30},
            "training": {**common["training"], "epochs": args.overhead_epochs},
        }
    )
    _, plain_epochs = plain_fit(partial, data, args.overhead_epochs)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        job_epochs = worker_epochs(partial, data, Path(scratch))
    plain_epoch = statistics.median(plain_epochs[1:])
    worker_epoch = statistics.median(job_epochs[1:])
    print(f"epoch, top 30 layers training, plain:    {plain_epoch:8.3f} s")
    print(f"epoch, same job in the worker:           {worker_epoch:8.3f} s")
    print(f"overhead_ratio={worker_epoch / plain_epoch:.3f}")
    print(f"cache_ratio={cached_seconds / plain_seconds:.3f}")


if __name__ == "__main__":
    main()
