"""The whole-network backend comparison: one GLSMamba run on the reference and on the Triton backend, output and
every parameter gradient compared with the tolerance table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from glsmamba.verify.report import Row, failure_rows, summary_row, worst
from glsmamba.verify.tolerances import compare


def network_config(level: str, on_gpu: bool):
    """The GLSMamba config and input size ``(batch, height, width)`` of the whole-network check at ``level``."""
    from glsmamba.model.config import get_config

    if on_gpu and level == "full":  # the paper's block counts and 8 x 6 windows, narrow trunk, 32 x 24 tokens
        return get_config("tiny", dim=64, d_state=16, num_gsm=4, num_lrm=2, window=(8, 6)), (1, 128, 96)
    if on_gpu and level == "default":
        return get_config("tiny"), (2, 64, 48)
    # CPU interpreter: tiny's structure narrowed (1 GSM + 1 LRM, D = 8, T = 3, 3 x 4 x 3 tokens, 3 x 2 windows)
    return get_config("tiny", num_frames=3, dim=8, num_gsm=1, num_lrm=1, window=(3, 2)), (2, 16, 12)


def perturb_for_check(net: torch.nn.Module, seed: int) -> None:
    """Give STMM non-trivial offsets/masks/tap weights (their init is exactly the identity, where the bilinear
    sampling sits on its kinks), so the check exercises the deformable paths in both backends."""
    from glsmamba.model.blocks import Modulator

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, Modulator):
                w = m.offset_pw.weight
                w.copy_((torch.randn(w.shape, generator=gen) * 0.05).to(w))
                m.weight.add_((torch.randn(m.weight.shape, generator=gen) * 0.3).to(m.weight))


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off and deterministic cuDNN while comparing whole networks: the convolutions and matmuls around the ops
    are shared by both backends, and TF32's 10-bit mantissa would turn 1e-7 differences coming out of a kernel into
    1e-3 ones, measuring TF32 rather than the kernels."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = saved


def check_network(level: str, device: torch.device, seed: int) -> list[Row]:
    """Run one GLSMamba on both backends; compare the output and every parameter gradient (two rows)."""
    from glsmamba.model import GLSMamba, use_backend

    on_gpu = device.type == "cuda"
    cfg, (bsz, hh, ww) = network_config(level, on_gpu)
    torch.manual_seed(seed)
    net = GLSMamba(cfg).to(device).train()
    perturb_for_check(net, seed)
    gen = torch.Generator(device="cpu").manual_seed(seed + 2)
    frames = torch.randn(bsz, cfg.num_frames, 3, hh, ww, generator=gen).to(device)
    label = (f"{cfg.name} D={cfg.dim} N={cfg.d_state} {cfg.num_gsm}GSM+{cfg.num_lrm}LRM "
             f"B={bsz} T={cfg.num_frames} {hh}x{ww}")
    results: dict[str, Any] = {}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with exact_float32():
        for backend in ("reference", "triton"):
            net.load_state_dict(state)  # BN running stats identical for both runs
            net.zero_grad(set_to_none=True)
            try:
                with use_backend(backend):
                    out = net(frames)
                cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 3)).to(out)
                (out * cot).sum().backward()
                grads = {n: (p.grad.clone() if p.grad is not None else None)
                         for n, p in net.named_parameters() if p.requires_grad}
                results[backend] = (out.detach().clone(), grads)
            except Exception as e:  # reported as failing rows
                results[backend] = f"{type(e).__name__}: {e}"
    common = {"op": "GLSMamba (whole network)", "backend": "triton", "shape": label, "dtype": "float32"}
    ref, tri = results["reference"], results["triton"]
    if isinstance(ref, str) or isinstance(tri, str):
        return failure_rows(common, ref if isinstance(ref, str) else tri)
    rows = [summary_row(common, "fwd (heatmaps)", {"out": compare(ref[0], tri[0], "float32", "fwd")})]
    per = {n: compare(ref[1][n], tri[1][n], "float32", "grad") for n in ref[1]}
    rows.append(summary_row(common, f"bwd {len(per)} params (worst: {worst(per)[0]})", per))
    return rows
