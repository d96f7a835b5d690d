"""Case builders: inputs for every benchmarked op / network at a given resolution (B, T, H, W, C, N).

A :class:`Target` names one row family of the CSV (``op``, ``variant``) and the backends it can run with; its
``build(shape, dtype, device, backend)`` returns a :class:`Case`: a zero-argument forward closure, the leaf
tensors that receive gradients, and the traffic model (bytes moved, MUFU ops, FLOPs) per mode.

Project ops come from the registry (``model.backend.get_impl``) with the inputs of the shared op cases
(``glsmamba.verify.cases``: the tests and ``glsmamba verify`` build the same ones) and Mamba's parameter
initialisation; a backend that cannot be benched on the device raises :class:`~bench.harness.Skip` with the
reason. Backends:

  ``reference``  the pure-PyTorch implementation;
  ``triton``     the Triton kernels (benched on CUDA only: on CPU they run under the interpreter);
  ``compile``    ``torch.compile(reference)`` (fresh compile per shape; compile time in ``compile_ms``);
  baselines      ``sdpa`` / ``sdpa_math`` (full attention), ``mambapy`` (parallel scan, if installed).

Traffic model (docs/kernels.md section 5; s = bytes per element of the I/O dtype, G = B/C groups = 1 here):
  selective scan fwd: Bsz*L*(3*C*s + 2*N*s) bytes (read u, delta; write out; read B, C), MUFU Bsz*C*L*(N + 2)
  (N exps + the softplus exp and log per element); bwd: Bsz*L*(5*C*s + 4*N*s) (read u, delta, dout; write du,
  ddelta; read B, C; write dB, dC) and the same MUFU count (exps recomputed). The K-direction scans count the
  shared input once (the L2 keeps it across directions). These are lower bounds on traffic, so the roofline
  share they give is an upper bound on how close a kernel is to the hardware limit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from glsmamba.bench.baselines import (
    ATTENTION_IMPLS,
    AttentionNet,
    attention,
    attention_bytes_materialised,
    attention_heads,
    mambapy_available,
    mambapy_selective_scan,
)
from glsmamba.bench.harness import MODES, Skip
from glsmamba.reference.space_time import DEFAULT_WINDOW
from glsmamba.verify.cases import OP_CASES, Sizes

REGISTRY_BACKENDS = ("reference", "triton", "compile")
WINDOW = DEFAULT_WINDOW


@dataclass(frozen=True)
class Shape:
    """One resolution point: batch B, clip T x H x W tokens, channels C, state size N."""

    B: int
    T: int
    H: int
    W: int
    C: int
    N: int

    @property
    def tokens(self) -> int:
        return self.T * self.H * self.W

    @property
    def thw(self) -> tuple[int, int, int]:
        return (self.T, self.H, self.W)

    def label(self) -> str:
        return f"B{self.B}-T{self.T}-H{self.H}-W{self.W}-C{self.C}-N{self.N}"


Traffic = tuple[float | None, float | None, float | None]  # (bytes, mufu ops, flops)


@dataclass
class Case:
    """A built benchmark case.

    Attributes:
        fn: runs the forward pass and returns its output (a tensor, or a tuple/dict whose first tensor is used
            for the backward pass).
        grad_inputs: leaf tensors that get gradients (reset to ``None`` between repetitions).
        traffic: mode -> (bytes, MUFU ops, FLOPs) of the traffic model; missing modes / ``None`` = not modelled.
        K: number of scan directions (for the CSV), if any.
        autocast: dtype for ``torch.autocast`` around the forward (networks with low-precision compute).
        modes: the modes this case supports.
    """

    fn: Callable[[], Any]
    grad_inputs: list[torch.Tensor]
    traffic: dict[str, Traffic] = field(default_factory=dict)
    K: int | None = None
    autocast: torch.dtype | None = None
    modes: tuple[str, ...] = MODES

    def context(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


@dataclass(frozen=True)
class Target:
    """One benchmarked thing: ``op`` / ``variant`` in the CSV, the backends it offers, how to build it.

    ``exponent``: expected growth of time with tokens (1 linear, 2 quadratic), used to skip points predicted
    to be too slow (see also :func:`estimate_bytes`). ``kind`` is ``"op"`` or ``"net"`` (networks use the
    network batch and width).
    """

    op: str
    variant: str
    backends: tuple[str, ...]
    build: Callable[[Shape, torch.dtype, torch.device, str], Case]
    kind: str = "op"
    exponent: float = 1.0

    @property
    def key(self) -> str:
        return self.op if not self.variant else f"{self.op}[{self.variant}]"


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


def _combine(fwd: Traffic, bwd: Traffic) -> dict[str, Traffic]:
    def add(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a + b

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": (add(fwd[0], bwd[0]), add(fwd[1], bwd[1]), add(fwd[2], bwd[2]))}


def registry_impl(op: str, backend: str, device: torch.device) -> Callable[..., Any]:
    """The function running ``op`` on ``backend`` (``compile`` = a fresh ``torch.compile`` of the reference).

    Raises:
        Skip: the backend cannot be benched on ``device``.
    """
    from glsmamba.model import backend as registry

    impl_backend = "reference" if backend == "compile" else backend
    if backend == "triton":
        if device.type != "cuda":
            raise Skip("triton is benched on CUDA only (on CPU it runs under the interpreter, far too slow)")
        reason = registry.triton_unavailable_reason(device)
        if reason is not None:
            raise Skip(f"triton cannot run: {reason}")
    fn = registry.get_impl(op, impl_backend)
    return compile_fresh(fn) if backend == "compile" else fn


def compile_fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` with a fresh dynamo cache (one compile per case; its time lands in compile_ms).

    Compiled backward graphs donate their buffers (torch >= 2.6) and then refuse ``retain_graph=True``, which the
    ``bwd`` mode needs to repeat a backward: buffer donation is turned off for the benchmark process.
    """
    try:
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
    except ImportError:  # pragma: no cover - older torch
        pass
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=device, dtype=torch.float32) * scale).to(dtype).requires_grad_()


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------------------------------
# Traffic models (module-level so tests can check them against hand-computed numbers)
# --------------------------------------------------------------------------------------------------------------


def selective_scan_traffic(Bsz: int, C: int, L: int, N: int, s: int, softplus: bool = True) -> dict[str, Traffic]:
    mufu = float(Bsz) * C * L * (N + (2 if softplus else 0))
    fwd = (float(Bsz) * L * (3 * C * s + 2 * N * s), mufu, None)
    bwd = (float(Bsz) * L * (5 * C * s + 4 * N * s), mufu, None)
    return _combine(fwd, bwd)


def ordered_scan_traffic(Bsz: int, C: int, L: int, N: int, K: int, G: int, s: int) -> dict[str, Traffic]:
    idx = 8.0 * K * L
    mufu = float(Bsz) * K * C * L * (N + 2)
    fwd = (float(Bsz) * L * s * (C + K * C + 2 * K * N + G * C) + idx, mufu, None)
    bwd = (float(Bsz) * L * s * (2 * C + 2 * K * C + 4 * K * N + G * C) + idx, mufu, None)
    return _combine(fwd, bwd)


def scan_traffic(Bsz: int, C: int, L: int, K: int, s: int) -> dict[str, Traffic]:
    t = (float(Bsz) * L * C * s * (1 + K) + 8.0 * K * L, None, None)
    return _combine(t, t)


def merge_traffic(Bsz: int, C: int, L: int, K: int, G: int, s: int) -> dict[str, Traffic]:
    t = (float(Bsz) * L * C * s * (K + G) + 8.0 * K * L, None, None)
    return _combine(t, t)


def deformable_traffic(Bsz: int, C: int, L: int, G: int, P: int, s: int) -> dict[str, Traffic]:
    fwd = (float(Bsz) * L * s * (2 * C + 3 * G * P) + P * C * s, None, None)
    bwd = (float(Bsz) * L * s * (3 * C + 6 * G * P) + 2 * P * C * s, None, None)
    return _combine(fwd, bwd)


def attention_flops(Bsz: int, L: int, C: int) -> dict[str, Traffic]:
    f = 4.0 * Bsz * L * L * C  # QK^T and PV, 2 FLOPs per MAC
    return _combine((None, None, f), (None, None, 2.5 * f))


# --------------------------------------------------------------------------------------------------------------
# Op builders
# --------------------------------------------------------------------------------------------------------------


def _sizes(shape: Shape) -> Sizes:
    """The op-case sizes of a resolution point (WSTS 8 x 6 windows; 4 offset groups where C allows)."""
    return Sizes(shape.B, *shape.thw, channels=shape.C, dstate=shape.N, window=WINDOW,
                 offset_groups=4 if shape.C % 4 == 0 else 1)


def _op_traffic(op: str, kw: dict[str, Any], shape: Shape, s: int) -> tuple[dict[str, Traffic], int | None]:
    """(traffic model per mode, number of scan directions K or None) of one op call."""
    Bsz, C, L, N = shape.B, shape.C, shape.tokens, shape.N
    if op in ("selective_scan", "selective_scan_channel_last"):
        return selective_scan_traffic(Bsz, C, L, N, s), None
    if op == "deformable_aggregate":
        G, P = kw["offsets"].shape[2], kw["taps"].shape[0]
        return deformable_traffic(Bsz, C, L, G, P, s), None
    K = kw["orders"].shape[0]
    G = max(kw["groups"]) + 1 if "groups" in kw else 1
    if op == "space_time_scan":
        return scan_traffic(Bsz, C, L, K, s), K
    if op == "space_time_merge":
        return merge_traffic(Bsz, C, L, K, G, s), K
    return ordered_scan_traffic(Bsz, C, L, N, K, G, s), K


def build_op(op: str, variant: str) -> Callable[[Shape, torch.dtype, torch.device, str], Case]:
    """The builder of the op case ``(op, variant)`` of ``glsmamba.verify.cases.OP_CASES`` (Mamba's parameter init,
    every differentiable input a leaf that gets gradients)."""
    op_case = OP_CASES[(op, variant)]

    def build(shape: Shape, dtype: torch.dtype, device: torch.device, backend: str) -> Case:
        if backend == "mambapy":
            reason = mambapy_available() if op == "selective_scan" else f"mambapy has no {op}"
            if reason:
                raise Skip(reason)
            fn = mambapy_selective_scan
        else:
            fn = registry_impl(op, backend, device)
        gen = torch.Generator(device=device).manual_seed(0)
        kw = op_case.inputs(_sizes(shape), dtype, device, gen, init="mamba")
        leaves = [kw[k].requires_grad_() for k in op_case.grads if kw.get(k) is not None]
        traffic, K = _op_traffic(op, kw, shape, _elem(dtype))
        return Case(lambda: fn(**kw), leaves, traffic, K=K)

    return build


def build_attention(shape: Shape, dtype: torch.dtype, device: torch.device, backend: str) -> Case:
    if backend not in ATTENTION_IMPLS:
        raise Skip(f"attention runs with {ATTENTION_IMPLS}, not {backend!r}")
    heads = attention_heads(shape.C)
    q, k, v = (_randn((shape.B, heads, shape.tokens, shape.C // heads), dtype, device) for _ in range(3))
    return Case(lambda: attention(q, k, v, impl=backend), [q, k, v], attention_flops(shape.B, shape.tokens, shape.C))


def est_attention_bytes(shape: Shape, dtype: torch.dtype, mode: str, backend: str, depth: int = 1) -> float | None:
    if backend != "sdpa_math":
        return None
    per = attention_bytes_materialised(shape.B, attention_heads(shape.C), shape.tokens, _elem(dtype), mode)
    return per * (depth if mode != "fwd" else 1)


def est_mambapy_bytes(shape: Shape, dtype: torch.dtype, mode: str) -> float:
    # (Bsz, L, D, N) fp32 tensors: dA, BX, hs, padded copies; about twice as many kept for backward.
    one = 4.0 * shape.B * shape.tokens * shape.C * shape.N
    return one * (6 if mode == "fwd" else 12)


# --------------------------------------------------------------------------------------------------------------
# Networks (the model imports lazily)
# --------------------------------------------------------------------------------------------------------------

MODEL_PRESET_CUDA = "base"
MODEL_PRESET_CPU = "tiny"


@functools.cache
def model_dims(preset: str) -> tuple[int, int]:
    """(width, d_state) of a GLSMamba preset."""
    from glsmamba.model import get_config

    cfg = get_config(preset)
    return cfg.dim, cfg.d_state


def _images(shape: Shape, device: torch.device) -> torch.Tensor:
    # The networks see (Bsz, T, 3, 4H, 4W) images: their 1/4-resolution features are the H x W token grid.
    return torch.randn(shape.B, shape.T, 3, 4 * shape.H, 4 * shape.W, device=device)


def _net_case(net: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> Case:
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        x.requires_grad_()
    return Case(lambda: net(x), params or [x], autocast=None if dtype == torch.float32 else dtype)


def build_glsmamba(preset: str):
    def build(shape: Shape, dtype: torch.dtype, device: torch.device, backend: str) -> Case:
        from glsmamba.model import GLSMamba, get_config, use_backend

        if backend == "triton" and device.type != "cuda":
            raise Skip("triton is benched on CUDA only (on CPU it runs under the interpreter, far too slow)")
        impl_backend = "reference" if backend == "compile" else backend
        cfg = get_config(preset, backend=impl_backend, image_size=(4 * shape.H, 4 * shape.W), num_frames=shape.T)
        net = GLSMamba(cfg).to(device).eval()
        fwd = net
        if backend == "compile":
            fwd = compile_fresh(net)
        x = _images(shape, device)

        def run():
            with use_backend(impl_backend):
                return fwd(x)

        case = _net_case(net, x, dtype)
        case.fn = run
        return case

    return build


@functools.cache
def attention_variant(preset: str) -> str:
    """The ``attention_net`` variant that matches a GLSMamba preset: ``<encoder>-depth<N>``, on the preset's encoder
    (``vit``, ``conv``) with as many blocks as its GSM + LRM blocks; ``stem-depth6`` (the 4x4 patchify stem) when
    the network is not importable."""
    try:
        from glsmamba.model import get_config

        cfg = get_config(preset)
        return f"{cfg.encoder}-depth{int(cfg.num_gsm) + int(cfg.num_lrm)}"
    except Exception:
        return "stem-depth6"


def parse_attention_variant(variant: str) -> tuple[str, int]:
    """``(encoder, depth)`` of an ``attention_net`` variant name; ``depth<N>`` (rows from before the encoder was
    shared) is ``("stem", N)``, and a name without a depth has 6."""
    encoder, sep, digits = variant.rpartition("depth")
    return (encoder.removesuffix("-") or "stem") if sep else "stem", int(digits) if digits.isdigit() else 6


def build_attention_net(depth: int, preset: str | None = None):
    """The full-attention network with ``depth`` blocks, at the sweep's network width (the GLSMamba preset's).

    With a GLSMamba ``preset`` its stem is that preset's encoder (frozen as the preset's is), as in the paper's
    attention baselines: the two networks then differ only after the encoder. Without one, a 4x4 patchify stem.
    """

    def build(shape: Shape, dtype: torch.dtype, device: torch.device, backend: str) -> Case:
        if backend not in ATTENTION_IMPLS:
            raise Skip(f"attention_net runs with {ATTENTION_IMPLS}, not {backend!r}")
        net = attention_network(shape, depth, preset, backend).to(device).eval()
        return _net_case(net, _images(shape, device), dtype)

    return build


def attention_network(shape: Shape, depth: int, preset: str | None, impl: str) -> AttentionNet:
    """:func:`build_attention_net`'s network for one resolution point (width ``shape.C``)."""
    enc = {}
    if preset is not None:
        from glsmamba.model import get_config
        from glsmamba.model.encoder import build_encoder

        cfg = get_config(preset, image_size=(4 * shape.H, 4 * shape.W), num_frames=shape.T)
        enc = dict(encoder=build_encoder(cfg), encoder_channels=cfg.encoder_channels,
                   freeze_encoder=cfg.freeze_encoder)
    return AttentionNet(shape.C, depth=depth, impl=impl, **enc)


# --------------------------------------------------------------------------------------------------------------
# The target table
# --------------------------------------------------------------------------------------------------------------


def targets(model_preset: str) -> list[Target]:
    """Every benchmark target, in the order the sweep runs them at each resolution."""
    rb = REGISTRY_BACKENDS
    attention = attention_variant(model_preset)  # as deep as the preset's GSM + LRM blocks, on its encoder
    encoder, depth = parse_attention_variant(attention)
    return [
        Target("selective_scan", "", (*rb, "mambapy"), build_op("selective_scan", "plain")),
        Target("selective_scan_channel_last", "", rb, build_op("selective_scan_channel_last", "plain")),
        Target("ordered_selective_scan", "sts6d", rb, build_op("ordered_selective_scan", "sts6d")),
        Target("ordered_selective_scan", "wsts", rb, build_op("ordered_selective_scan", "wsts")),
        Target("space_time_scan", "sts6d", rb, build_op("space_time_scan", "sts6d")),
        Target("space_time_merge", "sts6d", rb, build_op("space_time_merge", "sts6d")),
        Target("deformable_aggregate", "spatial", rb, build_op("deformable_aggregate", "spatial")),
        Target("attention", "", ATTENTION_IMPLS, build_attention, exponent=2.0),
        Target("glsmamba", model_preset, rb, build_glsmamba(model_preset), kind="net"),
        Target("attention_net", attention, ATTENTION_IMPLS,
               build_attention_net(depth, None if encoder == "stem" else model_preset), kind="net", exponent=2.0),
    ]  # fmt: skip


def estimate_bytes(target: Target, shape: Shape, dtype: torch.dtype, mode: str, backend: str) -> float | None:
    """Rough peak bytes of one measurement where a model exists (materialised attention, mambapy), else None."""
    if target.op == "attention":
        return est_attention_bytes(shape, dtype, mode, backend)
    if target.op == "attention_net":
        return est_attention_bytes(shape, dtype, mode, backend, depth=parse_attention_variant(target.variant)[1])
    if target.op == "selective_scan" and backend == "mambapy":
        return est_mambapy_bytes(shape, dtype, mode)
    return None
