"""Every script in bench/ runs in its quick mode (`--quick`: tiny sizes, the same code paths)
and prints its ratios, so a bench that breaks, or silently stops printing, fails here.

Each runs as a user runs it, `python bench/<name>.py --quick`, in a process of its own. The
figures of a quick run are not measurements: only that they are printed, as numbers, is
checked. A script added to bench/ fails `test_bench` until it has its entry in PRINTS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HELPERS = {"quick.py"}  # modules of bench/ that are not benches
TIMEOUT = 600
# The service's own settings are the bench's to choose, not the shell's.
UNSET = ("API_KEY", "DATABASE_URL", "DATA_DIR", "IMPORT_ROOT")


def ratios(*names: str) -> Callable[[str], None]:
    """Each `name=number` printed (the benches' machine-readable last lines)."""

    def check(output: str) -> None:
        for name in names:
            found = re.findall(rf"(?<![\w.]){re.escape(name)}=(\S+)", output)
            assert found, f"{name}= not printed"
            float(found[-1])

    return check


def json_line(bench: str, *keys: str) -> Callable[[str], None]:
    """A last line of JSON naming the bench, holding `keys` (ratios, as numbers)."""

    def check(output: str) -> None:
        figures = json.loads(output.strip().splitlines()[-1])
        assert figures["bench"] == bench, figures
        for key in keys:
            assert isinstance(figures[key], int | float), (key, figures[key])

    return check


def export_table(output: str) -> None:
    """Every exported format measured (size, load, latency) and shown beside the SavedModel."""
    figures = json.loads(output.strip().splitlines()[-1])
    assert figures["bench"] == "export", figures
    results = figures["results"]
    assert "savedmodel" in results and len(results) > 1, results
    for name, row in results.items():
        assert {"size_bytes", "load_ms", "p50_ms", "p90_ms"} <= row.keys(), (name, row)
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d+\s+\d+\.\d+", output, re.M), name


def upload_memory(output: str) -> None:
    assert re.search(r"API RSS idle \d+ MB, peak \d+ MB, extra -?\d+ MB", output)


PRINTS: dict[str, Callable[[str], None]] = {
    "active.py": json_line(
        "active", "queue_labels_median", "margin_labels_median", "warm_retrain_s"
    ),
    "advice.py": ratios("advice_s_per_1000", "advice_ratio", "cached_ratio"),
    "batch.py": ratios("throughput_ratio", "cold_throughput_ratio"),
    "compare.py": json_line("compare", "coverage_min", "promoted_not_better_max"),
    "export.py": export_table,
    "ingest.py": json_line("ingest", "time_per_image_ratio", "worker_peak_ratio"),
    "hostile_images.py": ratios(
        *(
            f"{kind}_{what}_ratio"
            for kind in ("webp", "png", "gif", "jpeg", "zip")
            for what in ("time", "memory")
        )
    ),
    "ingest_photos.py": ratios("ingest_photo_ratio", "decode_224_ratio", "phash_hamming_max"),
    "lists.py": ratios("jobs_first_page_ratio", "models_first_page_ratio"),
    "multilabel.py": json_line(
        "multilabel", "micro_f1", "threshold_gain", "ece_max", "latency_ratio"
    ),
    "predict.py": ratios(
        "latency_ratio",
        "throughput_ratio",
        "jobs_p99_ms",
        "tutorial_latency_ratio",
        "tutorial_throughput_ratio",
        "photo_latency_ratio",
    ),
    "report.py": ratios("facts_ratio", "old_rows_s_per_1000", "near_pairs_10000_s"),
    "rollout.py": ratios("rollout_p99_ratio", "switch_s", "errors", "other_models"),
    "search.py": json_line(
        "search",
        "search_minus_grid_points",
        "compute_ratio",
        "search_minus_default_points",
        "head_trials_in_10_minutes",
        "lr_within_3x_seeds",
    ),
    "start.py": ratios(
        "cold_start_ratio", "lazy_ready_s", "warm_ready_s", "uss_per_model_mb", "models_share"
    ),
    "train.py": ratios("cache_ratio", "overhead_ratio"),
    "tuners.py": json_line("tuners", "tpe_minus_kerastuner_points"),
    "upload_memory.py": upload_memory,
    "versions.py": ratios("edit_s", "bytes_per_image", "manifest_read_ratio"),
    "unknowns.py": json_line(
        "unknowns",
        "near_auroc",
        "near_gain_over_msp",
        "far_auroc_min",
        "known_flagged",
        "added_p95_ms",
    ),
}
BENCHES = sorted(path.name for path in BENCH.glob("*.py") if path.name not in HELPERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_bench(name: str) -> None:
    assert name in PRINTS, f"bench/{name} has no entry in PRINTS: what must its quick run print?"
    env = {key: value for key, value in os.environ.items() if key not in UNSET}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(BENCH / name), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    seconds = time.monotonic() - started
    tail = f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"bench/{name} --quick exited {run.returncode}\n{tail}"
    assert "quick mode" in run.stdout, tail
    try:
        PRINTS[name](run.stdout)
    except (AssertionError, ValueError, KeyError, IndexError) as error:
        raise AssertionError(f"bench/{name} --quick: {error!r}\n{tail}") from None
    print(f"bench/{name} --quick: {seconds:.1f} s")


def load_quick():  # bench/ is not a package: loaded from its file
    spec = importlib.util.spec_from_file_location("bench_quick", BENCH / "quick.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_defaults_and_overrides() -> None:
    quick = load_quick()

    def parser() -> argparse.ArgumentParser:
        made = argparse.ArgumentParser()
        made.add_argument("--images", type=int, default=1000)
        made.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
        return made

    full = quick.parse_args(parser(), {"images": 10, "sizes": [10]}, [])
    assert (full.quick, full.images, full.sizes) == (False, 1000, [1000, 5000])
    small = quick.parse_args(parser(), {"images": 10, "sizes": [10]}, ["--quick"])
    assert (small.quick, small.images, small.sizes) == (True, 10, [10])
    chosen = quick.parse_args(parser(), {"images": 10}, ["--quick", "--images", "50"])
    assert chosen.images == 50
    with pytest.raises(ValueError, match="imagez"):
        quick.parse_args(parser(), {"imagez": 10}, [])
