"""An API process starting with aliased models: time to ready, its first requests, its memory,
and what one copy of each model per host (rather than per process) could save.

    python bench/start.py [--models 4] [--together 2] [--size 224] [--backbone NAME] [--quick]

In one run on this machine: `--models` models (`--backbone`, MobileNetV2, at `--size` px,
random weights, one epoch each), each under its own name with `production` on it, trained by
the real worker; then fresh API processes (`python -m service api`, uvicorn on loopback), one
at a time:
- lazy (`WARM_MODELS=false`, before the warm-up existed), on a host that has not unpacked
  the models yet: seconds from start to /readyz 200, then the first /predict by each alias,
  and the process's memory at ready, after the first model and after the last;
- warm (the default): the same, the models unpacked on the host already (a restart);
- `--together` warm processes started together, as two containers on one host would: each
  one's time to ready and memory.
Memory is resident (RSS) and unique to the process (USS: what a second process adds, its
shared libraries counted once per host). The share the models take of a process (what loading
each model once per host could save in every further process) is (USS after the last model −
USS after the first) ÷ (models − 1) × models; TensorFlow's own runtime is the rest.
`cold_start_ratio` is the first /predict by alias after a warm start's ready ÷ loading the
stored SavedModel and calling it once in this process, TensorFlow already imported (goal
≤ 1.5); `lazy_cold_start_ratio` the same without the warm-up.
The last line is machine-readable. `--quick`: 2 models at 32 px, MobileNet, no processes
started together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.predict import (
    SIZE,
    dataset_zip,
    free_port,
    photo_jpegs,
    service_environment,
    start_process,
    stored_savedmodel,
    wait_for_status,
    wait_until_up,
)
from bench.quick import add_backbone, parse_args

MB = 1024 * 1024


def memory(pid: int) -> dict[str, float]:
    """Resident (RSS) and unique (USS: private clean + dirty) memory of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    unique = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss_mb": fields["Rss"] / MB, "uss_mb": unique / MB}


class Api:
    """An API process on `environment`, timed from its start to /readyz 200."""

    def __init__(self, environment: dict, warm: bool) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        self.started = time.perf_counter()
        arguments = ["-m", "service", "api", "--port", self.base.rsplit(":", 1)[1]]
        self.process = start_process(arguments, {**environment, "WARM_MODELS": str(warm)})
        self.ready_s = 0.0

    def wait_ready(self) -> float:
        wait_until_up(f"{self.base}/readyz", self.process, "the API")
        self.ready_s = time.perf_counter() - self.started
        return self.ready_s

    def first_predict(self, name: str, image: bytes) -> float:
        started = time.perf_counter()
        httpx.post(
            f"{self.base}/predict",
            data={"name": name, "alias": "production", "top_k": "1"},
            files=[("files", ("first.jpg", image, "image/jpeg"))],
            timeout=300,
        ).raise_for_status()
        return time.perf_counter() - started

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def train_aliased(
    base: str, environment: dict, names: list[str], backbone: str, size: int
) -> list[str]:
    """One model per name, trained by one worker, each with `production` on it; their ids."""
    dataset = httpx.post(
        f"{base}/datasets",
        files={"file": ("bench.zip", dataset_zip(per_class=4), "application/zip")},
        timeout=120,
    ).raise_for_status()
    body = {
        "dataset_id": dataset.json()["id"],
        "backbone": {"name": backbone, "weights": None, "input_size": size},
        "freeze": {"mode": "backbone"},
        "training": {"epochs": 1, "batch_size": 8},
    }
    job_ids = [
        httpx.post(f"{base}/jobs", json={**body, "name": name}, timeout=60).json()["id"]
        for name in names
    ]
    worker = start_process(["-m", "service", "worker"], environment)
    try:
        jobs = [wait_for_status(base, job_id, {"succeeded", "failed"}) for job_id in job_ids]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    for name in names:
        httpx.put(
            f"{base}/registry/{name}/aliases/production", json={"version": 1}, timeout=30
        ).raise_for_status()
    return [job["model_id"] for job in jobs]


def one_start(environment: dict, warm: bool, names: list[str], image: bytes) -> dict:
    """A fresh API process: its time to ready, first /predict by each alias, and memory."""
    api = Api(environment, warm)
    try:
        figures = {"ready_s": api.wait_ready(), "at_ready": memory(api.process.pid)}
        firsts = []
        for number, name in enumerate(names):
            firsts.append(api.first_predict(name, image))
            if number == 0:
                figures["after_first"] = memory(api.process.pid)
        figures |= {"first_predicts_s": firsts, "after_last": memory(api.process.pid)}
    finally:
        api.stop()
    return figures


def together(environment: dict, count: int) -> list[dict]:
    """Warm API processes started at once on one host: each one's ready and memory."""
    apis = [Api(environment, warm=True) for _ in range(count)]
    try:
        return [{"ready_s": api.wait_ready(), **memory(api.process.pid)} for api in apis]
    finally:
        for api in apis:
            api.stop()


def raw_load_and_call(savedmodel_dir: Path, size: int) -> float:
    """tf.saved_model.load + one call, in this process (TensorFlow imported before the clock)."""
    import numpy as np
    import tensorflow as tf

    started = time.perf_counter()
    loaded = tf.saved_model.load(str(savedmodel_dir))
    loaded.serve(np.zeros((1, size, size, 3), np.float32)).numpy()
    return time.perf_counter() - started


def measure(environment: dict, scratch: Path, args: argparse.Namespace) -> dict:
    names = [f"start-{number}" for number in range(args.models)]
    api = Api(environment, warm=False)
    try:
        api.wait_ready()
        ids = train_aliased(api.base, environment, names, args.backbone, args.size)
    finally:
        api.stop()
    image = photo_jpegs(1, args.size, args.size, seed=1)[0]
    figures = {
        "lazy": one_start(environment, False, names, image),
        "warm": one_start(environment, True, names, image),
    }
    figures["together"] = together(environment, args.together)
    figures["raw_s"] = raw_load_and_call(stored_savedmodel(scratch, ids[0]), args.size)
    return figures


def report(figures: dict, models: int) -> dict:
    lazy, warm = figures["lazy"], figures["warm"]
    per_model = (lazy["after_last"]["uss_mb"] - lazy["after_first"]["uss_mb"]) / (models - 1)
    loaded = lazy["after_last"]["uss_mb"]
    return {
        "lazy_ready_s": lazy["ready_s"],
        "warm_ready_s": warm["ready_s"],
        "lazy_first_predict_max_s": max(lazy["first_predicts_s"]),
        "warm_first_predict_max_s": max(warm["first_predicts_s"]),
        "cold_start_ratio": warm["first_predicts_s"][0] / figures["raw_s"],
        "lazy_cold_start_ratio": lazy["first_predicts_s"][0] / figures["raw_s"],
        "lazy_uss_at_ready_mb": lazy["at_ready"]["uss_mb"],
        "warm_uss_at_ready_mb": warm["at_ready"]["uss_mb"],
        "warm_rss_at_ready_mb": warm["at_ready"]["rss_mb"],
        "uss_per_model_mb": per_model,
        "models_share": per_model * models / loaded,
        "together_ready_s": max((api["ready_s"] for api in figures["together"]), default=0),
        "together_uss_mb": [api["uss_mb"] for api in figures["together"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--together", type=int, default=2, help="warm processes at once")
    parser.add_argument("--size", type=int, default=SIZE)
    add_backbone(parser)
    args = parse_args(parser, {"models": 2, "together": 0, "size": 32})
    if args.models < 2:
        parser.error("--models: at least 2 (the memory per model is a difference)")
    scratch = Path(tempfile.mkdtemp(prefix="bench-start-"))
    environment = service_environment(scratch)
    figures = report(measure(environment, scratch, args), args.models)
    shutil.rmtree(scratch, ignore_errors=True)
    m = figures
    print(
        f"{args.models} aliased models ({args.backbone}, {args.size} px), a fresh API process:\n"
        f"  start to ready: {m['lazy_ready_s']:.2f} s lazy, {m['warm_ready_s']:.2f} s warm\n"
        f"  slowest first /predict by alias after ready: {m['lazy_first_predict_max_s']:.3f} s "
        f"lazy, {m['warm_first_predict_max_s']:.3f} s warm\n"
        f"  memory at ready: USS {m['lazy_uss_at_ready_mb']:.0f} MB lazy, "
        f"{m['warm_uss_at_ready_mb']:.0f} MB warm (RSS {m['warm_rss_at_ready_mb']:.0f} MB)\n"
        f"  each model: {m['uss_per_model_mb']:.1f} MB of USS; the models, "
        f"{m['models_share']:.1%} of a loaded process\n"
        f"  {args.together} processes started together: ready in "
        f"{m['together_ready_s']:.2f} s, USS "
        + ", ".join(f"{uss:.0f}" for uss in m["together_uss_mb"])
        + " MB"
    )
    print(
        f"cold_start_ratio={m['cold_start_ratio']:.3f} "
        f"lazy_cold_start_ratio={m['lazy_cold_start_ratio']:.3f} "
        f"lazy_ready_s={m['lazy_ready_s']:.3f} "
        f"warm_ready_s={m['warm_ready_s']:.3f} warm_uss_mb={m['warm_uss_at_ready_mb']:.1f} "
        f"uss_per_model_mb={m['uss_per_model_mb']:.2f} models_share={m['models_share']:.4f}"
    )


if __name__ == "__main__":
    main()
