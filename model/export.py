"""torch.export of the network: an exported program (``.pt2``) that ``torch.export.load`` runs without this
package's model classes.

:func:`export_network` traces the whole network (``frames (B, T, 3, H, W)`` -> heatmaps) or, with
``features=True``, everything after the encoder (``feats (B, T, C_enc, h, w)`` from :meth:`GLSMamba.encode`, the
trunk and head: what the streaming predictor runs per clip). The reference backend exports as plain aten ops; the
Triton backend exports its kernels as the registered custom ops ``glsmamba::*``, so loading such a program needs
``import glsmamba.kernels`` first (and a GPU, or ``TRITON_INTERPRET=1``, to run it). :func:`save_program` writes
the program with a ``glsmamba.json`` entry (config, input shape, backend, versions); :func:`load_program` reads
both back.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from .backend import current_backend, resolve, use_backend

META_FILE = "glsmamba.json"


class _Features(nn.Module):
    """``forward_features`` as a module's ``forward`` (what torch.export traces)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(feats)


def program_backend(net) -> str:
    """The concrete backend ``net`` runs here (its pinned one, else the registry's, resolved for its device)."""
    name = net.backend if net.backend != "auto" else current_backend()
    return resolve(name, next(net.parameters()).device)


def example_input(net, batch: int = 1, image_size: tuple[int, int] | None = None, features: bool = False,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """A zero input of the shape the program is traced at: frames ``(B, T, 3, H, W)`` or, with ``features``, the
    encoder features of such frames ``(B, T, C_enc, H/s, W/s)`` (``s = feature_stride``)."""
    cfg = net.config
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    h, w = tuple(image_size) if image_size is not None else tuple(cfg.image_size)
    m = cfg.input_multiple
    if h < 1 or w < 1 or h % m or w % m:
        raise ValueError(f"image_size must be positive multiples of {m} for encoder={cfg.encoder!r}, got {h}x{w}")
    device = device if device is not None else next(net.parameters()).device
    if features:
        s = cfg.feature_stride
        return torch.zeros(batch, cfg.num_frames, cfg.encoder_channels, h // s, w // s, device=device)
    return torch.zeros(batch, cfg.num_frames, 3, h, w, device=device)


def export_network(net, batch: int = 1, image_size: tuple[int, int] | None = None, features: bool = False,
                   dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``net`` (in eval mode) at the shape of :func:`example_input`.

    Args:
        net: a :class:`model.GLSMamba`; its backend is resolved now (``auto`` follows the registry) and fixed in the
            program.
        batch: the traced batch size.
        image_size: ``(H, W)`` of the input frames (default ``net.config.image_size``).
        features: export the trunk on encoder features instead of the whole network.
        dynamic_batch: a symbolic batch dimension (any batch >= 1 runs the program); traced at batch >= 2 (a batch
            of 1 would be specialised).
    """
    net.eval()
    example = example_input(net, max(batch, 2) if dynamic_batch else batch, image_size, features)
    module = _Features(net) if features else net
    name = "feats" if features else "frames"
    dynamic = {name: {0: torch.export.Dim("batch", min=1, max=1 << 16)}} if dynamic_batch else None
    with use_backend(program_backend(net)):
        return torch.export.export(module, (example,), dynamic_shapes=dynamic, strict=False)


def program_meta(net, ep: torch.export.ExportedProgram, features: bool, dynamic_batch: bool) -> dict[str, Any]:
    """What :func:`save_program` records beside the program (``input_shape[0]`` is ``None`` for a dynamic batch)."""
    import dataclasses

    (example,) = (n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature
                  .user_inputs)
    shape = [None if dynamic_batch and i == 0 else int(v) for i, v in enumerate(example.shape)]
    return {"input": "feats" if features else "frames", "input_shape": shape,
            "dynamic_batch": bool(dynamic_batch), "backend": program_backend(net),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(net.config).items()},
            "torch": torch.__version__}


def save_program(ep: torch.export.ExportedProgram, path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``ep`` to ``path`` (``.pt2``) with ``meta`` as the ``glsmamba.json`` entry."""
    torch.export.save(ep, path, extra_files={META_FILE: json.dumps(meta)})


def load_program(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """Read a program written by :func:`save_program`: ``(program, meta)`` (``meta`` empty when absent)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported program not found: {path}")
    extra = {META_FILE: ""}
    ep = torch.export.load(path, extra_files=extra)
    return ep, (json.loads(extra[META_FILE]) if extra[META_FILE] else {})
