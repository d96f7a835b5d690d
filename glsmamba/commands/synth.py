"""``glsmamba synth OUT --videos N --frames F``: write a synthetic video-pose dataset in PoseTrack18 layout."""

from __future__ import annotations

import argparse
import json
import sys

from glsmamba.commands import positive_int

HELP = "write a synthetic video-pose dataset (stick figures, occluders) in PoseTrack18 layout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (images/{train,val}/..., annotations/{train,val}/*.json)")
    parser.add_argument("--videos", type=positive_int, default=20, help="number of videos (default 20)")
    parser.add_argument("--frames", type=positive_int, default=30, help="frames per video (default 30)")
    parser.add_argument("--val", type=int, default=None, help="videos in val (default max(1, round(videos/4)))")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--width", type=positive_int, default=256)
    parser.add_argument("--height", type=positive_int, default=192)
    parser.add_argument("--persons", type=int, nargs=2, default=(1, 2), metavar=("MIN", "MAX"),
                        help="figures per video (default 1 2)")
    parser.add_argument("--occluder-prob", type=float, default=0.5, help="probability of an occluder per video")
    parser.add_argument("--label-every", type=positive_int, default=1, help="label every k-th frame (default 1 = all)")
    parser.add_argument("--ext", choices=("jpg", "png"), default="jpg")


def run(args: argparse.Namespace) -> int:
    from glsmamba.vhpe.synth import SynthConfig, make_dataset

    try:
        cfg = SynthConfig(width=args.width, height=args.height, persons=tuple(args.persons),
                          occluder_prob=args.occluder_prob, label_every=args.label_every, ext=args.ext)
        split = make_dataset(args.out, args.videos, args.frames, seed=args.seed, val_videos=args.val, cfg=cfg)
    except ValueError as e:
        print(f"glsmamba synth: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "train": len(split["train"]), "val": len(split["val"]),
                      "frames": args.frames}))
    return 0
