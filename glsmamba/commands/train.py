"""``glsmamba train --data DIR --preset NAME --out RUN_DIR``: train GLSMamba on PoseTrack-layout data.

Defaults are the paper's schedule (AdamW, lr 1e-4 / 10 at epochs 6 and 12, 20 epochs); see :mod:`vhpe.train` for
the run folder. Multi-GPU / multi-node: launch the same command with ``torchrun --nproc_per_node N -m glsmamba
train ...`` (``--batch-size`` is the global batch). ``--resume`` continues a run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

from glsmamba.commands import (
    add_backbone_arguments,
    add_set_argument,
    parse_set_overrides,
    positive_int,
    size_hw,
)

HELP = "train GLSMamba on PoseTrack-layout data (paper schedule by default; torchrun for multi-GPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root (annotations/{train,val}/*.json + images)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, loss.png)")
    parser.add_argument("--preset", default="base", choices=("tiny", "base", "base-lr", "huge"),
                        help="model (default base)")
    add_set_argument(parser)
    parser.add_argument("--backend", default="auto", choices=("auto", "reference", "triton"))
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-steps", type=int, nargs="*", default=[6, 12], metavar="EPOCH",
                        help="epochs at which the lr is multiplied by --lr-factor (default 6 12)")
    parser.add_argument("--lr-factor", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up steps (default 0)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=positive_int, default=16, help="global batch size (default 16)")
    parser.add_argument("--input-size", type=size_hw, default=None, metavar="HxW",
                        help="crop size, e.g. 128x96 (default: the preset's image_size)")
    parser.add_argument("--sigma", type=float, default=2.0, help="target Gaussian sigma in heatmap pixels")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="plain crops (no scale, "
                        "rotation or flip)")
    parser.add_argument("--scale-factor", type=float, default=0.35)
    parser.add_argument("--rot-factor", type=float, default=45.0)
    parser.add_argument("--flip-prob", type=float, default=None,
                        help="flip probability (default 0.5; 0 on glsmamba synth data, whose figures are "
                             "colour-coded left/right)")
    parser.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="freeze the encoder (default: the preset's choice; frozen for base/huge)")
    add_backbone_arguments(parser, "ViTPose weights for the encoder (.pth/.safetensors)")
    parser.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                        help="autocast (auto: bf16/fp16 on GPU, off on CPU)")
    parser.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="data loader processes (default 0 CPU, 4 GPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cuda when available)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--frame-stride", type=positive_int, default=1)
    parser.add_argument("--eval-every", type=int, default=0, help="val mAP every k epochs (default 0 = never)")
    parser.add_argument("--keep", type=int, default=2, help="per-epoch checkpoints kept (default 2; 0 = all)")
    parser.add_argument("--log-every", type=positive_int, default=10, help="progress line every k steps (non-terminal)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue from RUN_DIR/last.pth (or CKPT)")
    resume.add_argument("--resume-from", dest="resume", metavar="FILE",
                        help="continue from FILE (e.g. RUN_DIR/checkpoints/epoch_NNN.pth when last.pth is damaged)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="debug: stop after this many optimiser steps in total, as if killed")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    parser.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                        help="distributed runs: per-process batch-norm statistics (default: synchronised)")


def run(args: argparse.Namespace) -> int:
    if args.backend == "triton":
        import torch

        if not torch.cuda.is_available():  # CPU tensors: the interpreter, set before triton is imported
            os.environ.setdefault("TRITON_INTERPRET", "1")
    from glsmamba.vhpe.train import TrainConfig, train

    try:
        cfg = TrainConfig(
            data=args.data, out=args.out, preset=args.preset, model_overrides=parse_set_overrides(args),
            backend=args.backend, epochs=args.epochs, lr=args.lr, lr_steps=tuple(args.lr_steps),
            lr_factor=args.lr_factor, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            batch_size=args.batch_size, input_size=args.input_size, sigma=args.sigma, augment=args.augment,
            scale_factor=args.scale_factor, rot_factor=args.rot_factor, flip_prob=args.flip_prob,
            freeze_encoder=args.freeze_encoder, backbone=args.backbone,
            trust_backbone=args.trust_backbone, amp=args.amp, clip_grad=args.clip_grad,
            seed=args.seed, workers=args.workers, device=args.device, threads=args.threads,
            frame_stride=args.frame_stride, eval_every=args.eval_every, keep=args.keep, log_every=args.log_every,
            max_steps=args.max_steps, resume=args.resume, deterministic=args.deterministic, sync_bn=args.sync_bn,
        )
        res = train(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"glsmamba train: error: {e}", file=sys.stderr)
        return 1
    if res.final is not None:
        print(f"trained {res.epochs_done} epochs ({res.steps} steps): {res.final}")
    elif res.stopped:
        print(f"stopped after {res.steps} steps; resume with --resume (last checkpoint: {res.last})")
    return 0
