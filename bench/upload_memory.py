"""The API's extra resident memory while it stores one large dataset upload.

Makes (once) a zip of random-noise JPEGs (incompressible: stored as they are), starts a real
`python -m service api` on a fresh SQLite database, POSTs the zip to /datasets while sampling
the API process's VmRSS from /proc, and prints the idle figure, the peak, their difference and
the upload's throughput. `--code DIR` runs another checkout's code (e.g. `git archive HEAD`
unpacked somewhere) with the same zip, for a before/after comparison.

    .venv/bin/python bench/upload_memory.py --mb 950 [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quick import parse_args  # noqa: E402


def make_zip(path: Path, megabytes: int, side: int = 1024) -> None:
    """Noise JPEGs in two class folders until the zip holds `megabytes` MB."""
    rng = np.random.default_rng(0)
    total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        number = 0
        while total < megabytes * 1_000_000:
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
            data = buffer.getvalue()
            archive.writestr(f"noise/{'ab'[number % 2]}/{number:05d}.jpg", data)
            total += len(data)
            number += 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(code: Path, upload: Path, port: int) -> tuple[int, int, float]:
    """(idle RSS, peak RSS during the upload, seconds) of one API process."""
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "DATA_DIR": data_dir, "AUTO_MIGRATE": "true"}
        env.pop("API_KEY", None)
        env["MAX_DATASET_BYTES"] = str(2 << 30)
        command = [sys.executable, "-m", "service", "api", "--port", str(port)]
        server = subprocess.Popen(command, cwd=code, env=env, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            time.sleep(2)
            idle = rss_bytes(server.pid)
            peak = idle
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.05):
                    peak = max(peak, rss_bytes(server.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            with upload.open("rb") as file:
                response = httpx.post(
                    f"{url}/datasets",
                    files={"file": ("noise.zip", file, "application/zip")},
                    timeout=3600,
                )
            seconds = time.monotonic() - started
            done.set()
            sampler.join()
            assert response.status_code == 201, response.text[:500]
            return idle, peak, seconds
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=950, help="the zip's size, MB")
    parser.add_argument("--side", type=int, default=1024, help="the JPEGs' side, px")
    parser.add_argument(
        "--zip",
        type=Path,
        default=None,
        help="made once (default: upload_memory_<mb>mb.zip in /tmp)",
    )
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    args = parse_args(parser, {"mb": 2, "side": 256, "port": 0})
    upload = args.zip or Path(tempfile.gettempdir()) / f"upload_memory_{args.mb}mb_{args.side}.zip"
    if not upload.exists():
        make_zip(upload, args.mb, args.side)
    size = upload.stat().st_size
    idle, peak, seconds = measure(args.code.resolve(), upload, args.port or free_port())
    mb = 1_000_000
    print(
        f"upload {size / mb:.0f} MB in {seconds:.1f} s ({size / mb / seconds:.1f} MB/s); "
        f"API RSS idle {idle / mb:.0f} MB, peak {peak / mb:.0f} MB, "
        f"extra {(peak - idle) / mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
