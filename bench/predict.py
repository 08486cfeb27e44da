"""Serving speed: the real server against the same SavedModel called in-process, and against
the app a tutorial would have a user write.

    python bench/predict.py [--requests 200] [--photo-requests 40] [--seconds 10] [--quick]
                            [--size 224] [--photo-scale 1] [--photos 2] [--settle 8]
                            [--rounds 3] [--backbone NAME]

In one run on this machine: a MobileNetV2 (`--backbone`) at 224 px (random weights) is trained for
one epoch by the real worker and stored; the real API (uvicorn on loopback) serves it. Two baselines
load the very SavedModel the service stored:
- raw: called in this process on the same decoded, resized pixels;
- tutorial: the FastAPI app of the tutorials, started here with uvicorn — a plain `def`
  endpoint taking `list[UploadFile]`, PIL `open → convert("RGB") → resize`, `model.serve`
  once per request, no batching (TUTORIAL_APP below).
Printed at 224 px (images cut from scikit-learn's sample photographs):
- latency: service p50, one image per request ÷ raw p50 for one image (goal ≤ 1.2), and ÷
  the tutorial app's p50 (goal ≤ 1.0);
- throughput: images/s with 16 concurrent clients, one image each ÷ raw images/s at batch 16
  (goal ≥ 0.8), and ÷ the tutorial app's with the same 16 clients (goal ≥ 1.5);
- the first /predict of a model no process had loaded, in a running API process (a fresh
  process with aliased models, warmed up or not, is bench/start.py's);
- control plane: p99 of GET /jobs/{id} while a worker trains on this machine (goal < 50 ms).
Then the same latency and throughput for the raw model (decoding in this process, the
service's `to_pixels`, 16 threads for a batch), the tutorial app and the service, at 224 px,
1920×1080 and 4000×3000: the sample photographs upscaled with a little grain, as phones send
them (goal at 12 MP: service p50 ÷ tutorial p50 ≤ 0.5). The three take turns, `--rounds` times
on each size, so that a slower spell of this shared machine falls on each of them, not on
whichever ran then; the summary's service ÷ tutorial figures come from these turns, and its
service ÷ raw figures from turns of their own.
`--size` and `--photo-scale` change the model's input size and the photographs' sides;
`--photos N` times the last N of those photo sizes only; `--quick` runs it all at 32 px, on
MobileNet, on the 12 MP photo alone (the summary's; Full HD goes the same way), a quarter of its
sides, with few requests, and the worker that trained the model (kept, idle) runs the control
plane's job instead of a fresh one.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
from PIL import Image

from bench.quick import add_backbone, parse_args

SIZE = 224
CONCURRENT_CLIENTS = 16
PHOTO_SIZES = ((1920, 1080), (4000, 3000))  # Full HD, and a phone's 12 MP photo

# The app a tutorial has a user write, verbatim in spirit: written to a file and run with
# uvicorn by this bench, on the SavedModel the service stored (MODEL_DIR).
TUTORIAL_APP = """
import io
import os

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, UploadFile
from PIL import Image

SIZE = int(os.environ["SIZE"])
model = tf.saved_model.load(os.environ["MODEL_DIR"])
app = FastAPI()


@app.post("/predict")
def predict(files: list[UploadFile]):
    images = [Image.open(io.BytesIO(file.file.read())).convert("RGB") for file in files]
    batch = np.stack([np.asarray(image.resize((SIZE, SIZE))) for image in images])
    probabilities = model.serve(batch.astype(np.float32)).numpy()
    return {
        "predictions": [
            {"class": int(row.argmax()), "score": float(row.max())} for row in probabilities
        ]
    }
"""


def jpeg(seed: int, side: int = SIZE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    pixels[..., seed % 3] = 230
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photo_jpegs(count: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """JPEGs (quality 90) cut from scikit-learn's two sample photographs (640×427) at random
    and scaled to width × height; above the photographs' size, with ±12 grey levels of grain,
    so they weigh what a phone's photos weigh (a 12 MP one about 3 MB)."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    sources = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    photos = []
    for number in range(count):
        source = sources[number % len(sources)]
        left, top = int(rng.integers(0, 160)), int(rng.integers(0, 107))
        crop = Image.fromarray(source[top : top + 320, left : left + 480])
        pixels = np.asarray(crop.resize((width, height), Image.Resampling.BICUBIC), np.int16)
        if width * height > crop.width * crop.height:
            pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def service_environment(scratch: Path) -> dict[str, str]:
    """The environment of the service's processes in a bench: its own data directory and
    SQLite database under `scratch`, migrated at start, the worker polling often."""
    return {
        **os.environ,
        "DATA_DIR": str(scratch),
        "DATABASE_URL": "",
        "AUTO_MIGRATE": "true",
        "POLL_SECONDS": "0.2",
    }


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


def run_job(
    base: str, body: dict, environment: dict, worker: subprocess.Popen | None = None
) -> tuple[str, subprocess.Popen]:
    """The job queued, and the worker that runs it: `worker` if given, else a new one."""
    job = httpx.post(f"{base}/jobs", json=body, timeout=60).raise_for_status().json()
    if worker is None:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return job["id"], worker


def wait_for_status(base: str, job_id: str, wanted: set[str], timeout: float = 900) -> dict:
    # One client for the whole wait: `httpx.get` builds a client (and its TLS context) per
    # call, some 20 ms of CPU each, which a poll would spend beside what the bench measures.
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            job = client.get(f"{base}/jobs/{job_id}").json()
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


def http_figures(base: str, model_id: str, images: list[bytes], requests: int) -> dict:
    """p50 of one image per request, and images/s with 16 clients, from POST /predict (the
    tutorial app reads the same bodies: it ignores `model_id` and `top_k`)."""
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


def inputs_for(
    size: int, photo_scale: float = 1.0, photos: int = len(PHOTO_SIZES)
) -> tuple[tuple[str, int, int], ...]:
    """(name, width, height) of the JPEGs each system is timed on: the model's input size,
    then the last `photos` of PHOTO_SIZES (their sides times `photo_scale`); the last is the
    photo of the summary."""
    chosen = PHOTO_SIZES[len(PHOTO_SIZES) - photos :]
    sides = [(round(w * photo_scale), round(h * photo_scale)) for w, h in chosen]
    return ((f"{size} px", size, size), *((f"{w}×{h}", w, h) for w, h in sides))


def raw_decoding_figures(
    savedmodel_dir: Path, images: list[bytes], requests: int, size: int = SIZE
) -> dict[str, float]:
    """The raw model with the decode in this process (`to_pixels`): p50 for one image, and
    images/s for batches of 16 decoded on 16 threads, as 16 clients' images would be."""
    import tensorflow as tf

    from service.ml.images import to_pixels

    loaded = tf.saved_model.load(str(savedmodel_dir))

    def pixels(image: bytes) -> np.ndarray:
        return to_pixels(image, size).astype(np.float32)

    loaded.serve(pixels(images[0])[None])
    single = []
    for number in range(requests):
        started = time.perf_counter()
        loaded.serve(pixels(images[number % len(images)])[None]).numpy()
        single.append(time.perf_counter() - started)
    rounds = max(3, requests // CONCURRENT_CLIENTS)
    batch = [images[n % len(images)] for n in range(CONCURRENT_CLIENTS)]
    with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
        started = time.perf_counter()
        for _ in range(rounds):
            loaded.serve(np.stack(list(pool.map(pixels, batch)))).numpy()
        throughput = rounds * CONCURRENT_CLIENTS / (time.perf_counter() - started)
    return {"p50": percentile(single, 50), "throughput": throughput}


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


def wait_until_up(url: str, process: subprocess.Popen, what: str) -> None:
    with httpx.Client() as client:  # one client for the whole wait (see wait_for_status)
        for _ in range(1200):
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode} before answering")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{what} never answered {url}")


def start_process(arguments: list[str], environment: dict, cwd: Path | None = None) -> Any:
    return subprocess.Popen(
        [sys.executable, *arguments],
        env=environment,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def train_model(
    base: str,
    environment: dict,
    workers: list,
    backbone: str,
    size: int = SIZE,
    keep_worker: bool = False,
) -> tuple[str, str]:
    """(dataset id, model id): a `backbone` at `size` px trained for one epoch by a worker."""
    dataset_id, (model_id,) = train_models(
        base, environment, workers, backbone, size, keep_worker=keep_worker
    )
    return dataset_id, model_id


def train_models(
    base: str,
    environment: dict,
    workers: list,
    backbone: str,
    size: int = SIZE,
    count: int = 1,
    keep_worker: bool = False,
) -> tuple[str, list[str]]:
    """(dataset id, model ids): `count` versions of one model, a `backbone` at `size` px
    trained for one epoch each, one after the other by one worker (a worker per model would
    only add its start-up, seconds of it: the models are the same). The worker is stopped
    then, unless `keep_worker` (it stays in `workers`, idle, for a later job)."""
    dataset = (
        httpx.post(
            f"{base}/datasets",
            files={"file": ("bench.zip", dataset_zip(per_class=4), "application/zip")},
            timeout=120,
        )
        .raise_for_status()
        .json()
    )
    body = {
        "dataset_id": dataset["id"],
        "backbone": {"name": backbone, "weights": None, "input_size": size},
        "freeze": {"mode": "backbone"},
        "training": {"epochs": 1, "batch_size": 8},
    }
    job_id, worker = run_job(base, body, environment)
    workers.append(worker)
    job_ids = [job_id]
    for _ in range(count - 1):
        job_ids.append(
            httpx.post(f"{base}/jobs", json=body, timeout=60).raise_for_status().json()["id"]
        )
    jobs = [wait_for_status(base, job_id, {"succeeded", "failed"}) for job_id in job_ids]
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    if not keep_worker:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    for job in jobs:
        print(f"model {job['model_id']}: {backbone} at {size} px, stored by the worker")
    return dataset["id"], [job["model_id"] for job in jobs]


def stored_savedmodel(scratch: Path, model_id: str) -> Path:
    """The SavedModel the service stored, unpacked as the baselines load it."""
    from service.ml.export import unpack_archive
    from service.storage.db import Database
    from service.storage.tables import TrainedModel

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
    return raw_dir


def control_plane_while_training(
    base: str,
    dataset_id: str,
    environment: dict,
    workers: list,
    backbone: str,
    seconds: float,
    settle: float = 8,
    size: int = 96,
    worker: subprocess.Popen | None = None,
) -> list[float]:
    """GET /jobs/{id} timings while a worker trains (top of the backbone: no feature cache):
    `worker` if given (idle, in `workers` already), else a new one."""
    job_id, started = run_job(
        base,
        {
            "dataset_id": dataset_id,
            "backbone": {"name": backbone, "weights": None, "input_size": size},
            "freeze": {"mode": "partial", "trainable_from": -30},
            "training": {"epochs": 1000, "batch_size": 4},
        },
        environment,
        worker,
    )
    if started is not worker:
        workers.append(started)
    wait_for_status(base, job_id, {"running"})
    time.sleep(settle)  # past start-up: the worker is in its epochs
    timings = control_plane(base, job_id, seconds)
    httpx.post(f"{base}/jobs/{job_id}/cancel", timeout=30)
    return timings


Figures = dict[str, dict[str, float]]


def per_input(
    measure: dict[str, Callable[[list[bytes], int], dict]],
    requests: int,
    photo_requests: int,
    inputs: tuple[tuple[str, int, int], ...],
    rounds: int = 1,
) -> dict[str, Figures]:
    """Each system's figures on each input size: {input: {system: figures}}, in `inputs`'
    order (the model's size first), each over `rounds` turns (`in_turns`)."""
    figures: dict[str, Figures] = {}
    size = inputs[0][1]
    for name, width, height in inputs:
        small = width * height <= size * size
        images = photo_jpegs(32 if small else 4, width, height, seed=width)
        count = requests if small else photo_requests
        figures[name] = in_turns(
            {system: partial(call, images, count) for system, call in measure.items()}, rounds
        )
        megabytes = len(images[0]) / 1e6
        print(f"measured {name}: {megabytes:.2f} MB per JPEG, {count} requests × {rounds}")
    return figures


def in_turns(measure: dict[str, Callable[[], dict]], rounds: int) -> dict[str, dict]:
    """Each system's figures over `rounds` turns, the systems alternated so that a slower
    spell of a shared machine falls on each of them rather than on whichever ran then: the
    median p50, images/s as the total images over the total seconds (the harmonic mean of the
    turns' rates, each turn sending as many), and the first turn's first load (`cold`) where
    one was timed."""
    runs: dict[str, list[dict]] = {system: [] for system in measure}
    for _ in range(rounds):
        for system, call in measure.items():
            runs[system].append(call())
    return {
        system: {
            **({"cold": each[0]["cold"]} if "cold" in each[0] else {}),
            "p50": float(np.median([run["p50"] for run in each])),
            "throughput": len(each) / sum(1 / run["throughput"] for run in each),
        }
        for system, each in runs.items()
    }


def print_inputs(figures: dict[str, Figures]) -> None:
    print(f"\n{'':12}{'p50 one image (ms)':>36}{'images/s, 16 clients':>36}")
    columns = ("raw", "tutorial", "service", "÷tut")
    print(f"{'':12}" + "".join(f"{c:>9}" for c in columns) * 2)
    for name, systems in figures.items():
        p50 = [systems[s]["p50"] * 1000 for s in ("raw", "tutorial", "service")]
        rate = [systems[s]["throughput"] for s in ("raw", "tutorial", "service")]
        print(
            f"{name:12}"
            + "".join(f"{v:9.1f}" for v in p50)
            + f"{p50[2] / p50[1]:9.3f}"
            + "".join(f"{v:9.1f}" for v in rate)
            + f"{rate[2] / rate[1]:9.3f}"
        )


def print_summary(served: dict, raw: dict, timings: list[float], inputs: dict) -> None:
    latency = served["p50"] / raw["p50"]
    throughput = served["throughput"] / raw["throughput"]
    jobs_p99 = percentile(timings, 99) * 1000
    small_name, photo_name = next(iter(inputs)), list(inputs)[-1]
    small, photo = inputs[small_name], inputs[photo_name]
    tutorial_latency = small["service"]["p50"] / small["tutorial"]["p50"]
    tutorial_throughput = small["service"]["throughput"] / small["tutorial"]["throughput"]
    photo_latency = photo["service"]["p50"] / photo["tutorial"]["p50"]
    print(f"\n{'':32}{'service':>12}{'raw':>12}{'ratio':>8}  goal")
    print(
        f"{'p50 one image (ms)':32}{served['p50'] * 1000:12.2f}{raw['p50'] * 1000:12.2f}"
        f"{latency:8.3f}  ≤ 1.2"
    )
    print(
        f"{'images/s, 16 clients vs batch 16':32}{served['throughput']:12.1f}"
        f"{raw['throughput']:12.1f}{throughput:8.3f}  ≥ 0.8"
    )
    print(
        f"{'first /predict, never loaded (s)':32}{served['cold']:12.3f}{raw['cold']:12.3f}"
        f"{served['cold'] / raw['cold']:8.3f}  (a model no alias names, in a running process)"
    )
    print(
        f"{'GET /jobs/{id} p99 (ms), training':32}{jobs_p99:12.2f}{'':12}{'':8}  < 50 "
        f"({len(timings)} requests, p50 {percentile(timings, 50) * 1000:.2f})"
    )
    print(
        f"service ÷ tutorial app: p50 {tutorial_latency:.3f} (≤ 1.0), 16 clients "
        f"{tutorial_throughput:.3f} (≥ 1.5) at {small_name}; p50 {photo_latency:.3f} (≤ 0.5) "
        f"at {photo_name}"
    )
    print(
        f"latency_ratio={latency:.3f} throughput_ratio={throughput:.3f} "
        f"jobs_p99_ms={jobs_p99:.2f} "
        f"tutorial_latency_ratio={tutorial_latency:.3f} "
        f"tutorial_throughput_ratio={tutorial_throughput:.3f} "
        f"photo_latency_ratio={photo_latency:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--photo-requests", type=int, default=40, help="per system, per size")
    parser.add_argument("--seconds", type=float, default=10.0, help="control-plane sampling")
    parser.add_argument("--size", type=int, default=SIZE, help="the model's input size, px")
    parser.add_argument("--photo-scale", type=float, default=1.0, help="× the photos' sides")
    parser.add_argument(
        "--photos",
        type=int,
        choices=range(1, len(PHOTO_SIZES) + 1),
        default=len(PHOTO_SIZES),
        help="the last N photo sizes",
    )
    parser.add_argument("--settle", type=float, default=8.0, help="seconds before sampling")
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns the systems take on each input size"
    )
    add_backbone(parser)
    args = parse_args(
        parser,
        {
            "requests": 5,
            "photo_requests": 2,
            "seconds": 1.0,
            "size": 32,
            "photo_scale": 0.25,
            "photos": 1,  # one photo size runs every path the two do: the 12 MP one, the summary's
            "settle": 1.0,
            "rounds": 1,
        },
    )
    size = args.size

    from service.ml.images import to_pixels

    scratch = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    environment = service_environment(scratch)
    port, tutorial_port = free_port(), free_port()
    base, tutorial_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{tutorial_port}"
    processes = [start_process(["-m", "service", "api", "--port", str(port)], environment)]
    workers: list[subprocess.Popen] = []
    try:
        wait_until_up(f"{base}/readyz", processes[0], "the service")
        # Quick mode keeps the training worker for the control plane's job: one TensorFlow
        # process start the fewer (idle meanwhile, it polls the queue every POLL_SECONDS).
        dataset_id, model_id = train_model(
            base, environment, workers, args.backbone, size, keep_worker=args.quick
        )
        raw_dir = stored_savedmodel(scratch, model_id)
        (scratch / "tutorial_app.py").write_text(TUTORIAL_APP)
        tutorial_environment = {**environment, "MODEL_DIR": str(raw_dir), "SIZE": str(size)}
        tutorial_arguments = ["-m", "uvicorn", "tutorial_app:app", "--port", str(tutorial_port)]
        processes.append(start_process(tutorial_arguments, tutorial_environment, cwd=scratch))
        wait_until_up(f"{tutorial_base}/openapi.json", processes[1], "the tutorial app")

        images = photo_jpegs(32, size, size, seed=size)
        pixels = np.stack([to_pixels(image, size) for image in images]).astype(np.float32)
        summary = in_turns(
            {
                "service": partial(http_figures, base, model_id, images, args.requests),
                "raw": partial(raw_figures, raw_dir, pixels, args.requests),
            },
            args.rounds,
        )
        served, raw = summary["service"], summary["raw"]
        inputs = per_input(
            {
                "raw": lambda images, count: raw_decoding_figures(raw_dir, images, count, size),
                "tutorial": lambda images, count: http_figures(
                    tutorial_base, model_id, images, count
                ),
                "service": lambda images, count: http_figures(base, model_id, images, count),
            },
            args.requests,
            args.photo_requests,
            inputs_for(size, args.photo_scale, args.photos),
            args.rounds,
        )
        timings = control_plane_while_training(
            base,
            dataset_id,
            environment,
            workers,
            args.backbone,
            args.seconds,
            args.settle,
            min(96, size),
            workers[0] if args.quick else None,
        )
    finally:
        for process in [*workers, *processes]:
            process.send_signal(signal.SIGTERM)
        for process in [*workers, *processes]:
            process.wait(timeout=60)
    print_inputs(inputs)
    print_summary(served, raw, timings, inputs)


if __name__ == "__main__":
    main()
