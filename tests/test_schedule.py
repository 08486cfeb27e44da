"""The order xdist's workers get the tests in: blocks of xdist's own sizes and about equal
expected seconds, longest first, tests sharing a module's fixture kept together."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from tests.schedule import block_sizes, deal, read_durations


@dataclass
class Item:
    nodeid: str
    slow: bool = False
    shared: bool = False  # uses a module-scoped fixture

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "slow" and self.slow else None

    @property
    def _fixtureinfo(self) -> Any:
        scope = "module" if self.shared else "function"
        return SimpleNamespace(name2fixturedefs={"f": [SimpleNamespace(scope=scope)]})


def test_blocks_are_cut_where_xdist_cuts_them_and_weigh_about_the_same() -> None:
    assert block_sizes(687, 2) == [343, 344] and block_sizes(10, 3) == [3, 3, 4]
    items = [Item(f"tests/test_a.py::fast_{n}") for n in range(40)]
    items += [Item(f"tests/test_b.py::slow_{n}", slow=True) for n in range(6)]
    items += [Item(f"tests/test_c.py::shared_{n}", slow=True, shared=True) for n in (1, 2)]
    known = {f"tests/test_b.py::slow_{n}": 10.0 * (n + 1) for n in range(6)}
    known |= {"tests/test_c.py::shared_1": 25.0, "tests/test_c.py::shared_2": 5.0}
    known |= {f"tests/test_a.py::fast_{n}": 0.1 for n in range(40)}
    dealt = deal(items, 2, known)
    assert sorted(item.nodeid for item in dealt) == sorted(item.nodeid for item in items)
    first, second = dealt[:24], dealt[24:]
    totals = [sum(known[item.nodeid] for item in block) for block in (first, second)]
    assert abs(totals[0] - totals[1]) <= 10.0, totals  # 242 s in all, split ±5 s
    for block in (first, second):  # longest first: each block ends with its short tests
        assert known[block[0].nodeid] >= 25.0 and known[block[-1].nodeid] == 0.1
    ids = [item.nodeid for item in dealt]
    shared = ids.index("tests/test_c.py::shared_1")
    assert ids[shared + 1] == "tests/test_c.py::shared_2"  # one unit, in file order
    assert deal(items[:3], 2, {}) and len(deal(items[:3], 2, {})) == 3  # unknown: medians


def test_durations_are_read_from_a_runs_report() -> None:
    log = "12.50s call     tests/test_a.py::t[x]\n0.50s setup    tests/test_a.py::t[x]\nnoise\n"
    assert read_durations(log) == {"tests/test_a.py::t[x]": 13.0}
