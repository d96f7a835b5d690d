"""``glsmamba export --checkpoint CKPT --out model.pt2``: the network as a torch.export program.

The program (``torch.export.save``) runs with ``torch.export.load(path).module()(frames)`` without this package's
model classes: frames ``(B, T, 3, H, W)`` ImageNet-normalised -> key-frame heatmaps ``(B, J, H/4, W/4)``; with
``--features`` the trunk and head on encoder features ``(B, T, C_enc, H/s, W/s)`` instead. The reference backend
exports plain aten ops; ``--backend triton`` exports the kernels as the custom ops ``glsmamba::*`` (load them with
``import glsmamba.kernels`` first). See :mod:`model.export`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from glsmamba.commands import add_backbone_arguments, error_message, positive_int, size_hw

HELP = "export a checkpoint's network with torch.export (.pt2 loadable by torch.export.load)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model file (final.pth of glsmamba train)")
    parser.add_argument("--out", required=True, help="program to write (.pt2)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size traced (default 1)")
    parser.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension (any batch >= 1)")
    parser.add_argument("--input-size", type=size_hw, default=None, metavar="HxW",
                        help="frame size H x W (default: the checkpoint's image_size)")
    parser.add_argument("--features", action="store_true",
                        help="export the trunk + head on encoder features instead of the whole network")
    parser.add_argument("--backend", default="reference", choices=("auto", "reference", "triton"),
                        help="ops in the program (default reference: plain aten ops)")
    parser.add_argument("--device", default="cpu", help="where the program is traced (default cpu)")
    add_backbone_arguments(parser, "ViTPose weights (checkpoints saved without the encoder)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.backend == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from glsmamba.model.export import export_network, program_meta, save_program
    from glsmamba.vhpe.infer import load_model

    t0 = time.perf_counter()
    try:
        net = load_model(args.checkpoint, args.device, args.backend, args.backbone, args.trust_backbone)
        ep = export_network(net, args.batch, args.input_size, features=args.features,
                            dynamic_batch=args.dynamic_batch)
        meta = {**program_meta(net, ep, args.features, args.dynamic_batch), "checkpoint": str(args.checkpoint)}
        save_program(ep, args.out, meta)
    except (ValueError, FileNotFoundError) as e:
        print(f"glsmamba export: error: {error_message(e)}", file=sys.stderr)
        return 1
    shape = "(B, " + ", ".join(map(str, meta["input_shape"][1:])) + ")" if args.dynamic_batch else str(
        tuple(meta["input_shape"]))
    print(f"exported {meta['input']} {shape}"
          f" on backend {meta['backend']} -> {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
