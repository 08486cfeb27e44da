"""Batch prediction: a batch job's throughput against the raw SavedModel at its best batch
size, on the same images, in one process on this CPU.

    python bench/batch.py [--images 2000] [--size 96] [--epochs 1] [--quick]
                          [--per-class N] [--freeze backbone] [--backbone NAME]

The demo's model (digits, MobileNetV2 or `--backbone` from random weights; bench/export.py's
`train_demo`; MobileNet under `--quick`)
is trained by the real worker at --size px. The images are --images JPEGs of 256×256 cut
from scikit-learn's sample photographs, zipped as a user would send them.
- raw: the SavedModel downloaded from the API, loaded with `tf.saved_model.load`, its
  `serve` called on the images decoded and resized as the service does (`to_pixels`), a
  loop a user would write, at batch sizes 1 to 128; the best is the baseline. Also `serve`
  alone on pixels decoded beforehand, for what decoding costs.
- job: POST /predictions with the zip, run by the worker (`run_until_idle`), timed by the
  job itself (reading the zip, decoding, the model, writing the results; the first run also
  loads the model) and by the wall clock around it; twice, cold and warm.
Ratios are job ÷ raw best. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from bench.export import start, train_demo
from bench.quick import add_backbone, parse_args

BATCH_SIZES = (1, 8, 32, 64, 128)


def photo_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """256×256 JPEG crops of scikit-learn's sample photographs, at random places."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    jpegs = []
    for number in range(count):
        photo = photos[number % len(photos)]
        top = int(rng.integers(0, photo.shape[0] - 256))
        left = int(rng.integers(0, photo.shape[1] - 256))
        out = io.BytesIO()
        Image.fromarray(photo[top : top + 256, left : left + 256]).save(out, "JPEG", quality=90)
        jpegs.append(out.getvalue())
    return jpegs


def raw_throughput(savedmodel: bytes, jpegs: list[bytes], size: int) -> dict[int, dict[str, float]]:
    """Images per second of the raw SavedModel per batch size: decode + serve, and serve."""
    import tensorflow as tf

    from service.ml.export import unpack_archive
    from service.ml.images import to_pixels

    with tempfile.TemporaryDirectory() as scratch:
        unpack_archive(savedmodel, Path(scratch))
        serve = tf.saved_model.load(scratch).signatures["serving_default"]
        pixels = np.stack([to_pixels(data, size) for data in jpegs]).astype(np.float32)
        serve(tf.constant(pixels[:8]))  # traced once, as a user's first call would
        figures = {}
        for batch in BATCH_SIZES:
            started = time.perf_counter()
            for first in range(0, len(jpegs), batch):
                chunk = [to_pixels(data, size) for data in jpegs[first : first + batch]]
                serve(tf.constant(np.stack(chunk).astype(np.float32)))
            with_decode = len(jpegs) / (time.perf_counter() - started)
            started = time.perf_counter()
            for first in range(0, len(jpegs), batch):
                serve(tf.constant(pixels[first : first + batch]))
            model_only = len(jpegs) / (time.perf_counter() - started)
            figures[batch] = {"decode_and_serve": with_decode, "serve_only": model_only}
            print(
                f"raw batch {batch:>3}: {with_decode:7.1f} images/s decoded + served, "
                f"{model_only:7.1f} served alone",
                flush=True,
            )
    return figures


def batch_job(client: Any, worker: Any, model_id: str, archive: bytes) -> dict[str, Any]:
    files = {"file": ("photos.zip", archive, "application/zip")}
    data = {"model_id": model_id, "top_k": "3"}
    queued = client.post("/predictions", data=data, files=files).raise_for_status().json()
    started = time.perf_counter()
    worker.run_until_idle()
    wall = time.perf_counter() - started
    record = client.get(f"/predictions/{queued['id']}").json()
    assert record["status"] == "succeeded" and not record["bad"], record
    return {**record, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=0, help="digits per class (0: all)")
    parser.add_argument("--freeze", choices=("none", "backbone"), default="none")
    add_backbone(parser)
    arguments = parse_args(
        parser, {"images": 16, "size": 32, "per_class": 12, "freeze": "backbone"}
    )
    with tempfile.TemporaryDirectory() as scratch:
        client, worker = start(Path(scratch))
        model_id, _ = train_demo(
            client,
            worker,
            arguments.epochs,
            arguments.size,
            arguments.per_class,
            arguments.freeze,
            arguments.backbone,
        )
        jpegs = photo_jpegs(arguments.images)
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            for number, data in enumerate(jpegs):
                zipped.writestr(f"photos/{number:05d}.jpg", data)
        savedmodel = client.get(f"/models/{model_id}/savedmodel").content
        raw = raw_throughput(savedmodel, jpegs, arguments.size)
        best = max(raw, key=lambda batch: raw[batch]["decode_and_serve"])
        baseline = raw[best]["decode_and_serve"]
        runs = [batch_job(client, worker, model_id, archive.getvalue()) for _ in ("cold", "warm")]
        for name, run in zip(("cold", "warm"), runs, strict=True):
            print(
                f"job ({name}): {run['images_per_second']:.1f} images/s by the job's own time "
                f"({run['seconds']:.2f} s), {run['images'] / run['wall']:.1f} by the wall clock; "
                f"÷ raw best (batch {best}, {baseline:.1f} images/s) = "
                f"{run['images_per_second'] / baseline:.2f}",
                flush=True,
            )
        warm = runs[1]
        print(
            f"images={arguments.images} size={arguments.size} "
            f"batch_predict_size={worker.settings.batch_predict_size} raw_best_batch={best} "
            f"raw_images_per_second={baseline:.1f} "
            f"job_images_per_second={warm['images_per_second']:.1f} "
            f"throughput_ratio={warm['images_per_second'] / baseline:.3f} "
            f"cold_throughput_ratio={runs[0]['images_per_second'] / baseline:.3f}"
        )


if __name__ == "__main__":
    main()
