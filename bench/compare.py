"""The comparison's evidence: does its interval cover the true difference, and how often
would it promote a model that is not better?

    python bench/compare.py [--trials 200] [--quick]

Simulated pairs of models with known accuracies on an endless stream of images: each test
set of `n` images is drawn from a joint distribution of the two models' correctness, a's
accuracy `p_a`, b's `p_a + d`, and a share `q` of images exactly one of them gets right
(`q` small: two versions of one model; larger: different models). Each test set goes through
`service.comparisons.stats` exactly as a comparison job's answers do (the paired bootstrap
with its 10,000 resamplings, and McNemar's exact test). Printed per scenario:
- coverage: the share of test sets whose 95 % interval holds the true `d` (goal ≥ 0.90);
- promoted: the share with the whole interval above zero, `b_is_better` (for `d ≤ 0`, a
  model that is not better promoted: goal ≤ 0.05);
- McNemar's rejections at 0.05, for comparison.
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.quick import parse_args
from service.comparisons import stats


def test_set(rng: np.random.Generator, n: int, p_a: float, d: float, q: float) -> tuple:
    """Correctness of a and b on `n` images: P(only b right) − P(only a right) = d, and the
    two add up to q."""
    only_b, only_a = (q + d) / 2, (q - d) / 2
    both = p_a - only_a
    cells = rng.choice(4, size=n, p=[both, only_a, only_b, 1 - both - only_a - only_b])
    return np.isin(cells, (0, 1)), np.isin(cells, (0, 2))


def scenario(rng: np.random.Generator, trials: int, n: int, p_a: float, d: float, q: float) -> dict:
    covered = promoted = rejected = 0
    for trial in range(trials):
        a, b = test_set(rng, n, p_a, d, q)
        interval = stats.paired_bootstrap(a, b, seed=trial)
        covered += interval.low <= d <= interval.high
        promoted += interval.b_is_better
        rejected += stats.mcnemar_exact(a, b) < 0.05
    return {
        "n": n,
        "p_a": p_a,
        "d": d,
        "q": q,
        "coverage": covered / trials,
        "promoted": promoted / trials,
        "mcnemar_rejects": rejected / trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="test sets per scenario")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1000])
    parser.add_argument("--seed", type=int, default=0)
    args = parse_args(parser, {"trials": 10, "sizes": [100]})
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    rows = []
    grid = itertools.product(args.sizes, (0.7, 0.85), (-0.03, 0.0, 0.03), (0.06, 0.2))
    print(f"{'n':>5} {'p_a':>5} {'d':>6} {'q':>5} {'coverage':>9} {'promoted':>9} {'McNemar':>8}")
    for n, p_a, d, q in grid:
        row = scenario(rng, args.trials, n, p_a, d, q)
        rows.append(row)
        print(
            f"{n:5d} {p_a:5.2f} {d:+6.2f} {q:5.2f} {row['coverage']:9.3f} "
            f"{row['promoted']:9.3f} {row['mcnemar_rejects']:8.3f}",
            flush=True,
        )
    not_better = [row for row in rows if row["d"] <= 0]
    summary = {
        "bench": "compare",
        "trials": args.trials,
        "scenarios": len(rows),
        "coverage_min": min(row["coverage"] for row in rows),
        "coverage_mean": float(np.mean([row["coverage"] for row in rows])),
        "promoted_not_better_max": max(row["promoted"] for row in not_better),
        "promoted_not_better_mean": float(np.mean([row["promoted"] for row in not_better])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"coverage: mean {summary['coverage_mean']:.3f}, lowest {summary['coverage_min']:.3f} "
        f"(goal ≥ 0.90); a model not better promoted: mean "
        f"{summary['promoted_not_better_mean']:.3f}, highest "
        f"{summary['promoted_not_better_max']:.3f} (goal ≤ 0.05)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
