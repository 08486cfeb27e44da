"""Datasets at real size: upload in parts, import from a directory, and train one epoch on
a dataset of gigabytes, against the same epoch on one ten times smaller.

    python bench/ingest.py [--gb 3] [--image-kb 600] [--part-mb 450] [--epochs 1]
                           [--size 96] [--trainable-from N] [--database-url URL] [--quick]
                           [--backbone NAME]

1. Makes a synthetic dataset of `--gb` GB of JPEGs in a temporary folder: `--distinct`
   crops of scikit-learn's sample photographs, upscaled with grain to weigh about
   `--image-kb` KB, each written many times with its own JPEG comment segment (the pixels
   alike, the content hashes distinct, so nothing is skipped as a duplicate), in four class
   folders; then zips (stored) of at most `--part-mb` MB each.
2. Starts the API (`python -m service api`) and sends the first zip to `POST /datasets`,
   the others to `POST /datasets/{id}/images`: upload throughput (MB/s), and the API's peak
   resident memory above its idle level while it ingests.
3. Sends the first tenth of the files (one zip) as a second, small dataset.
4. With a worker started for it, imports a copy of the folder (`POST /datasets/import`,
   when the service has it): seconds, MB/s, the worker's peak memory.
5. A fresh worker trains MobileNetV2 (`--backbone`; random weights, nothing frozen) at `--size` px
   for `--epochs` epochs on the large dataset (streamed from its shard cache when larger than
   TRAIN_IN_MEMORY_BYTES: with `--gb` under 1 it is set to half the large dataset, so that the large
   one streams and the small one stays in memory), then another fresh worker on the small one: the
   last epoch's seconds per image of each and their ratio (goal: ≤ 1.3), and each worker's peak
   resident memory (goal: flat). A first epoch includes compiling the training step, a fixed cost
   that weighs more on the small dataset: `--epochs 2` compares steady epochs. `--trainable-from -3`
   trains only the last 3 layers (`--quick`, on MobileNet).

`--quick`: a dataset of a few MB, 32 px, and one worker, started once the API answers, runs the
import and both trainings (a fresh worker per job, whose peaks the figures compare, is the full
run's).

SQLite in the data folder unless `--database-url`. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quick import add_backbone, parse_args  # noqa: E402

CLASSES = ("alpha", "beta", "gamma", "delta")
SOURCES = ("china.jpg", "flower.jpg")
MB = 1_000_000


# -- the synthetic photographs -------------------------------------------------------------


def photo(rng: np.random.Generator, kilobytes: int) -> bytes:
    """A crop of a sample photograph, tinted, upscaled with grain to weigh about `kilobytes`
    as a JPEG (quality 90): about 4 bytes a pixel's worth of area per KB, measured."""
    source = load_sample_image(SOURCES[int(rng.integers(len(SOURCES)))])
    height, width = source.shape[:2]
    left, top = int(rng.integers(0, width // 6)), int(rng.integers(0, height // 6))
    crop = source[top : top + height * 5 // 6, left : left + width * 5 // 6].astype(np.float32)
    tinted = np.clip(crop * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
    side = int((kilobytes * 1024 / 0.3) ** 0.5)  # ~0.3 bytes a pixel with this grain
    large = np.asarray(Image.fromarray(tinted).resize((side * 4 // 3, side), Image.BICUBIC))
    noise = rng.integers(-8, 9, large.shape, dtype=np.int16)
    grained = np.clip(large.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grained).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def with_comment(jpeg: bytes, number: int) -> bytes:
    """The same JPEG with a comment segment (COM) after its SOI marker: other bytes and
    hash, the same pixels."""
    text = f"bench image {number}".encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def make_folder(folder: Path, total_bytes: int, kilobytes: int, distinct: int) -> list[Path]:
    """Class folders of JPEGs adding up to about `total_bytes`; their paths, in order."""
    rng = np.random.default_rng(0)
    pool = [photo(rng, kilobytes) for _ in range(distinct)]
    count = max(len(CLASSES) * 10, round(total_bytes / np.mean([len(p) for p in pool])))
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
    paths = []
    for number in range(count):
        path = folder / CLASSES[number % len(CLASSES)] / f"img{number:06d}.jpg"
        path.write_bytes(with_comment(pool[number % distinct], number))
        paths.append(path)
    return paths


def make_zips(paths: list[Path], root: Path, out: Path, part_bytes: int) -> list[Path]:
    """Stored zips of the files (photos barely compress), each at most about `part_bytes`."""
    out.mkdir(parents=True, exist_ok=True)
    zips: list[Path] = []
    archive: zipfile.ZipFile | None = None
    size = 0
    for path in paths:
        if archive is None or size + path.stat().st_size > part_bytes:
            if archive is not None:
                archive.close()
            zips.append(out / f"part{len(zips):03d}.zip")
            archive, size = zipfile.ZipFile(zips[-1], "w", zipfile.ZIP_STORED), 0
        archive.write(path, path.relative_to(root).as_posix())
        size += path.stat().st_size
    if archive is not None:
        archive.close()
    return zips


# -- processes and their memory ------------------------------------------------------------


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples a process's resident memory every 50 ms while in its `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return
            self._stop.wait(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def start(command: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", command, *extra],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_healthy(client: httpx.Client, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the API exited at start: see its log")
        try:
            if client.get("/datasets").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the API did not start")


# -- the service at work -------------------------------------------------------------------


def upload(client: httpx.Client, zips: list[Path], name: str) -> tuple[str, int, float]:
    """The first zip creates the dataset, the others are appended: its id, images, seconds."""
    clock = time.perf_counter()
    dataset_id = ""
    for number, path in enumerate(zips):
        with path.open("rb") as file:
            files = {"file": (path.name, file, "application/zip")}
            if number == 0:
                response = client.post("/datasets", files=files, data={"name": name})
            else:
                response = client.post(f"/datasets/{dataset_id}/images", files=files)
        if response.status_code not in (200, 201):
            raise SystemExit(f"upload of {path.name}: {response.status_code} {response.text}")
        dataset_id = dataset_id or response.json()["id"]
    seconds = time.perf_counter() - clock
    return dataset_id, client.get(f"/datasets/{dataset_id}").json()["num_images"], seconds


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        # A short poll: the import's seconds are read off this loop, and each job's end
        # waited for (a second a job, at most, with a poll of 1 s).
        time.sleep(0.1)


def with_worker(
    env: dict[str, str],
    log: Path,
    submit: Any,
    client: httpx.Client,
    shared: subprocess.Popen[bytes] | None = None,
) -> Any:
    """Start a fresh worker, run one job through it: (job, seconds, worker's peak RSS).
    With `shared` (quick mode), that running worker runs the job instead, and stays."""
    worker = shared or start("worker", env, log)
    try:
        with PeakMemory(worker.pid) as memory:
            clock = time.perf_counter()
            job = finished(client, submit())
            seconds = time.perf_counter() - clock
        peak = max(memory.peak, rss_bytes(worker.pid, "VmHWM"))
    finally:
        if shared is None:
            stop(worker)
    return job, seconds, peak


def train_body(dataset_id: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "backbone": {"name": args.backbone, "weights": None, "input_size": args.size},
        "head": {"pooling": "avg", "dense": [], "dropout": 0.0},
        "freeze": (
            {"mode": "partial", "trainable_from": args.trainable_from}
            if args.trainable_from
            else {"mode": "none"}
        ),
        "training": {"epochs": args.epochs, "batch_size": 32, "validation_split": 0.1},
    }


def trained(
    client: httpx.Client,
    env: dict[str, str],
    log: Path,
    dataset_id: str,
    args: argparse.Namespace,
    shared: subprocess.Popen[bytes] | None = None,
) -> dict[str, Any]:
    def submit() -> str:
        response = client.post("/jobs", json=train_body(dataset_id, args))
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    job, seconds, peak = with_worker(env, log, submit, client, shared)
    # The training split: all but the validation split's tenth (stratified, so about).
    images = round(client.get(f"/datasets/{dataset_id}").json()["num_images"] * 0.9)
    epoch = job["history"][-1]["seconds"]
    return {
        "job_seconds": round(seconds, 1),
        "epoch_seconds": epoch,
        "train_images": images,
        "ms_per_image": round(1000 * epoch / images, 2),
        "worker_peak_mb": round(peak / MB),
    }


def imported(
    client: httpx.Client,
    env: dict[str, str],
    log: Path,
    folder: Path,
    shared: subprocess.Popen[bytes] | None = None,
) -> dict[str, Any] | None:
    def submit() -> str:
        response = client.post("/datasets/import", json={"path": str(folder), "name": "copy"})
        if response.status_code != 202:
            raise LookupError(f"{response.status_code} {response.text}")
        return str(response.json()["id"])

    try:
        _job, seconds, peak = with_worker(env, log, submit, client, shared)
    except LookupError as error:
        print(f"import: not available ({error})")
        return None
    return {"seconds": round(seconds, 1), "worker_peak_mb": round(peak / MB)}


# -- the run -------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=3.0, help="the large dataset's size, GB")
    parser.add_argument("--image-kb", type=int, default=600)
    parser.add_argument("--distinct", type=int, default=24, help="distinct photographs")
    parser.add_argument("--part-mb", type=int, default=450, help="largest zip sent at once")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=96, help="input size, px")
    parser.add_argument(
        "--trainable-from", type=int, default=0, help="train from this layer on (0: all layers)"
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in the folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    add_backbone(parser)
    return parse_args(
        parser,
        {
            "gb": 0.004,
            "image_kb": 25,
            "distinct": 4,
            "part_mb": 2,
            "epochs": 1,
            "size": 32,
            "trainable_from": -3,
        },
    )


def environment(data: Path, args: argparse.Namespace, large_bytes: int) -> dict[str, str]:
    env = {**os.environ, "DATA_DIR": str(data / "service"), "IMPORT_ROOT": str(data)}
    env.update(DATABASE_URL=args.database_url, AUTO_MIGRATE="true", API_KEY="")
    env["MAX_DATASET_BYTES"] = str(max(args.part_mb * 2 * MB, 1 << 30))
    if large_bytes < 1 << 30:  # so that the large dataset streams and the small one does not
        env["TRAIN_IN_MEMORY_BYTES"] = str(large_bytes // 2)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    clock = time.perf_counter()
    paths = make_folder(data / "photos", int(args.gb * 1e9), args.image_kb, args.distinct)
    large_bytes = sum(path.stat().st_size for path in paths)
    zips = make_zips(paths, data / "photos", data, args.part_mb * MB)
    small = make_zips(paths[: len(paths) // 10], data / "photos", data / "small", 1 << 40)
    print(
        f"made {len(paths)} JPEGs, {large_bytes / MB:.0f} MB, {len(zips)} zips "
        f"in {time.perf_counter() - clock:.0f} s"
    )
    env, log, port = environment(data, args, large_bytes), data / "service.log", free_port()
    api = start("api", env, log, "--port", str(port))
    shared: subprocess.Popen[bytes] | None = None
    figures: dict[str, Any] = {"images": len(paths), "mb": round(large_bytes / MB)}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=None) as client:
            wait_healthy(client, api)
            if args.quick:  # one worker runs the three jobs: two TensorFlow starts the fewer
                shared = start("worker", env, log)
            idle = rss_bytes(api.pid)
            with PeakMemory(api.pid) as memory:
                large_id, count, seconds = upload(client, zips, "large")
            figures["upload"] = {
                "images": count,
                "seconds": round(seconds, 1),
                "mb_per_s": round(large_bytes / MB / seconds, 1),
                "api_idle_mb": round(idle / MB),
                "api_peak_extra_mb": round((memory.peak - idle) / MB),
            }
            print("upload", figures["upload"])
            small_id = upload(client, small, "small")[0]
            figures["import"] = imported(client, env, log, data / "photos", shared)
            print("import", figures["import"])
            figures["large"] = trained(client, env, log, large_id, args, shared)
            print("large", figures["large"])
            figures["small"] = trained(client, env, log, small_id, args, shared)
            print("small", figures["small"])
    finally:
        if shared is not None:
            stop(shared)
        stop(api)
    figures["time_per_image_ratio"] = round(
        figures["large"]["ms_per_image"] / figures["small"]["ms_per_image"], 2
    )
    figures["worker_peak_ratio"] = round(
        figures["large"]["worker_peak_mb"] / figures["small"]["worker_peak_mb"], 2
    )
    cache = data / "service" / "cache" / "datasets" / large_id
    figures["large_streamed"] = cache.is_dir()
    return figures


def main() -> None:
    args = arguments()
    data = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        figures = run(args, data)
    finally:
        if args.keep:
            print(f"kept {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    print(json.dumps({"bench": "ingest", **figures}))


if __name__ == "__main__":
    main()
