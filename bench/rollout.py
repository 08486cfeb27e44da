"""A rollout under load: moving an alias to a version no process has loaded, while 16
clients send /predict by that alias.

    python bench/rollout.py [--seconds 12] [--size 224] [--backbone NAME] [--quick]

In one run on this machine: two versions of one named model (`--backbone`, MobileNetV2, at
`--size` px, random weights, one epoch each) trained by the real worker; the real API
(uvicorn on loopback, as `python -m service api` starts it) with `production` on version 1,
loaded by a first request. Then 16 clients, one image per request, by name and alias, for
`--seconds`; a third of the way in, the alias moves to version 2. Printed:
- p99 before the move (the steady p99) and from the move until every client has been
  answered by version 2 (the rollout), and their ratio (goal ≤ 2);
- errors (goal: none) and answers by a model other than the two versions (goal: none);
- how long after the move the last answer by version 1 came (the switch).
The last line is machine-readable. `--quick`: 32 px, MobileNet, 3 seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.predict import (
    CONCURRENT_CLIENTS,
    SIZE,
    free_port,
    percentile,
    photo_jpegs,
    service_environment,
    start_process,
    train_models,
    wait_until_up,
)
from bench.quick import add_backbone, parse_args

Answer = tuple[float, float, str | None]  # when sent (s after start), seconds, model id or None


def clients(base: str, fields: dict, image: bytes, seconds: float, move: threading.Event) -> list:
    """16 clients for `seconds`; `move` set a third of the way in, and the last two thirds
    after it. Each answer's (when sent, latency, model id: None for an error)."""
    answers: list[Answer] = []
    lock = threading.Lock()
    stop = threading.Event()
    started = time.perf_counter()

    def loop() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while not stop.is_set():
                sent = time.perf_counter() - started
                clock = time.perf_counter()
                response = client.post(
                    "/predict", data=fields, files=[("files", ("i.jpg", image, "image/jpeg"))]
                )
                model = response.json()["model_id"] if response.status_code == 200 else None
                with lock:
                    answers.append((sent, time.perf_counter() - clock, model))

    threads = [threading.Thread(target=loop) for _ in range(CONCURRENT_CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 3)
    # A steady window of two answers a client at least, however slow this machine is now.
    while len(answers) < 2 * CONCURRENT_CLIENTS and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    move.set()
    time.sleep(seconds * 2 / 3)
    stop.set()
    for thread in threads:
        thread.join()
    return answers


def report(answers: list[Answer], moved_at: float, versions: tuple[str, str]) -> dict:
    old, new = versions
    steady = [latency for sent, latency, _ in answers if sent + latency < moved_at]
    last_old = max(
        (sent + latency for sent, latency, model in answers if model == old), default=moved_at
    )
    rollout = [latency for sent, latency, _ in answers if moved_at <= sent + latency <= last_old]
    rollout = rollout or [latency for sent, latency, _ in answers if sent >= moved_at][:1]
    errors = sum(model is None for *_, model in answers)
    strangers = sum(model not in (None, old, new) for *_, model in answers)
    return {
        "requests": len(answers),
        "steady_p99_ms": percentile(steady, 99) * 1000,
        "rollout_p99_ms": percentile(rollout, 99) * 1000,
        "rollout_p99_ratio": percentile(rollout, 99) / percentile(steady, 99),
        "switch_s": last_old - moved_at,
        "errors": errors,
        "other_models": strangers,
        "answered_by_new": sum(model == new for *_, model in answers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--size", type=int, default=SIZE)
    add_backbone(parser)
    args = parse_args(parser, {"seconds": 3.0, "size": 32})
    scratch = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    environment = service_environment(scratch)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_process(["-m", "service", "api", "--port", str(port)], environment)
    workers: list = []
    try:
        wait_until_up(f"{base}/readyz", api, "the service")
        ids = train_models(base, environment, workers, args.backbone, args.size, count=2)[1]
        models = [httpx.get(f"{base}/models/{m}", timeout=30).json() for m in ids]
        assert models[0]["name"] == models[1]["name"], models
        alias = f"{base}/registry/{models[0]['name']}/aliases/production"
        httpx.put(alias, json={"version": models[0]["version"]}, timeout=30).raise_for_status()
        fields = {"name": models[0]["name"], "alias": "production", "top_k": "1"}
        image = photo_jpegs(1, args.size, args.size, seed=1)[0]
        files = [("files", ("i.jpg", image, "image/jpeg"))]
        httpx.post(f"{base}/predict", data=fields, files=files, timeout=120).raise_for_status()

        move = threading.Event()
        moved: list[float] = []

        def mover() -> None:
            move.wait()
            moved.append(time.perf_counter())
            httpx.put(alias, json={"version": models[1]["version"]}, timeout=30)

        threading.Thread(target=mover, daemon=True).start()
        started = time.perf_counter()
        answers = clients(base, fields, image, args.seconds, move)
        figures = report(answers, moved[0] - started, (ids[0], ids[1]))
    finally:
        for process in [*workers, api]:
            process.send_signal(signal.SIGTERM)
        for process in [*workers, api]:
            process.wait(timeout=60)
    print(
        f"{figures['requests']} requests by alias, 16 clients; the alias moved a third of the "
        f"way in. p99 steady {figures['steady_p99_ms']:.1f} ms, during the rollout "
        f"{figures['rollout_p99_ms']:.1f} ms (ratio {figures['rollout_p99_ratio']:.2f}, goal ≤ 2); "
        f"last answer by version 1 {figures['switch_s']:.2f} s after the move; errors "
        f"{figures['errors']}, answers by another model {figures['other_models']} (goal: none)"
    )
    print(
        f"rollout_p99_ratio={figures['rollout_p99_ratio']:.3f} switch_s={figures['switch_s']:.3f} "
        f"errors={figures['errors']} other_models={figures['other_models']}"
    )


if __name__ == "__main__":
    main()
