"""The order in which pytest-xdist's workers get the suite's tests: longest first, in blocks of
equal expected seconds.

xdist's work-stealing scheduler hands each of the n workers a contiguous block of the
collected tests (the first `len // n`, then the next ...), and a worker that runs out steals
the end of another's queue. In file order the blocks differ by minutes and a long test can be
the last one left: in one run the two workers finished 50 s apart, one of them idle. Here
each block gets about the same expected seconds and runs its longest tests first, so what is
left to steal at the end is short.

Expected seconds come from tests/durations.json, written from a full run's `--durations=0`
by `python -m tests.schedule LOG`; a test it does not know counts as the median of its lane
(slow or not). Tests sharing a module- or class-scoped fixture stay together, in file order,
so each worker builds that fixture once.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

DURATIONS = Path(__file__).with_name("durations.json")
SHARED_SCOPES = frozenset({"module", "class", "package"})


def block_sizes(count: int, workers: int) -> list[int]:
    """How many tests xdist's work-stealing scheduler first sends each worker."""
    sizes = []
    for remaining in range(workers, 0, -1):
        sizes.append(count // remaining)
        count -= sizes[-1]
    return sizes


def _shared_fixture(item: Any) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else ()
    return any(defs and defs[-1].scope in SHARED_SCOPES for defs in definitions)


def units(items: Sequence[Any]) -> list[list[Any]]:
    """The tests that must run together: one unit per module for the tests of a module that
    share a fixture wider than a test, each other test alone."""
    grouped: dict[str, list[Any]] = {}
    alone: list[list[Any]] = []
    for item in items:
        if _shared_fixture(item):
            grouped.setdefault(item.nodeid.split("::")[0], []).append(item)
        else:
            alone.append([item])
    return [*grouped.values(), *alone]


def expected_seconds(items: Sequence[Any], known: dict[str, float]) -> dict[str, float]:
    """Each test's expected seconds: its recorded ones, or the median of its lane's."""
    lanes: dict[bool, list[float]] = {True: [], False: []}
    for item in items:
        if item.nodeid in known:
            lanes[item.get_closest_marker("slow") is not None].append(known[item.nodeid])
    median = {lane: statistics.median(found) if found else 1.0 for lane, found in lanes.items()}
    return {
        item.nodeid: known.get(item.nodeid, median[item.get_closest_marker("slow") is not None])
        for item in items
    }


def deal(items: Sequence[Any], workers: int, known: dict[str, float]) -> list[Any]:
    """The items reordered into `workers` blocks of xdist's sizes, each of about equal
    expected seconds, longest units first."""
    seconds = expected_seconds(items, known)

    def length(unit: list[Any]) -> float:
        return sum(seconds[item.nodeid] for item in unit)

    blocks: list[list[list[Any]]] = [[] for _ in range(workers)]
    totals = [0.0] * workers
    for unit in sorted(units(items), key=length, reverse=True):  # longest processing time first
        lightest = totals.index(min(totals))
        blocks[lightest].append(unit)
        totals[lightest] += length(unit)
    return _to_sizes(blocks, block_sizes(len(items), workers), seconds)


def _to_sizes(
    blocks: list[list[list[Any]]], sizes: list[int], seconds: dict[str, float]
) -> list[Any]:
    """The blocks flattened at the sizes xdist cuts them at: the shortest single tests move
    from a block with too many to one with too few."""
    counts = [sum(len(unit) for unit in block) for block in blocks]
    for giver in range(len(blocks)):
        for taker in range(len(blocks)):
            while counts[giver] > sizes[giver] and counts[taker] < sizes[taker]:
                singles = [unit for unit in blocks[giver] if len(unit) == 1]
                if not singles:
                    break
                moved = min(singles, key=lambda unit: seconds[unit[0].nodeid])
                blocks[giver].remove(moved)
                blocks[taker].append(moved)
                counts[giver] -= 1
                counts[taker] += 1
    return [item for block in blocks for unit in block for item in unit]


@pytest.hookimpl(trylast=True)  # after every deselection: xdist cuts what is left
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and config.getoption("dist", None) == "worksteal":
        items[:] = deal(items, workers, load_durations())


def read_durations(log: str) -> dict[str, float]:
    """Seconds per test (setup, call and teardown together) from `--durations=0` lines."""
    found: dict[str, float] = {}
    for seconds, nodeid in re.findall(r"^([\d.]+)s (?:setup|call|teardown)\s+(\S+)$", log, re.M):
        found[nodeid] = round(found.get(nodeid, 0.0) + float(seconds), 2)
    return dict(sorted(found.items()))


def load_durations() -> dict[str, float]:
    return json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}


if __name__ == "__main__":  # python -m tests.schedule LOG: record a full run's durations
    DURATIONS.write_text(json.dumps(read_durations(Path(sys.argv[1]).read_text()), indent=0))
