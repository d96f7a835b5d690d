"""``glsmamba bench``: speed and memory of every op and the network vs resolution (CSV + PNG plots).

Same options as ``python -m glsmamba.bench``; see ``bench/sweep.py``.
"""

from __future__ import annotations

import argparse

HELP = "benchmark ops and the network vs resolution (tokens), against attention baselines; CSV + plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glsmamba.bench.sweep import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    from glsmamba.bench.sweep import run as sweep

    return sweep(args)
