"""``glsmamba eval``: score predictions, or run a checkpoint on a dataset split and score it.

Two modes:

* ``glsmamba eval --metric {posetrack,coco,pck} --gt PATH --pred PATH``: score existing predictions.
* ``glsmamba eval --checkpoint CKPT --data DIR [--split val] [--boxes gt|FILE] [--flip] [--precision P]
  [--box-mode key|tube]``: run the model on every person clip of the split (GT boxes, or a detections file),
  streaming each video through :class:`vhpe.streaming.StreamingPredictor` (encoder features cached per frame crop)
  under ``torch.inference_mode``, write PoseTrack18 predictions and
  ``results.json`` (metrics + which checkpoint, boxes and flip setting produced them) to ``--out`` (default
  ``<checkpoint folder>/eval-<split>-<gt|det>[-flip]``) and print the PoseTrack table (plus the AP on occluded
  joints when the ground truth marks them, as ``glsmamba synth`` data does).

GT and predictions may be in any format :func:`vhpe.formats.read_videos` reads (per-video PoseTrack18 or
annolist folders/files, COCO, Sub-JHMDB); predictions may also be a COCO results list (placed onto the GT
frames by image id). ``--format json`` prints one JSON object of the metric's named numbers (percent, ``null``
where undefined); ``--format table`` prints the summary in the usual column order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from glsmamba.commands import (
    add_backbone_arguments,
    add_inference_arguments,
    error_message,
    positive_int,
    show_progress,
)

HELP = ("evaluate predictions (PoseTrack mAP, COCO OKS AP/AR, PCK) or a checkpoint on a dataset split "
        "(--checkpoint)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", choices=("posetrack", "coco", "pck"), help="prediction mode: the metric")
    parser.add_argument("--gt", help="prediction mode: ground-truth file or folder")
    parser.add_argument("--pred", help="prediction mode: prediction file or folder (or a COCO results list)")
    ck = parser.add_argument_group("checkpoint mode")
    ck.add_argument("--checkpoint", help="model file (final.pth / last.pth of glsmamba train)")
    ck.add_argument("--data", help="dataset root (annotations/<split>/*.json + images)")
    ck.add_argument("--split", default="val", help="annotation folder (default val)")
    ck.add_argument("--boxes", default="gt", help="'gt' (default) or a person detections file")
    ck.add_argument("--det-thr", type=float, default=0.0, help="minimum detection score (with --boxes FILE)")
    ck.add_argument("--flip", action="store_true", help="flip test (average with the mirrored clip)")
    add_inference_arguments(ck, "each track's box")
    ck.add_argument("--decode", choices=("msra", "dark"), default="msra", help="heatmap decoding (default msra)")
    ck.add_argument("--out", default=None, help="output folder for predictions/ and results.json")
    ck.add_argument("--batch-size", type=positive_int, default=32)
    ck.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    ck.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cuda when available)")
    add_backbone_arguments(ck, "ViTPose weights (checkpoints saved without the encoder)")
    ck.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--format", choices=("json", "table"), default="table", help="output (default table)")
    parser.add_argument("--thr", type=float, default=None,
                        help="threshold: PCKh for posetrack (default 0.5), PCK (default 0.2)")
    parser.add_argument("--norm", choices=("bbox", "torso"), default="bbox", help="pck normaliser (default bbox)")
    parser.add_argument("--strict", action="store_true",
                        help="prediction mode: reject NaN/inf keypoints (default: they count as missing, with a "
                             "warning)")


def _load_pred(path: str, gt):
    from glsmamba.vhpe.formats import coco_results_from_list, load_json, read_videos

    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        data = load_json(p)
        if isinstance(data, list):
            return coco_results_from_list(data, gt, p), data
    return read_videos(p), None


def compute(args: argparse.Namespace):
    """Run the metric; returns the result object (with ``as_dict()`` and ``table()``)."""
    from glsmamba.vhpe.formats import coco_to_dict, read_videos
    from glsmamba.vhpe.metrics import evaluate_coco, evaluate_pck, evaluate_posetrack
    from glsmamba.vhpe.metrics.coco import results_from_videos

    gt = read_videos(args.gt)
    pred, raw_results = _load_pred(args.pred, gt)
    if args.metric == "posetrack":
        return evaluate_posetrack(gt, pred, thresh=0.5 if args.thr is None else args.thr, strict=args.strict)
    if args.metric == "pck":
        return evaluate_pck(gt, pred, thr=0.2 if args.thr is None else args.thr, norm=args.norm, strict=args.strict)
    # COCO AP over the labelled frames (unlabelled frames have no GT, so detections there would all be false
    # positives); image ids of prediction videos come from the paired GT frames
    gt_dict = coco_to_dict(gt, one_based=False, labeled_only=True)
    labelled = {img["id"] for img in gt_dict["images"]}
    if raw_results is None:
        raw_results = results_from_videos(gt, pred, strict=args.strict)
    results = [r for r in raw_results if r["image_id"] in labelled]
    return evaluate_coco(gt_dict, results, path_gt=args.gt, path_pred=args.pred, strict=args.strict)


def _occluded_table(occ: dict) -> str:
    lines = ["joints    |      AP |   PCKh |  count"]
    for name in ("occluded", "visible", "all"):
        d = occ[name]
        ap = "    n/a" if d["AP"] is None else f"{d['AP']:7.1f}"
        pck = "    n/a" if d["PCKh"] is None else f"{d['PCKh']:6.1f}"
        lines.append(f"{name:<9} | {ap} | {pck} | {d['joints']:6d}")
    return "\n".join(lines)


def run_checkpoint(args: argparse.Namespace) -> int:
    if args.backend == "triton":
        import torch

        if not torch.cuda.is_available():  # CPU tensors: the interpreter, set before triton is imported
            os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from glsmamba.vhpe.infer import evaluate_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None:
        print("glsmamba eval: error: --checkpoint needs --data DIR", file=sys.stderr)
        return 2
    from glsmamba.vhpe.synth import mirror_inconsistent

    if args.flip and mirror_inconsistent(args.data):
        print(f"glsmamba eval: warning: {args.data} is glsmamba synth data with left/right colour coding; the flip "
              f"test averages in mirrored figures that contradict their labels", file=sys.stderr)
    try:
        res = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, boxes=args.boxes, flip=args.flip,
                                  out=args.out, batch_size=args.batch_size, device=args.device,
                                  backend=args.backend, decode=args.decode, backbone=args.backbone,
                                  det_score_thr=args.det_thr, progress=show_progress(args),
                                  trust_backbone=args.trust_backbone, precision=args.precision,
                                  box_mode=args.box_mode)
    except (ValueError, FileNotFoundError) as e:
        print(f"glsmamba eval: error: {error_message(e)}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({k: v for k, v in res.items() if k != "table"}))
        return 0
    boxes = "GT boxes" if res["boxes"] == "gt" else f"boxes {res['boxes']}"
    print(f"{res['checkpoint']} on {res['data']} ({res['split']}, {res['clips']} clips), {boxes}, "
          f"flip {'on' if res['flip'] else 'off'}, decode {res['decode']}, box mode {res['box_mode']}, "
          f"precision {res['precision']}")
    print(res["table"])
    if res["occluded"] is not None:
        print("PoseTrack-style AP / PCKh@0.5 by joint visibility (GT boxes):")
        print(_occluded_table(res["occluded"]))
    print(f"predictions: {res['predictions']}  results: {Path(res['predictions']).parent / 'results.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        if args.metric or args.gt or args.pred:
            print("glsmamba eval: error: use either --checkpoint (with --data) or --metric/--gt/--pred",
                  file=sys.stderr)
            return 2
        return run_checkpoint(args)
    missing = [f"--{n}" for n in ("metric", "gt", "pred") if getattr(args, n) is None]
    if missing:
        print(f"glsmamba eval: error: the following arguments are required: {', '.join(missing)} (or use "
              f"--checkpoint CKPT --data DIR)", file=sys.stderr)
        return 2
    from glsmamba.vhpe.metrics import EvaluationWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EvaluationWarning)
            res = compute(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"glsmamba eval: error: {e}", file=sys.stderr)
        return 1
    for w in caught:
        if issubclass(w.category, EvaluationWarning):
            print(f"glsmamba eval: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if args.format == "json":
        print(json.dumps(res.as_dict()))
    else:
        print(res.table())
    return 0
