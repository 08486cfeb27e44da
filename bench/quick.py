"""`--quick`, the one flag every bench takes: the same code paths at tiny sizes, in seconds.

A quick run checks that a bench still runs and still prints its ratios (tests/test_bench.py
runs every bench so); its figures are not measurements. Each bench passes the defaults its
quick run uses, and any flag given on the command line still wins over them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

HELP = "tiny sizes, a few seconds: checks that the bench runs; its figures mean nothing"
# The backbone a bench measures unless told otherwise, and the lighter one of its quick run
# (MobileNet trains in about 60 % of MobileNetV2's time; the code paths are the same).
BACKBONE = "MobileNetV2"
QUICK_BACKBONE = "MobileNet"


def add_backbone(parser: argparse.ArgumentParser) -> None:
    """`--backbone NAME`: a `keras.applications` backbone (MobileNet under `--quick`)."""
    parser.add_argument("--backbone", default=BACKBONE, help=f"default {BACKBONE}")


def parse_args(
    parser: argparse.ArgumentParser, quick: dict[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The parsed arguments, with `quick`'s defaults (by destination) under `--quick`."""
    parser.add_argument("--quick", action="store_true", help=HELP)
    args = parser.parse_args(argv)
    unknown = set(quick) - set(vars(args))
    if unknown:
        raise ValueError(f"quick defaults for options the bench lacks: {sorted(unknown)}")
    if args.quick:
        if "backbone" in vars(args):
            quick = {"backbone": QUICK_BACKBONE, **quick}
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
        print("quick mode: tiny sizes, so the figures below are not measurements", flush=True)
    return args
