"""``glsmamba eval --metric {posetrack,coco,pck} --gt PATH --pred PATH``: score predictions.

GT and predictions may be in any format :func:`vhpe.formats.read_videos` reads (per-video PoseTrack18 or
annolist folders/files, COCO, Sub-JHMDB); predictions may also be a COCO results list (placed onto the GT
frames by image id). ``--format json`` prints one JSON object of the metric's named numbers (percent, ``null``
where undefined); ``--format table`` prints the summary in the usual column order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "evaluate predictions: PoseTrack mAP (poseval), COCO OKS AP/AR, or PCK (Sub-JHMDB)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", required=True, choices=("posetrack", "coco", "pck"))
    parser.add_argument("--gt", required=True, help="ground-truth file or folder")
    parser.add_argument("--pred", required=True, help="prediction file or folder (or a COCO results list)")
    parser.add_argument("--format", choices=("json", "table"), default="table", help="output (default table)")
    parser.add_argument("--thr", type=float, default=None,
                        help="threshold: PCKh for posetrack (default 0.5), PCK (default 0.2)")
    parser.add_argument("--norm", choices=("bbox", "torso"), default="bbox", help="pck normaliser (default bbox)")


def _load_pred(path: str, gt):
    from vhpe.formats import coco_results_from_list, load_json, read_videos

    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        data = load_json(p)
        if isinstance(data, list):
            return coco_results_from_list(data, gt, p), data
    return read_videos(p), None


def compute(args: argparse.Namespace):
    """Run the metric; returns the result object (with ``as_dict()`` and ``table()``)."""
    from vhpe.formats import coco_to_dict, read_videos
    from vhpe.metrics import evaluate_coco, evaluate_pck, evaluate_posetrack
    from vhpe.metrics.coco import results_from_videos

    gt = read_videos(args.gt)
    pred, raw_results = _load_pred(args.pred, gt)
    if args.metric == "posetrack":
        return evaluate_posetrack(gt, pred, thresh=0.5 if args.thr is None else args.thr)
    if args.metric == "pck":
        return evaluate_pck(gt, pred, thr=0.2 if args.thr is None else args.thr, norm=args.norm)
    # COCO AP over the labelled frames (unlabelled frames have no GT, so detections there would all be false
    # positives); image ids of prediction videos come from the paired GT frames
    gt_dict = coco_to_dict(gt, one_based=False, labeled_only=True)
    labelled = {img["id"] for img in gt_dict["images"]}
    if raw_results is None:
        raw_results = results_from_videos(gt, pred)
    results = [r for r in raw_results if r["image_id"] in labelled]
    return evaluate_coco(gt_dict, results, path_gt=args.gt, path_pred=args.pred)


def run(args: argparse.Namespace) -> int:
    try:
        res = compute(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"glsmamba eval: error: {e}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(res.as_dict()))
    else:
        print(res.table())
    return 0
