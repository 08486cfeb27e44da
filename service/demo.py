"""The whole loop, for real: API and worker processes on SQLite, scikit-learn's digits.

Uploads the digits as a zip of class folders and trains MobileNetV2 on them: where Keras can
download the ImageNet weights, as transfer learning does it (backbone frozen, the head trained
on cached features, then the top fine-tuned at a low rate); offline, from random weights.
Then it lists the model's layers, classifies held-out digits over HTTP, and (in a terminal)
keeps the service up so the console can be explored, until Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

INPUT_SIZE = 32
PRETRAINED_INPUT_SIZE = 96  # the smallest size Keras has MobileNetV2 ImageNet weights for
IMAGENET_WEIGHTS = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
)


def digit_png(pixels: np.ndarray) -> bytes:
    """An 8×8 digit (0–16) as a 32×32 grey PNG."""
    image = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((32, 32))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def digits_split(seed: int = 0) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A training zip of class folders, and held-out (label, png) pairs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    held_out = set(order[: len(order) // 5].tolist())
    buffer = io.BytesIO()
    test: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
            label, png = f"digit_{target}", digit_png(pixels)
            if index in held_out:
                test.append((label, png))
            else:
                archive.writestr(f"digits/{label}/{index:04d}.png", png)
    return buffer.getvalue(), test


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def progress_bar(progress: dict, last: dict, width: int = 30) -> str:
    epochs, steps = progress.get("epochs") or 1, progress.get("steps") or 1
    done = (max(progress.get("epoch", 1) - 1, 0) + progress.get("step", 0) / steps) / epochs
    filled = int(done * width)
    accuracy = f" accuracy {last['accuracy']:.3f}" if "accuracy" in last else ""
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] epoch {progress.get('epoch', 0)}/{epochs}"
        f" step {progress.get('step', 0)}/{steps}{accuracy}   "
    )


def epoch_line(row: dict, progress: dict) -> str:
    """A finished epoch as one line: the bar as that epoch left it (a reader may have missed
    the epoch's last steps, or every step when it connected late)."""
    steps = progress.get("steps") or 1
    at_end = {"epochs": row["epoch"], **progress, "epoch": row["epoch"], "step": steps}
    return progress_bar(at_end, row).strip()


def follow_events(client: httpx.Client, job_id: str) -> None:
    """Draw the progress bar from the job's Server-Sent Events until its final status: in a
    terminal, redrawn in place; elsewhere (a file, a pipe, CI's log) a carriage return is no
    redraw, so one line per finished epoch instead."""
    live = sys.stdout.isatty()
    progress: dict = {}
    last: dict = {}
    event = ""
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=None) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                continue
            if not line.startswith("data: "):
                continue
            data = json.loads(line.removeprefix("data: "))
            if event == "progress":
                progress = data
            elif event == "epoch":
                last = data
            if live:
                print(progress_bar(progress, last), end="", flush=True)
            elif event == "epoch":
                print(epoch_line(data, progress), flush=True)
            if event == "status" and data["status"] not in ("queued", "running"):
                break
    if live:
        print()


def run_demo(*, data_dir: str, port: int, epochs: int) -> int:
    started = time.monotonic()
    directory = Path(data_dir).resolve()
    # The demo's own service on loopback: no API key, so the console needs no login.
    environment = {**os.environ, "DATA_DIR": str(directory), "DATABASE_URL": "", "API_KEY": ""}
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    python = [sys.executable, "-m", "service"]
    subprocess.run([*python, "migrate"], env=environment, check=True)
    port = port or free_port()
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "api.log").open("w") as api_log, (logs / "worker.log").open("w") as worker_log:
        api = subprocess.Popen(
            [*python, "api", "--port", str(port)], env=environment, stdout=api_log, stderr=api_log
        )
        worker = subprocess.Popen(
            [*python, "worker"], env=environment, stdout=worker_log, stderr=worker_log
        )
        try:
            status = _drive(f"http://127.0.0.1:{port}", epochs, started)
            if status == 0:
                _stay_up(f"http://127.0.0.1:{port}", api)
            return status
        finally:
            for process in (worker, api):
                process.terminate()
            for process in (worker, api):
                process.wait(timeout=60)
            print(f"logs in {logs}")


def _stay_up(base: str, api: subprocess.Popen[bytes]) -> None:
    """In a terminal, keep the service up for the console until Ctrl-C; elsewhere (scripts,
    CI) end at once."""
    print(f"console: {base}/console   API docs: {base}/docs")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    print("the service stays up for you to explore; press Ctrl-C to stop it")
    try:
        api.wait()
    except KeyboardInterrupt:
        print()


def imagenet_reachable() -> str | None:
    """None when Keras can download MobileNetV2's ImageNet weights here; else why not."""
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    cached = keras_home / "models" / IMAGENET_WEIGHTS.rsplit("/", 1)[1]
    if cached.exists():
        return None
    try:
        response = httpx.head(IMAGENET_WEIGHTS, timeout=5, follow_redirects=True)
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    return None if response.status_code == 200 else f"HTTP {response.status_code}"


def job_body(dataset_id: str, epochs: int, offline_reason: str | None) -> dict:
    """Transfer learning where the weights can be had; training from scratch where not."""
    if offline_reason is None:
        print(
            f"job: MobileNetV2 at {PRETRAINED_INPUT_SIZE} px from ImageNet weights: the head on "
            f"a frozen backbone for {epochs} epochs, then the top 20 layers fine-tuned for 2"
        )
        return {
            "dataset_id": dataset_id,
            "name": "digits-mobilenetv2-imagenet",
            "backbone": {
                "name": "MobileNetV2", "weights": "imagenet", "input_size": PRETRAINED_INPUT_SIZE
            },
            "head": {"pooling": "avg", "dropout": 0.2},
            "freeze": {"mode": "backbone"},
            "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 0.001},
            "fine_tune": [
                {"freeze": {"mode": "partial", "trainable_from": -20}, "epochs": 2,
                 "learning_rate": 1e-4}
            ],
        }  # fmt: skip
    print(f"offline ({offline_reason}): MobileNetV2 trains from random weights instead")
    print(f"job: MobileNetV2 at {INPUT_SIZE} px, random weights, all layers train, {epochs} epochs")
    return {
        "dataset_id": dataset_id,
        "name": "digits-mobilenetv2",
        "backbone": {"name": "MobileNetV2", "weights": None, "input_size": INPUT_SIZE},
        "head": {"pooling": "avg", "dropout": 0.2},
        "freeze": {"mode": "none"},
        "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 0.001},
    }


def _drive(base: str, epochs: int, started: float) -> int:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = httpx.Client(base_url=base, timeout=120)
    if not _wait_until_ready(client):
        print("the API did not become ready", file=sys.stderr)
        return 1
    archive, held_out = digits_split()
    dataset = (
        client.post("/datasets", files={"file": ("digits.zip", archive, "application/zip")})
        .raise_for_status()
        .json()
    )
    print(
        f"dataset {dataset['id']}: {dataset['num_images']} images, "
        f"{len(dataset['classes'])} classes"
    )
    _show_health(client, dataset["id"])
    body = job_body(dataset["id"], epochs, imagenet_reachable())
    _show_advice(client, dataset["id"], body["backbone"])
    job = _train(client, body)
    if job["status"] != "succeeded":
        print(f"job {job['status']}: {job['error']}", file=sys.stderr)
        return 1
    model_id = job["model_id"]
    _show_layers(client, model_id)
    correct = _count_correct(client, model_id, held_out)
    report = client.get(f"/models/{model_id}/evaluation").raise_for_status().json()
    worst = min(report["per_class"], key=lambda row: row["f1"])
    print(
        f"validation split: accuracy {report['accuracy']:.3f}, "
        f"weakest class {worst['label']} (F1 {worst['f1']:.3f})"
    )
    calibration = report.get("calibration") or {}
    if calibration.get("fitted"):
        print(
            f"calibrated scores: temperature {calibration['temperature']:.2f}, expected "
            f"calibration error {calibration['ece_before']:.3f} → {calibration['ece_after']:.3f}"
        )
    _show_unknowns(client, model_id, report.get("unknowns"))
    print(f"training history: {[round(row['accuracy'], 3) for row in job['history']]}")
    print(f"demo took {time.monotonic() - started:.0f} s")
    print(
        f"held-out accuracy: {correct / len(held_out):.3f} "
        f"({correct}/{len(held_out)} images over HTTP)"
    )
    return 0


def _wait_until_ready(client: httpx.Client) -> bool:
    for _ in range(300):
        try:
            if client.get("/readyz").status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def _show_health(client: httpx.Client, dataset_id: str) -> None:
    report = client.get(f"/datasets/{dataset_id}/report").raise_for_status().json()
    warnings = report["warnings"]
    print(f"health report: {len(warnings) or 'no'} warning(s)")
    for line in warnings[:3]:
        print(f"  - {line}")


def _show_advice(client: httpx.Client, dataset_id: str, backbone: dict) -> None:
    """Measure the data against the job's backbone; the job then reuses the features."""
    url = f"/datasets/{dataset_id}/advice"
    advice = client.post(url, json={"backbone": backbone, "max_images": 2000})
    advice = advice.raise_for_status().json()
    print(f"advice {advice['id']}: measuring the dataset against the backbone")
    follow_events(client, advice["job_id"])
    advice = client.get(f"{url}/{advice['id']}").raise_for_status().json()
    if advice["status"] != "succeeded":
        print(f"advice {advice['status']}: {advice['error']}")
        return
    result = advice["result"]
    cell, probe = result["quadrant"], result["probe"]
    print(
        f"advice: {cell['data']} data, {cell['similarity']} (similarity "
        f"{result['similarity']:.2f}: probe accuracy {probe['accuracy']:.3f}, random weights "
        f"{probe['random_accuracy']:.3f}, chance {probe['chance']:.3f}) → strategy "
        f"{cell['strategy']}: {cell['summary']}"
    )


def _train(client: httpx.Client, body: dict) -> dict:
    """Queue the job, follow its events to the end, answer the finished job."""
    job = client.post("/jobs", json=body).raise_for_status().json()
    print(f"job {job['id']} queued")
    follow_events(client, job["id"])
    return client.get(f"/jobs/{job['id']}").raise_for_status().json()


def _show_layers(client: httpx.Client, model_id: str) -> None:
    layers = client.get(f"/models/{model_id}/layers").raise_for_status().json()
    print(
        f"model {model_id}: {len(layers['layers'])} layers, "
        f"{layers['trainable_params']:,} trainable / "
        f"{layers['non_trainable_params']:,} non-trainable parameters"
    )
    for row in layers["layers"][-4:]:
        print(f"  {row['path']:<40} {row['class_name']:<24} trainable={row['trainable']}")


def _show_unknowns(client: httpx.Client, model_id: str, unknowns: dict[str, Any] | None) -> None:
    """The unknown-input threshold, and what the model says of noise: no digit at all."""
    if not unknowns:
        return
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    files = [("files", ("noise.png", buffer.getvalue(), "image/png"))]
    answer = client.post("/predict", data={"model_id": model_id}, files=files)
    (prediction,) = answer.raise_for_status().json()["predictions"]
    print(
        f"unknown inputs: threshold {unknowns['threshold']:.2f} flags "
        f"{100 * unknowns['flagged_share']:.1f} % of the validation digits; noise scores "
        f"{prediction['ood_score']:.1f}: {'unknown' if prediction['unknown'] else 'known'} "
        f"(its best guess, {prediction['top'][0]['label']}, set aside)"
    )


def _count_correct(
    client: httpx.Client, model_id: str, held_out: list[tuple[str, bytes]], batch_size: int = 32
) -> int:
    """How many held-out digits /predict labels right, sent a batch at a time."""
    correct = 0
    for start in range(0, len(held_out), batch_size):
        batch = held_out[start : start + batch_size]
        response = (
            client.post(
                "/predict",
                data={"model_id": model_id, "top_k": "1"},
                files=[("files", (f"{label}.png", png, "image/png")) for label, png in batch],
            )
            .raise_for_status()
            .json()
        )
        correct += sum(
            prediction["top"][0]["label"] == label
            for (label, _), prediction in zip(batch, response["predictions"], strict=True)
        )
    return correct
