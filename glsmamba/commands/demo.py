"""``glsmamba demo VIDEO --checkpoint CKPT --out OUT.mp4 --json OUT.json [--boxes FILE]``: poses on a video.

Reads the video with PyAV (``pip install 'glsmamba[video]'``), runs ``T``-frame windows around every frame, draws
boxes and skeletons into ``OUT.mp4`` at the source frame rate (same frame count) and writes one JSON entry per
frame. Without ``--boxes`` the whole frame is one person box. See :mod:`vhpe.demo` for the JSON layout.
"""

from __future__ import annotations

import argparse
import os
import sys

from glsmamba.commands import (
    add_backbone_arguments,
    add_inference_arguments,
    error_message,
    positive_int,
    show_progress,
)

HELP = "run a checkpoint on a video: overlay mp4 (source fps) + per-frame JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="input video file")
    parser.add_argument("--checkpoint", required=True, help="model file (final.pth of glsmamba train)")
    parser.add_argument("--out", default=None, help="overlay video to write (.mp4)")
    parser.add_argument("--json", default=None, help="per-frame predictions to write (.json)")
    parser.add_argument("--boxes", default=None,
                        help="person boxes per frame: COCO detections with image_id = frame index, "
                             "{frame_index: [[x, y, w, h, score]]}, or a demo JSON (default: the whole frame)")
    parser.add_argument("--flip", action="store_true", help="flip test")
    add_inference_arguments(parser, "each person's box")
    parser.add_argument("--kpt-thr", type=float, default=0.3, help="joints below this score are not drawn")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cuda when available)")
    add_backbone_arguments(parser, "ViTPose weights (checkpoints saved without the encoder)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    if args.out is None and args.json is None:
        print("glsmamba demo: error: nothing to write: give --out OUT.mp4 and/or --json OUT.json", file=sys.stderr)
        return 2
    import torch

    if args.backend == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from glsmamba.vhpe.demo import run_demo

    try:
        doc = run_demo(args.video, args.checkpoint, args.out, args.json, boxes=args.boxes, device=args.device,
                       backend=args.backend, batch_size=args.batch_size, flip=args.flip, kpt_thr=args.kpt_thr,
                       backbone=args.backbone, progress=show_progress(args), trust_backbone=args.trust_backbone,
                       precision=args.precision, box_mode=args.box_mode)
    except ImportError as e:
        print(f"glsmamba demo: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"glsmamba demo: error: {error_message(e)}", file=sys.stderr)
        return 1
    people = sum(len(f["instances"]) for f in doc["frames"])
    print(f"{doc['num_frames']} frames at {doc['fps']:g} fps, {people} person boxes"
          + (f" -> {args.out}" if args.out else "") + (f", {args.json}" if args.json else ""))
    return 0
