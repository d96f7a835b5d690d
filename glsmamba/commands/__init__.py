"""The ``glsmamba`` subcommands: one module each (``HELP``, ``add_arguments``, ``run``), plus shared options."""

from __future__ import annotations

import argparse


def add_backbone_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--backbone FILE`` and ``--trust-backbone`` (train, eval and demo read ViTPose weights the same way)."""
    parser.add_argument("--backbone", default=None, help=help_text)
    parser.add_argument("--trust-backbone", action="store_true",
                        help="allow full unpickling of the --backbone file (mmpose checkpoints that pickle "
                             "non-tensor metadata); only for files you trust")
