"""``glsmamba convert IN OUT --to FORMAT``: convert pose annotations between formats.

Reads PoseTrack18/21 (per-video folder or file), PoseTrack17 annolist (folder or file), COCO keypoints, Sub-JHMDB
``.mat`` (file or ``joint_positions`` tree) and mmpose-style Sub-JHMDB JSON; writes PoseTrack18 or annolist
(one file per video into folder OUT), COCO or JHMDB JSON (one file OUT).
"""

from __future__ import annotations

import argparse
import sys

HELP = "convert pose annotations: annolist <-> PoseTrack18 <-> COCO (and Sub-JHMDB .mat/JSON -> any)"
OUT_FORMATS = ("posetrack18", "annolist", "coco", "jhmdb-json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from glsmamba.vhpe.formats import FORMATS

    parser.add_argument("input", help="input file or folder")
    parser.add_argument("output", help="output folder (posetrack18, annolist) or file (coco, jhmdb-json)")
    parser.add_argument("--to", required=True, choices=OUT_FORMATS, help="output format")
    parser.add_argument("--from", dest="src", choices=FORMATS, default=None, help="input format (default: detect)")
    parser.add_argument("--labeled-only", action="store_true", help="coco output: keep only labelled frames")


def run(args: argparse.Namespace) -> int:
    from glsmamba.vhpe.formats import FormatError, detect_format, read_videos, write_coco, write_videos

    try:
        src = args.src or detect_format(args.input)
        videos = read_videos(args.input, src)
        skel = videos[0].skeleton if videos else None
        if args.to == "annolist" and skel != "posetrack18":
            raise ValueError(f"annolist holds PoseTrack joints; {src} input has skeleton {skel!r}")
        if args.to == "jhmdb-json" and skel != "jhmdb":
            raise ValueError(f"jhmdb-json holds the 15 Sub-JHMDB joints; {src} input has skeleton {skel!r}")
        if args.to == "coco":
            write_coco(videos, args.output, one_based=False, labeled_only=args.labeled_only)
            written = [args.output]
        else:
            written = write_videos(videos, args.output, args.to)
    except (FormatError, ValueError, FileNotFoundError) as e:
        print(f"glsmamba convert: error: {e}", file=sys.stderr)
        return 1
    print(f"converted {len(videos)} video(s) from {src} to {args.to}: {len(written)} file(s) in {args.output}")
    return 0
