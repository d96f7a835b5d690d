"""``glsmamba verify``: every Triton op (forward and gradients) and the whole network against the PyTorch reference
on this machine; the check itself is :func:`glsmamba.verify.driver.verify`. Exit code 0 when everything passes."""

from __future__ import annotations

import argparse

HELP = "check every Triton op (fwd + grads) and the whole network against the PyTorch reference on this machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glsmamba.verify.cases import OP_NAMES

    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="level", const="quick",
                      help="smallest shapes, float32 only (the default without a GPU)")
    size.add_argument("--full", action="store_const", dest="level", const="full",
                      help="larger shapes and float32/float16/bfloat16 (slow under the CPU interpreter)")
    parser.set_defaults(level=None)
    parser.add_argument("--ops", nargs="+", choices=OP_NAMES, metavar="OP",
                        help=f"only these ops ({', '.join(OP_NAMES)})")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-network check")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    from glsmamba.verify.driver import verify

    return verify(args.level, args.ops, with_model=not args.no_model, seed=args.seed, as_json=args.json)
