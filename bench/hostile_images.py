"""What hostile inputs cost before their refusal and after: time and peak memory.

1. Images of one colour at 7999×7999 px (just under the 64-megapixel cap), a few KB each as
   lossless WebP, PNG, GIF or progressive JPEG: `to_pixels` at 224 px as /predict and
   training call it, before (the same decode with the cost check switched off, as it was)
   and after (`images.decode` refusing it from its header). Beside each, the cost the header
   gives (`decode_cost`) against the peak memory the full decode measured.
2. A zip of 300,000 empty entries: opening it as an upload does, before (`zipfile` reads
   the whole directory, then the entry count is checked) and after (`open_zip` reading the
   count from the end record and refusing before the directory is read).

Each case runs in a process of its own, so its peak resident memory is its own. Ratios are
before ÷ after, last line `name=value` pairs.

    .venv/bin/python bench/hostile_images.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import parse_args  # noqa: E402

MB = 1_000_000


def one_colour(side: int, image_format: str) -> bytes:
    """A `side`² image of one colour: what compresses best in every format."""
    mode = "P" if image_format == "GIF" else "RGB"
    image = Image.new(mode, (side, side), 3 if mode == "P" else (10, 200, 30))
    options: dict[str, Any] = {
        "WEBP": {"lossless": True, "method": 0},
        "PNG": {"compress_level": 9},
        "JPEG": {"progressive": True},
    }.get(image_format, {})
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def empty_entries(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number in range(count):
            archive.writestr(f"e/{number}", b"")
    return buffer.getvalue()


def peak_rss() -> int:
    """This process's peak resident memory: VmHWM, which starts afresh with the process's
    program (ru_maxrss keeps the parent's peak from before the fork)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured(run: Callable[[], Any]) -> dict[str, Any]:
    """Seconds, extra peak memory and outcome of `run` in this (fresh) process."""
    before = peak_rss()
    started = time.perf_counter()
    try:
        run()
        outcome = "accepted"
    except Exception as error:  # the refusal is the point: say which
        outcome = f"{type(error).__name__}: {str(error)[:90]}"
    return {
        "seconds": time.perf_counter() - started,
        "extra_bytes": max(0, peak_rss() - before),
        "outcome": outcome,
    }


def child(case: str, when: str, path: Path, max_files: int) -> None:
    """One measurement, printed as JSON: run in a process of its own."""
    from service.datasets import ingest
    from service.ml import images

    data = path.read_bytes()
    if case == "zip":
        limits = ingest.Limits(max_files, 32 << 20, 1 << 30)
        if when == "before":  # zipfile reads every entry, then the count is checked

            def run() -> Any:
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    return ingest.archive_files(archive, limits)
        else:

            def run() -> Any:
                return ingest.open_zip(io.BytesIO(data), limits)

        print(json.dumps(measured(run)))
        return
    if when == "before":
        images._check_cost = lambda image, size: None  # type: ignore[attr-defined]
    header = Image.open(io.BytesIO(data))
    figures = measured(lambda: images.to_pixels(data, 224))
    print(json.dumps({**figures, "estimated_bytes": images.decode_cost(header)}))


def measure(case: str, when: str, path: Path, max_files: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", case, when, str(path), str(max_files)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, size: int, before: dict[str, Any], after: dict[str, Any]) -> None:
    print(
        f"{name:<16} {size:>10,} B  before {before['seconds']:6.2f} s "
        f"{before['extra_bytes'] / MB:7.0f} MB ({before['outcome'][:20]})  after "
        f"{after['seconds'] * 1000:6.1f} ms {after['extra_bytes'] / MB:5.0f} MB "
        f"({after['outcome'][:40]})"
    )
    if "estimated_bytes" in before and before["outcome"] == "accepted":
        estimate = before["estimated_bytes"] / max(before["extra_bytes"], 1)
        print(
            f"{'':<16} cost from the header {before['estimated_bytes'] / MB:.0f} MB, "
            f"{estimate:.2f}× the measured peak; {before['estimated_bytes'] / size:,.0f}× "
            "the file"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=7999, help="the images' side, px")
    parser.add_argument("--entries", type=int, default=300_000, help="the zip's entries")
    parser.add_argument("--max-files", type=int, default=200_000, help="MAX_DATASET_FILES")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/hostile_images"))
    args = parse_args(parser, {"side": 3000, "entries": 3000, "max_files": 2000})
    args.folder.mkdir(parents=True, exist_ok=True)
    ratios: dict[str, float] = {}
    for image_format in ("WEBP", "PNG", "GIF", "JPEG"):
        path = args.folder / f"one_colour_{args.side}.{image_format.lower()}"
        if not path.exists():
            path.write_bytes(one_colour(args.side, image_format))
        before = measure("image", "before", path, args.max_files)
        after = measure("image", "after", path, args.max_files)
        report(f"{args.side}² {image_format}", path.stat().st_size, before, after)
        key = image_format.lower()
        ratios[f"{key}_time_ratio"] = before["seconds"] / max(after["seconds"], 1e-6)
        ratios[f"{key}_memory_ratio"] = before["extra_bytes"] / max(after["extra_bytes"], MB)
    path = args.folder / f"empty_entries_{args.entries}.zip"
    if not path.exists():
        path.write_bytes(empty_entries(args.entries))
    before = measure("zip", "before", path, args.max_files)
    after = measure("zip", "after", path, args.max_files)
    report(f"zip of {args.entries:,}", path.stat().st_size, before, after)
    ratios["zip_time_ratio"] = before["seconds"] / max(after["seconds"], 1e-6)
    ratios["zip_memory_ratio"] = before["extra_bytes"] / max(after["extra_bytes"], MB)
    print(" ".join(f"{name}={value:.1f}" for name, value in ratios.items()))


if __name__ == "__main__":
    main()
