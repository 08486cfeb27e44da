"""Dataset versions at size: an edit of a 20,000-image dataset (1,000 relabelled, 100
removed), what its new version stores per image, and what reading a version's manifest for
training costs against reading the dataset's rows as the service did before versions.

    python bench/versions.py [--images 20000] [--relabel 1000] [--delete 100]
                             [--image-bytes 2048] [--repeat 5] [--quick]

A SQLite database migrated by Alembic; images inserted in bulk with stand-in bytes of
`--image-bytes` each (an edit never reads them; the training read does, both ways). Printed:
the edit's time (p50 of `--repeat`, each one a new version; goal ≤ 1 s), the database's growth
per image of one new version (file pages after a WAL checkpoint; goal ≤ 64 bytes, no image
bytes copied), and the training read of the latest version's images ÷ the same read of the
dataset's rows without a manifest (goal ≤ 1.1). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sqlalchemy import insert, select

from bench.quick import parse_args
from service.datasets import edits, versions
from service.datasets.spec import DatasetEdit, Relabel
from service.storage.db import Database
from service.storage.tables import Dataset, DatasetImage

CLASSES = ("cats", "dogs", "birds", "fish")


def populate(database: Database, images: int, image_bytes: int) -> None:
    """One dataset of `images` images in four classes, as its version 1."""
    rng = np.random.default_rng(0)
    with database.session(write=True) as session:
        dataset = Dataset(id="d_bench", name="bench", num_images=0, classes=[], skipped=[])
        session.add(dataset)
        session.flush()
        for start in range(0, images, 1000):
            rows = [
                {
                    "dataset_id": "d_bench",
                    "uploaded_label": CLASSES[n % len(CLASSES)],
                    "filename": f"{CLASSES[n % len(CLASSES)]}/{n:06d}.jpg",
                    "data": rng.bytes(image_bytes),
                    "size_bytes": image_bytes,
                }
                for n in range(start, min(images, start + 1000))
            ]
            session.execute(insert(DatasetImage), rows)

        def fill(session: Any, version_id: int, previous: int | None) -> None:
            versions.add_stored(session, version_id, "d_bench", 0)

        versions.new_version(session, dataset, source="upload", message="", fill=fill)


def file_bytes(database: Database) -> int:
    """The database file's size in pages, after the WAL is written back into it."""
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
        size = connection.exec_driver_sql("PRAGMA page_size").scalar()
    return int(pages) * int(size)


def one_edit(database: Database, relabel: int, delete: int, round_: int) -> float:
    with database.session() as session:
        latest = versions.version_id(session, "d_bench", None)
        ids = list(
            session.scalars(versions.version_images(latest).with_only_columns(DatasetImage.id))
        )
    rng = np.random.default_rng(round_)
    chosen = rng.choice(ids, relabel + delete, replace=False).tolist()
    body = DatasetEdit(
        relabel=[
            Relabel(image_id=i, label=CLASSES[(round_ + n) % len(CLASSES)])
            for n, i in enumerate(chosen[:relabel])
        ],
        delete=chosen[relabel:],
    )
    started = time.perf_counter()
    with database.session(write=True) as session:
        edits.edit_dataset(session, "d_bench", body)
    return time.perf_counter() - started


def timed(reads: list[Callable[[], int]], repeat: int) -> list[float]:
    """Each read's p50, the reads taking turns (after one warm-up each), so the page cache
    and the machine's load treat them alike."""
    times: list[list[float]] = [[] for _ in reads]
    for read in reads:
        read()
    for _ in range(repeat):
        for read, spent in zip(reads, times, strict=True):
            started = time.perf_counter()
            read()
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) for spent in times]


def training_reads(database: Database) -> tuple[Callable[[], int], Callable[[], int]]:
    """The worker's read of the latest version's images (labels from its manifest), and the
    read of the dataset's rows as it was before versions (labels on the rows)."""

    def manifest() -> int:
        with database.session() as session:
            latest = versions.version_id(session, "d_bench", None)
            query = versions.version_images(latest, DatasetImage.data)
            return len(session.execute(query).all())

    def rows() -> int:
        with database.session() as session:
            query = (
                select(
                    DatasetImage.id,
                    DatasetImage.uploaded_label,
                    DatasetImage.filename,
                    DatasetImage.data,
                )
                .where(DatasetImage.dataset_id == "d_bench")
                .order_by(DatasetImage.id)
            )
            return len(session.execute(query).all())

    return manifest, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--relabel", type=int, default=1000)
    parser.add_argument("--delete", type=int, default=100)
    parser.add_argument("--image-bytes", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    quick = {"images": 400, "relabel": 20, "delete": 5, "repeat": 2}
    args = parse_args(parser, quick, argv)
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as folder:
        database = Database(f"sqlite:///{Path(folder) / 'bench.db'}")
        database.upgrade()
        populate(database, args.images, args.image_bytes)
        before = file_bytes(database)
        seconds = [one_edit(database, args.relabel, args.delete, n) for n in range(args.repeat)]
        grown = (file_bytes(database) - before) / args.repeat
        per_image = grown / (args.images - args.delete)
        manifest, rows = training_reads(database)
        manifest_s, rows_s = timed([manifest, rows], args.repeat)
        database.dispose()
    print(f"images={args.images} relabel={args.relabel} delete={args.delete} (SQLite)")
    print(f"edit p50 {statistics.median(seconds):.3f} s (goal <= 1 s)")
    print(f"new version: {per_image:.1f} bytes per image (goal <= 64; images are 2 KiB)")
    print(f"training read: manifest {manifest_s:.3f} s, rows before versions {rows_s:.3f} s")
    print(
        f"edit_s={statistics.median(seconds):.3f} bytes_per_image={per_image:.1f} "
        f"manifest_read_ratio={manifest_s / rows_s:.2f}"
    )


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
