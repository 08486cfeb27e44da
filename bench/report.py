"""The dataset health report's costs: the facts measured at upload, and the report itself.

    python bench/report.py [--images 1000] [--sizes 1000 5000] [--repeat 5] [--quick]

1. Ingest (`read_image_zip`) of a zip of small JPEGs (128 px) with the facts (SHA-256,
   perceptual hash, size, mode), against the same ingest with the facts stubbed out, so the
   decode alone that the upload check always did: `facts_ratio` is what the facts cost.
   The stub keeps one fact, the real SHA-256 of the bytes: pass 2 reads each image again
   and refuses one whose hash differs from pass 1's, so an upload hashes its images whether
   or not the report needs it (a constant hash would fail that check, not skip it). So the
   ratio is what the report's own facts add — the perceptual hash, the RGB conversion it
   takes, size and mode — and the SHA-256's cost is printed beside it.
2. `dataset_report` on SQLite datasets of each size (uploaded through `create_dataset`, so
   with their facts): median seconds, and per 1,000 images.
3. The first report on a dataset stored before the facts existed (every image measured).
4. The near-duplicate search alone on 10,000 random hashes.

Everything runs in this process; the last line is machine-readable.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image
from sqlalchemy import update

from bench.quick import parse_args
from service.datasets import ingest, similar
from service.datasets import report as reports
from service.datasets.ingest import Limits, read_image_zip
from service.datasets.service import create_dataset
from service.ml.images import ImageFacts
from service.storage.db import Database
from service.storage.tables import DatasetImage

LIMITS = Limits(max_files=100_000, max_image_bytes=1 << 24, max_total_bytes=1 << 32)
CLASSES = ("cats", "dogs", "birds", "fish")


def stub_facts(data: bytes, image: Image.Image) -> ImageFacts:
    """No facts measured but the SHA-256 that pass 2's integrity check compares against."""
    sha256 = hashlib.sha256(data).hexdigest()
    return ImageFacts(sha256=sha256, phash="0" * 16, width=0, height=0, mode="RGB")


def photo(rng: np.random.Generator, size: int) -> bytes:
    """A JPEG that compresses like a photo: smooth colour regions plus a little grain."""
    cells = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    pixels = np.asarray(cells.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, pixels.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=85
    )
    return buffer.getvalue()


def image_zip(count: int, size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for number in range(count):
            archive.writestr(f"{CLASSES[number % len(CLASSES)]}/{number:05d}.jpg", photo(rng, size))
    return buffer.getvalue()


def median_seconds(call: Callable[[], object], repeat: int) -> float:
    call()  # warm: imports, compiled statements, page cache
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def ingest_figures(content: bytes, repeat: int) -> tuple[float, float, float]:
    """Seconds to read the zip with the facts, with the decode alone (and the SHA-256 pass 2
    checks against), and of that SHA-256 alone (hashing every image once)."""
    with_facts = median_seconds(lambda: read_image_zip(io.BytesIO(content), LIMITS), repeat)
    measure = ingest.image_facts
    ingest.image_facts = stub_facts  # type: ignore[assignment]
    try:
        decode_only = median_seconds(lambda: read_image_zip(io.BytesIO(content), LIMITS), repeat)
    finally:
        ingest.image_facts = measure  # type: ignore[assignment]
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        members = [archive.read(info) for info in archive.infolist()]
    sha256 = median_seconds(lambda: [hashlib.sha256(data).digest() for data in members], repeat)
    return with_facts, decode_only, sha256


def stored_dataset(database: Database, content: bytes) -> str:
    with database.session(write=True) as session:
        upload = io.BytesIO(content)
        dataset = create_dataset(session, upload=upload, filename="b.zip", name=None, limits=LIMITS)
        return dataset.id


def report_seconds(database: Database, dataset_id: str, repeat: int) -> float:
    def call() -> None:
        with database.session(write=True) as session:
            reports.dataset_report(
                session, dataset_id, seed=0, validation_split=0.2, input_size=224
            )

    return median_seconds(call, repeat)


def first_report_on_old_rows(database: Database, dataset_id: str) -> tuple[float, int]:
    """Seconds of the report that measures every image (facts nulled, as before 0005)."""
    with database.session(write=True) as session:
        blank = dict.fromkeys(("sha256", "phash", "width", "height", "mode"))
        session.execute(
            update(DatasetImage).where(DatasetImage.dataset_id == dataset_id).values(blank)
        )
    began = time.perf_counter()
    with database.session(write=True) as session:
        report = reports.dataset_report(
            session, dataset_id, seed=0, validation_split=0.2, input_size=None
        )
    return time.perf_counter() - began, report.measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000, help="images in the ingest zip")
    parser.add_argument("--size", type=int, default=128, help="their side, px")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parse_args(parser, {"images": 40, "sizes": [40], "repeat": 1})
    per = 1000 / args.images
    content = image_zip(args.images, args.size)
    with_facts, decode_only, sha256 = ingest_figures(content, args.repeat)
    facts_ratio = with_facts / decode_only
    print(
        f"ingest of {args.images} JPEGs at {args.size} px: {with_facts * per:.3f} s per 1,000 "
        f"with the facts, {decode_only * per:.3f} s decoding alone (with the SHA-256 that "
        f"pass 2 checks: {sha256 * per * 1000:.1f} ms per 1,000 a hash) → facts_ratio "
        f"{facts_ratio:.2f} (+{(with_facts - decode_only) * per * 1000:.0f} ms per 1,000)"
    )
    figures = {"facts_ratio": facts_ratio}
    with tempfile.TemporaryDirectory() as directory:
        database = Database(f"sqlite:///{directory}/bench.db")
        database.upgrade()
        for count in args.sizes:
            dataset_id = stored_dataset(database, image_zip(count, args.size, seed=count))
            seconds = report_seconds(database, dataset_id, args.repeat)
            figures[f"report_s_per_1000_at_{count}"] = seconds * 1000 / count
            print(
                f"dataset_report on {count} images: {seconds:.3f} s "
                f"({seconds * 1000 / count:.3f} s per 1,000)"
            )
        seconds, measured = first_report_on_old_rows(database, dataset_id)
        figures["old_rows_s_per_1000"] = seconds * 1000 / measured
        print(
            f"first report on {measured} images stored without facts ({args.size} px): "
            f"{seconds:.3f} s ({seconds * 1000 / measured:.3f} s per 1,000, measuring included)"
        )
        database.dispose()
    hashes = np.random.default_rng(0).integers(0, 2**63, 10_000, dtype=np.uint64)
    seconds = median_seconds(lambda: similar.hamming_pairs(hashes, 6), args.repeat)
    figures["near_pairs_10000_s"] = seconds
    print(f"near-duplicate search over 10,000 hashes (50 M pairs): {seconds:.3f} s")
    print(" ".join(f"{name}={value:.4f}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
