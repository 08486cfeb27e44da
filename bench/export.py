"""Exports: per format, the file's size, its load time and its latency at batch 1 on this
CPU, each against the SavedModel the service stores, with the parity the worker measured.

    python bench/export.py [--epochs 5] [--size 32] [--runs 300] [--quick]
                           [--per-class N] [--freeze backbone] [--formats F …] [--loads 3]
                           [--backbone NAME]

In one process: the demo's model (scikit-learn's digits as a zip of class folders, MobileNetV2 or
`--backbone`, from random weights, every layer trained; `python -m service demo` offline) is trained
by the real worker through the real API, then exported to every format by export jobs, which convert
and check parity on the validation split. Each downloaded file is then loaded in its own runtime as
a user would (Keras, LiteRT with one thread per core, ONNX Runtime) and timed:
- size: the model file in the archive; the SavedModel's is the stored tar.gz (it also holds
  the `explain` signature);
- load: file on disk → ready to answer (median of 3 loads, `--loads`);
- latency: one image per call, after 10 warm-up calls (median and 90th percentile of --runs).
Ratios are format ÷ SavedModel. A format below its parity bar is failed by the worker, which
stores no file; the bench converts it again itself to measure it all the same. The last line
is machine-readable. `--quick` trains MobileNet on 12 digits a class with the backbone frozen,
and exports keras, tflite-int8 and onnx (a runtime of each kind) only.
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
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.quick import BACKBONE, add_backbone, parse_args
from service.exports.spec import EXPORT_FORMATS

WARM_UP = 10


def start(scratch: Path) -> tuple[Any, Any]:
    """The API (in-process client) and a worker over one SQLite database."""
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.config import Settings
    from service.job_kinds import KINDS
    from service.jobs.runner import Worker
    from service.storage.db import Database

    settings = Settings(_env_file=None, data_dir=scratch, database_url="", api_key=None)
    database = Database(settings.database_url)
    database.upgrade()
    client = TestClient(create_app(settings))
    client.__enter__()
    return client, Worker(database, settings, KINDS)


def fewer_per_class(archive: bytes, per_class: int) -> bytes:
    """The zip with at most `per_class` images in each class folder."""
    kept: dict[str, int] = {}
    smaller = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(smaller, "w") as target:
        for info in source.infolist():
            label = info.filename.rsplit("/", 2)[-2]
            if kept.setdefault(label, 0) < per_class:
                kept[label] += 1
                target.writestr(info, source.read(info))
    return smaller.getvalue()


def train_demo(
    client: Any,
    worker: Any,
    epochs: int,
    size: int,
    per_class: int = 0,
    freeze: str = "none",
    backbone: str = BACKBONE,
) -> tuple[str, list[bytes]]:
    """The demo's offline model (on at most `per_class` digits of each class, if given; every
    layer trained unless `freeze` says otherwise); its id and the held-out digits."""
    from service.demo import digits_split

    archive, held_out = digits_split()
    if per_class:
        archive = fewer_per_class(archive, per_class)
    files = {"file": ("digits.zip", archive, "application/zip")}
    dataset = client.post("/datasets", files=files, data={"name": "digits"}).json()
    body = {
        "dataset_id": dataset["id"],
        "name": f"digits-{backbone.lower()}",
        "backbone": {"name": backbone, "weights": None, "input_size": size},
        "head": {"pooling": "avg", "dropout": 0.2},
        "freeze": {"mode": freeze},
        "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 0.001},
    }
    job = client.post("/jobs", json=body).raise_for_status().json()
    started = time.monotonic()
    worker.run_until_idle()
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    print(f"trained in {time.monotonic() - started:.0f} s: {job['history'][-1]}", flush=True)
    return job["model_id"], [png for _, png in held_out]


def export_all(
    client: Any, worker: Any, model_id: str, formats: Sequence[str] = EXPORT_FORMATS
) -> dict[str, dict[str, Any]]:
    """Every format exported by the worker: its record and, when ready, its archive."""
    exported: dict[str, dict[str, Any]] = {}
    for format in formats:
        answer = client.post(f"/models/{model_id}/exports", json={"format": format})
        if answer.status_code != 202:
            exported[format] = {"status": f"HTTP {answer.status_code}", "error": answer.text}
            continue
        started = time.monotonic()
        worker.run_until_idle()
        record = next(
            item
            for item in client.get(f"/models/{model_id}/exports").json()
            if item["format"] == format
        )
        record["seconds"] = time.monotonic() - started
        if record["status"] == "ready":
            record["archive"] = client.get(f"/models/{model_id}/exports/{format}").content
        elif record["report"] is not None:  # below its bar: measured all the same
            record["archive"] = below_bar_archive(worker, model_id, format)
        exported[format] = record
        print(f"{format}: {record['status']} in {record['seconds']:.0f} s", flush=True)
    return exported


def below_bar_archive(worker: Any, model_id: str, format: str) -> bytes:
    """The archive the worker refused to store, converted again here with no bar."""
    from service.exports.service import load_export_inputs
    from service.exports.spec import ExportSpec
    from service.ml.convert import export_model

    spec = ExportSpec(model_id=model_id, format=format)
    return export_model(load_export_inputs(worker.db, spec), bar=0.0).archive


def timed(
    load: Callable[[], Callable[[np.ndarray], Any]], pixels: np.ndarray, runs: int, loads: int = 3
) -> dict:
    """Median load time over `loads` loads; latency percentiles at batch 1 of the last one."""
    seconds = []
    for _ in range(loads):
        started = time.perf_counter()
        run = load()
        run(pixels[:1])  # ready means answered once: lazy runtimes finish loading here
        seconds.append(time.perf_counter() - started)
    for index in range(WARM_UP):
        run(pixels[index % len(pixels)][None])
    latencies = []
    for index in range(runs):
        image = pixels[index % len(pixels)][None]
        started = time.perf_counter()
        run(image)
        latencies.append(time.perf_counter() - started)
    return {
        "load_ms": 1000 * statistics.median(seconds),
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p90_ms": 1000 * float(np.percentile(latencies, 90)),
    }


def measure_savedmodel(
    client: Any, model_id: str, pixels: np.ndarray, runs: int, loads: int = 3
) -> dict:
    import tensorflow as tf

    from service.ml.export import unpack_archive

    archive = client.get(f"/models/{model_id}/savedmodel").content
    directory = Path(tempfile.mkdtemp(prefix="bench-savedmodel-"))
    unpack_archive(archive, directory)

    def load() -> Callable[[np.ndarray], Any]:
        loaded = tf.saved_model.load(str(directory))
        return lambda batch: loaded.serve(batch).numpy()

    return {"size_bytes": len(archive), **timed(load, pixels, runs, loads)}


def measure_format(
    format: str, archive: bytes, pixels: np.ndarray, runs: int, loads: int = 3
) -> dict:
    import keras

    from service.ml.convert import FILES, load_runtime

    data = zipfile.ZipFile(io.BytesIO(archive)).read(FILES[format])
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{format}-"))

    def load() -> Callable[[np.ndarray], Any]:
        keras.backend.clear_session()
        return load_runtime(format, data, scratch, threads=os.cpu_count()).run

    return {"size_bytes": len(data), **timed(load, pixels, runs, loads)}


def table(results: dict[str, dict[str, Any]]) -> None:
    base = results["savedmodel"]
    print(
        f"{'format':12} {'size MB':>8} {'×':>5} {'load ms':>8} {'×':>5} {'p50 ms':>7} {'×':>5} "
        f"{'p90 ms':>7} {'agree':>7} {'max Δp':>7}"
    )
    for name, row in results.items():
        if "size_bytes" not in row:
            print(f"{name:12} {row['status']}: {row.get('error')}")
            continue
        parity = row.get("parity") or {}
        below = "  (below its bar: failed)" if parity and not parity["passed"] else ""
        size = row["size_bytes"]
        print(
            f"{name:12} {size / 1e6:8.2f} {size / base['size_bytes']:5.2f}"
            f" {row['load_ms']:8.0f} {row['load_ms'] / base['load_ms']:5.2f}"
            f" {row['p50_ms']:7.2f} {row['p50_ms'] / base['p50_ms']:5.2f} {row['p90_ms']:7.2f}"
            f" {parity.get('agreement', 1.0):7.2%} {parity.get('max_abs_difference', 0.0):7.4f}"
            f"{below}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=32, help="input size (the demo's: 32)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=0, help="digits per class (0: all)")
    parser.add_argument("--freeze", choices=("none", "backbone"), default="none")
    parser.add_argument("--formats", nargs="+", choices=EXPORT_FORMATS, default=EXPORT_FORMATS)
    parser.add_argument("--loads", type=int, default=3, help="loads timed per format")
    add_backbone(parser)
    args = parse_args(
        parser,
        {
            "epochs": 1,
            "runs": 5,
            "per_class": 12,
            "freeze": "backbone",
            "formats": ("keras", "tflite-int8", "onnx"),
            "loads": 1,
        },
    )
    from service.ml.convert import pixels_of

    client, worker = start(Path(tempfile.mkdtemp(prefix="bench-export-")))
    model_id, held_out = train_demo(
        client, worker, args.epochs, args.size, args.per_class, args.freeze, args.backbone
    )
    exported = export_all(client, worker, model_id, args.formats)
    pixels = pixels_of(held_out[:50], args.size)
    results: dict[str, dict[str, Any]] = {
        "savedmodel": measure_savedmodel(client, model_id, pixels, args.runs, args.loads)
    }
    for format, record in exported.items():
        row = {key: record.get(key) for key in ("status", "error")}
        row["parity"] = (record.get("report") or {}).get("parity")
        if "archive" in record:
            row.update(measure_format(format, record["archive"], pixels, args.runs, args.loads))
        results[format] = row
    print(f"\nCPU: {os.cpu_count()} cores; batch 1; {args.size} px; ratios ÷ SavedModel")
    table(results)
    print(json.dumps({"bench": "export", "size": args.size, "results": results}))


if __name__ == "__main__":
    main()
