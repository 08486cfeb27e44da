"""Serving speed: the real server against the same SavedModel called in-process.

    python bench/predict.py [--requests 200] [--seconds 10]

In one run on this machine: a MobileNetV2 at 224 px (random weights) is trained for one
epoch by the real worker and stored; the real API (uvicorn on loopback) serves it. The
baseline is the very SavedModel the service stored, unpacked and called in this process on
the same decoded, resized pixels. Printed:
- latency: service p50, one image per request ÷ raw p50 for one image (goal ≤ 1.2);
- throughput: images/s with 16 concurrent clients, one image each ÷ raw images/s at batch 16
  (goal ≥ 0.8);
- cold start: the first /predict of a model never loaded ÷ (tf.saved_model.load + first
  call) (goal ≤ 1.5);
- control plane: p99 of GET /jobs/{id} while a worker trains on this machine (goal < 50 ms).
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
from PIL import Image

SIZE = 224
CONCURRENT_CLIENTS = 16


def jpeg(seed: int, side: int = SIZE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    pixels[..., seed % 3] = 230
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def dataset_zip(per_class: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(per_class * 3):
            archive.writestr(f"c{number % 3}/{number}.jpg", jpeg(number))
    return buffer.getvalue()


def run_job(base: str, body: dict, environment: dict) -> tuple[str, subprocess.Popen]:
    job = httpx.post(f"{base}/jobs", json=body, timeout=60).raise_for_status().json()
    worker = subprocess.Popen(
        [sys.executable, "-m", "service", "worker"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return job["id"], worker


def wait_for_status(base: str, job_id: str, wanted: set[str], timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/jobs/{job_id}", timeout=30).json()
        if job["status"] in wanted:
            return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} never reached {wanted}")


def raw_figures(savedmodel_dir: Path, pixels: np.ndarray, requests: int) -> dict[str, float]:
    import tensorflow as tf

    started = time.perf_counter()
    loaded = tf.saved_model.load(str(savedmodel_dir))
    loaded.serve(pixels[:1])
    cold = time.perf_counter() - started
    single = []
    for number in range(requests):
        one = pixels[number % len(pixels)][None]
        started = time.perf_counter()
        loaded.serve(one).numpy()
        single.append(time.perf_counter() - started)
    batch = np.stack([pixels[n % len(pixels)] for n in range(CONCURRENT_CLIENTS)])
    loaded.serve(batch)
    rounds = max(3, requests // CONCURRENT_CLIENTS)
    started = time.perf_counter()
    for _ in range(rounds):
        loaded.serve(batch).numpy()
    throughput = rounds * CONCURRENT_CLIENTS / (time.perf_counter() - started)
    return {"cold": cold, "p50": percentile(single, 50), "throughput": throughput}


def service_figures(base: str, model_id: str, images: list[bytes], requests: int) -> dict:
    # Bodies encoded once, as a client that keeps its requests would: the clock then
    # measures the service, not the client's multipart encoder.
    bodies = []
    for number, image in enumerate(images):
        request = httpx.Request(
            "POST",
            f"{base}/predict",
            data={"model_id": model_id, "top_k": "1"},
            files=[("files", (f"{number}.jpg", image, "image/jpeg"))],
        )
        bodies.append((request.read(), request.headers["content-type"]))

    def post(client: httpx.Client, number: int) -> None:
        content, content_type = bodies[number % len(bodies)]
        client.post(
            "/predict", content=content, headers={"Content-Type": content_type}
        ).raise_for_status()

    with httpx.Client(base_url=base, timeout=120) as client:
        started = time.perf_counter()
        post(client, 0)
        cold = time.perf_counter() - started
        single = []
        for number in range(requests):
            started = time.perf_counter()
            post(client, number)
            single.append(time.perf_counter() - started)

    per_client = max(3, requests // CONCURRENT_CLIENTS)
    barrier = threading.Barrier(CONCURRENT_CLIENTS + 1)

    def client_loop(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as own:
            post(own, offset)  # connection up before the clock starts
            barrier.wait()
            for number in range(per_client):
                post(own, offset + number)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(CONCURRENT_CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    throughput = CONCURRENT_CLIENTS * per_client / (time.perf_counter() - started)
    return {"cold": cold, "p50": percentile(single, 50), "throughput": throughput}


def control_plane(base: str, job_id: str, seconds: float) -> list[float]:
    timings = []
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            job = client.get(f"/jobs/{job_id}").raise_for_status().json()
            timings.append(time.perf_counter() - started)
            if job["status"] != "running":
                break
            time.sleep(0.02)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="control-plane sampling")
    args = parser.parse_args()

    from service.ml.export import unpack_archive
    from service.ml.images import to_pixels
    from service.storage.db import Database
    from service.storage.tables import TrainedModel

    scratch = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    environment = {
        **os.environ,
        "DATA_DIR": str(scratch),
        "DATABASE_URL": "",
        "AUTO_MIGRATE": "true",
        "POLL_SECONDS": "0.2",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = subprocess.Popen(
        [sys.executable, "-m", "service", "api", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[subprocess.Popen] = []
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        dataset = (
            httpx.post(
                f"{base}/datasets",
                files={"file": ("bench.zip", dataset_zip(per_class=4), "application/zip")},
                timeout=120,
            )
            .raise_for_status()
            .json()
        )
        backbone = {"name": "MobileNetV2", "weights": None, "input_size": SIZE}
        job_id, worker = run_job(
            base,
            {
                "dataset_id": dataset["id"],
                "backbone": backbone,
                "freeze": {"mode": "backbone"},
                "training": {"epochs": 1, "batch_size": 8},
            },
            environment,
        )
        workers.append(worker)
        job = wait_for_status(base, job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", job
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        model_id = job["model_id"]
        print(f"model {model_id}: MobileNetV2 at {SIZE} px, stored by the worker")

        database = Database(f"sqlite:///{scratch / 'service.db'}")
        with database.session() as session:
            blob = session.scalar(
                TrainedModel.__table__.select()
                .with_only_columns(TrainedModel.savedmodel)
                .where(TrainedModel.id == model_id)
            )
        database.dispose()
        raw_dir = scratch / "raw-savedmodel"
        unpack_archive(blob, raw_dir)
        images = [jpeg(1000 + n) for n in range(32)]
        pixels = np.stack([to_pixels(image, SIZE) for image in images]).astype(np.float32)

        served = service_figures(base, model_id, images, args.requests)
        raw = raw_figures(raw_dir, pixels, args.requests)

        # The control plane while a worker trains (top of the backbone, so no feature cache).
        job_id, worker = run_job(
            base,
            {
                "dataset_id": dataset["id"],
                "backbone": {**backbone, "input_size": 96},
                "freeze": {"mode": "partial", "trainable_from": -30},
                "training": {"epochs": 1000, "batch_size": 4},
            },
            environment,
        )
        workers.append(worker)
        wait_for_status(base, job_id, {"running"})
        time.sleep(8)  # past start-up: the worker is in its epochs
        timings = control_plane(base, job_id, args.seconds)
        httpx.post(f"{base}/jobs/{job_id}/cancel", timeout=30)
    finally:
        for process in [*workers, api]:
            process.send_signal(signal.SIGTERM)
        for process in [*workers, api]:
            process.wait(timeout=60)

    latency = served["p50"] / raw["p50"]
    throughput = served["throughput"] / raw["throughput"]
    cold = served["cold"] / raw["cold"]
    jobs_p99 = percentile(timings, 99) * 1000
    print(f"{'':32}{'service':>12}{'raw':>12}{'ratio':>8}  goal")
    print(
        f"{'p50 one image (ms)':32}{served['p50'] * 1000:12.2f}{raw['p50'] * 1000:12.2f}"
        f"{latency:8.3f}  ≤ 1.2"
    )
    print(
        f"{'images/s, 16 clients vs batch 16':32}{served['throughput']:12.1f}"
        f"{raw['throughput']:12.1f}{throughput:8.3f}  ≥ 0.8"
    )
    print(f"{'cold start (s)':32}{served['cold']:12.3f}{raw['cold']:12.3f}{cold:8.3f}  ≤ 1.5")
    print(
        f"{'GET /jobs/{id} p99 (ms), training':32}{jobs_p99:12.2f}{'':12}{'':8}  < 50 "
        f"({len(timings)} requests, p50 {percentile(timings, 50) * 1000:.2f})"
    )
    print(
        f"latency_ratio={latency:.3f} throughput_ratio={throughput:.3f} "
        f"cold_start_ratio={cold:.3f} jobs_p99_ms={jobs_p99:.2f}"
    )


if __name__ == "__main__":
    main()
