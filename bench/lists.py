"""List speed at size: the first page of GET /jobs and GET /models with 20,000 jobs and 5,000
models in SQLite, against the same call on a database of 10 rows each.

    python bench/lists.py [--jobs 20000] [--models 5000] [--repeat 30] [--quick]

Both databases are built in this run (migrated by Alembic, rows inserted in bulk: jobs with
a normalised spec and a 5-epoch history, models with small stand-in BLOBs — the lists never
read those); each call goes through the real app in this process. Printed per list: p50 of
the first page (default limit), of a page deep in the list (followed by cursor), bytes per
page, and the ratio to the 10-row database (goal ≤ 2). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import insert

from bench.quick import parse_args
from service.api.app import create_app
from service.config import Settings
from service.storage.db import Database
from service.storage.tables import Dataset, Job, TrainedModel
from service.training.spec import JobSpec

SPEC = JobSpec.model_validate(
    {"dataset_id": "d_bench", "backbone": {"name": "MobileNetV2", "input_size": 96}}
).model_dump(mode="json")
HISTORY = [
    {
        "epoch": n,
        "stage": 1,
        "loss": 0.5,
        "accuracy": 0.8,
        "val_loss": 0.6,
        "val_accuracy": 0.7,
        "seconds": 12.5,
    }
    for n in range(1, 6)
]


def populate(database: Database, jobs: int, models: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with database.session(write=True) as session:
        session.add(Dataset(id="d_bench", name="bench", num_images=0, classes=[], skipped=[]))
        session.flush()
        session.execute(
            insert(Job),
            [
                {
                    "id": f"j_{n:016x}",
                    "name": f"job-{n}",
                    "status": "succeeded" if n < models else "failed",
                    "spec": SPEC,
                    "dataset_id": "d_bench",
                    "history": HISTORY,
                    "attempts": 1,
                    "cancel_requested": False,
                    "created_at": start + timedelta(seconds=n),
                }
                for n in range(jobs)
            ],
        )
        session.execute(
            insert(TrainedModel),
            [
                {
                    "id": f"m_{n:016x}",
                    "name": f"model-{n}",
                    "version": 1,  # each name stored once: its first version
                    "job_id": f"j_{n:016x}",
                    "dataset_id": "d_bench",
                    "backbone": "MobileNetV2",
                    "input_size": 96,
                    "classes": ["cats", "dogs"],
                    "metrics": {"val_accuracy": 0.9, "val_loss": 0.3},
                    "trainable_params": 1281,
                    "non_trainable_params": 2257984,
                    "size_bytes": 1024,
                    "savedmodel_sha256": "0" * 64,
                    "savedmodel": b"\0" * 1024,
                    "backbone_weights": b"\0" * 1024,
                    "created_at": start + timedelta(seconds=n),
                }
                for n in range(models)
            ],
        )


def timed(client: TestClient, url: str, repeat: int) -> tuple[float, int, str]:
    """p50 milliseconds, bytes of the answer, and its next-page URL."""
    client.get(url)  # warm: compiled statements, page cache
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return (
        float(np.median(times)),
        len(response.content),
        response.links["next"]["url"] if ("next" in response.links) else "",
    )


def deep_page(client: TestClient, path: str, hops: int) -> str:
    """The URL of a page `hops` pages into the list, by following next links."""
    url = f"{path}?limit=500"
    for _ in range(hops):
        link = client.get(url).links.get("next")
        if link is None:
            break
        url = link["url"]
    return url.replace("limit=500", "limit=50")


def measure(directory: Path, jobs: int, models: int, repeat: int) -> dict[str, Any]:
    settings = Settings(_env_file=None, data_dir=directory, database_url="")
    database = Database(settings.database_url)
    database.upgrade()
    began = time.perf_counter()
    populate(database, jobs, models)
    print(f"  {jobs} jobs, {models} models inserted in {time.perf_counter() - began:.1f} s")
    figures: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:
        for path in ("/jobs", "/models"):
            first_ms, size, _ = timed(client, path, repeat)
            deep_ms, _, _ = timed(client, deep_page(client, path, hops=8), repeat)
            figures[path] = {"first_ms": first_ms, "bytes": size, "deep_ms": deep_ms}
    database.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--models", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parse_args(parser, {"jobs": 200, "models": 50, "repeat": 3})
    with tempfile.TemporaryDirectory() as small, tempfile.TemporaryDirectory() as large:
        print("baseline: 10 rows each")
        base = measure(Path(small), 10, 10, args.repeat)
        print(f"at size: {args.jobs} jobs, {args.models} models")
        big = measure(Path(large), args.jobs, args.models, args.repeat)
    ratios = {}
    for path in ("/jobs", "/models"):
        b, s = big[path], base[path]
        ratio = b["first_ms"] / s["first_ms"]
        ratios[path.strip("/")] = ratio
        print(
            f"GET {path}: first page {b['first_ms']:.1f} ms ({b['bytes']:,} bytes) at size, "
            f"{s['first_ms']:.1f} ms ({s['bytes']:,} bytes) on 10 rows → ratio {ratio:.2f} "
            f"(goal ≤ 2); a page 4,000 rows deep {b['deep_ms']:.1f} ms"
        )
    print(" ".join(f"{name}_first_page_ratio={value:.3f}" for name, value in ratios.items()))


if __name__ == "__main__":
    main()
