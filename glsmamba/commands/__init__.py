"""The ``glsmamba`` subcommands: one module each (``HELP``, ``add_arguments``, ``run``), plus shared options."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts and sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def size_hw(text: str) -> tuple[int, int]:
    """argparse type: ``HxW`` (or ``H,W``) with both values positive."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 256x192), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"H and W must be positive (e.g. 256x192), got {text!r}")
    return h, w


def add_backbone_arguments(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--backbone FILE`` and ``--trust-backbone`` (train, eval and demo read ViTPose weights the same way)."""
    parser.add_argument("--backbone", default=None, help=help_text)
    parser.add_argument("--trust-backbone", action="store_true",
                        help="allow full unpickling of the --backbone file (mmpose checkpoints that pickle "
                             "non-tensor metadata); only for files you trust")


def error_message(e: BaseException) -> str:
    """An error as the command line says it: the library's advice for a checkpoint saved without its frozen
    encoder (``backbone=<ViTPose file>``, an API argument) becomes ``--backbone FILE``; other messages as they are."""
    from glsmamba.model.checkpoint import MissingEncoderError

    if isinstance(e, MissingEncoderError):
        return (f"{e.path} was saved without the frozen encoder weights: pass --backbone FILE (the ViTPose weights "
                f"it was trained with)")
    return str(e)


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set FIELD=VALUE ...`` (model config overrides, parsed by ``GLSMambaConfig.parse_overrides`` into
    ``args.overrides``): several items after one ``--set``, or ``--set`` repeated, or both."""
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override model config fields, e.g. --set num_frames=1 merge=sum window=4,3 "
                             "(ints, floats, true/false, comma-separated tuples, none; repeatable)")


def parse_set_overrides(args: argparse.Namespace) -> dict:
    """The typed model config overrides of ``--set`` (ValueError naming a bad item)."""
    from glsmamba.model import GLSMambaConfig

    return GLSMambaConfig.parse_overrides(args.overrides)


def add_inference_arguments(parser, box_help: str) -> None:
    """``--precision`` and ``--box-mode`` (eval --checkpoint and demo); ``box_help`` says what ``tube`` holds."""
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast precision (default fp32; bf16 on CPU or CUDA, fp16 on CUDA only)")
    parser.add_argument("--box-mode", choices=("key", "tube"), default="key",
                        help="crop box of a clip's frames: key = the key frame's box (default, as trained), tube = "
                             f"{box_help} held over segments of T frames (frames encoded about once)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line (shown on a terminal: frames or clips done, rate, ETA)")


def show_progress(args) -> bool:
    """The progress line of eval and demo: on a terminal (stderr), unless ``--quiet``."""
    import sys

    return sys.stderr.isatty() and not args.quiet
