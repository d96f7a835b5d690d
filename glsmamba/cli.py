"""The ``glsmamba`` command line.

Each subcommand lives in ``glsmamba/commands/<name>.py`` and provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their
command runs, so ``glsmamba info`` works even where an optional dependency is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> module under glsmamba.commands (kept in the order shown by --help)
COMMANDS: dict[str, str] = {
    "info": "info",
    "verify": "verify",
    "summary": "summary",
    "synth": "synth",
    "convert": "convert",
    "eval": "evaluate",
    "train": "train",
    "demo": "demo",
    "bench": "bench",
}


def _load(module: str):
    try:
        return importlib.import_module(f"glsmamba.commands.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"glsmamba.commands.{module}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glsmamba",
        description="GLSMamba video pose estimation: Triton kernels, PyTorch references, pose pipeline.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = _load(module)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
