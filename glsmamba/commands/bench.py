"""``glsmamba bench``: speed and memory of every op and the network vs resolution (CSV + PNG plots).

Same options as ``python -m glsmamba.bench``; see ``bench/sweep.py``. ``glsmamba bench --static`` instead writes
the static report (no GPU needed): each kernel's traffic and sm_90 machine code against its op's roofline
(``bench/static.py``, results in ``bench/results/static/``).
"""

from __future__ import annotations

import argparse

HELP = "benchmark ops and the network vs resolution (tokens), against attention baselines; CSV + plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glsmamba.bench.sweep import add_arguments as add

    add(parser)
    g = parser.add_argument_group("static report (no GPU)")
    g.add_argument("--static", action="store_true",
                   help="write bench/results/static/ (static.csv, static.md, static.png) and the README section: "
                        "every kernel's counted traffic and sm_90 compile against its roofline (minutes; the "
                        "interpreter counts are cached per kernel-source digest in counts.json)")
    g.add_argument("--static-workers", type=int, default=2, help="processes for --static (default 2)")
    g.add_argument("--static-recount", action="store_true",
                   help="with --static: count every reduced shape under the interpreter again instead of taking the "
                        "counts cached in counts.json for the same kernel sources (a cold count: ~10 min on 2 cores)")


def run(args: argparse.Namespace) -> int:
    if args.static:
        from glsmamba.bench.static import main as static_main

        argv = ["--workers", str(args.static_workers)] + (["--recount"] if args.static_recount else [])
        if args.out:
            argv += ["--out", str(args.out), "--no-readme"]
        return static_main(argv)

    from glsmamba.bench.sweep import run as sweep

    return sweep(args)
