"""Per-op input cases: the keyword arguments of every op for given sizes, dtype, device and random generator.

One builder per op (:func:`selective_scan_inputs`, :func:`ordered_scan_inputs`, :func:`space_time_scan_inputs`,
:func:`space_time_merge_inputs`, :func:`deformable_inputs`), used by the tests, by ``glsmamba verify`` and by
the benchmarks alike; :data:`OP_CASES` names one call per op and variant (the builder, the call options and which
inputs are differentiable) for a :class:`Sizes`.

Tensors are drawn from ``generator`` on the generator's device, in a fixed order, then moved to ``device`` and
cast to ``dtype``: the same seed gives the same values on every device. SSM parameters (``A``, ``D``,
``delta_bias``) stay float32; ``init="random"`` draws them (``A = -U(0.2, 1.7)``, ``D ~ N(0, 1)``,
``delta_bias ~ N(0, 0.2^2)``), ``init="mamba"`` uses Mamba's initialisation (S4D-real ``A = -(1..N)``, ``D = 1``,
``delta_bias`` the inverse softplus of a log-uniform step in [1e-3, 1e-1]).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS
from glsmamba.reference.space_time import DEFAULT_WINDOW, STS6D, STS6D_GROUPS, scan_orders, window_orders

Inputs = dict[str, Any]
INITS = ("random", "mamba")


def generator_of(generator: torch.Generator | int | None) -> torch.Generator:
    """``generator`` itself, or a fresh CPU generator seeded with the int (0 for ``None``)."""
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def randn(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32,
          device: torch.device | str | None = None, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """``N(shift, scale^2)`` values drawn from ``generator`` (float32), then moved to ``device`` as ``dtype``."""
    x = torch.randn(*shape, generator=generator, device=generator.device) * scale + shift
    return x.to(device=device, dtype=dtype)


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


def ssm_A(generator: torch.Generator, *shape: int, device=None, init: str = "random") -> torch.Tensor:
    """Negative real state matrix ``A`` of ``shape`` (``(..., C, N)``), float32 (see the module docstring)."""
    _check_init(init)
    if init == "mamba":
        return -torch.arange(1, shape[-1] + 1, dtype=torch.float32, device=device).expand(*shape).contiguous()
    return (-(_rand(generator, *shape) * 1.5 + 0.2)).to(device)


def ssm_D(generator: torch.Generator, *shape: int, device=None, init: str = "random") -> torch.Tensor:
    """Skip weights ``D`` of ``shape`` (``(..., C)``), float32."""
    _check_init(init)
    return torch.ones(*shape, device=device) if init == "mamba" else randn(generator, *shape, device=device)


def ssm_delta_bias(generator: torch.Generator, *shape: int, device=None, init: str = "random") -> torch.Tensor:
    """Step bias ``delta_bias`` of ``shape`` (``(..., C)``), float32."""
    _check_init(init)
    if init == "random":
        return randn(generator, *shape, device=device, scale=0.2)
    dt = torch.exp(_rand(generator, *shape) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3))
    return (dt + torch.log(-torch.expm1(-dt))).to(device)


# ---------------------------------------------------------------------------------------------- builders
def selective_scan_inputs(*, batch: int = 2, dim: int = 6, length: int = 37, dstate: int = 4, groups: int = 1,
                          dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                          generator: torch.Generator | int | None = None, channel_last: bool = False,
                          has_D: bool = True, has_z: bool = True, has_bias: bool = True, dt_scale: float = 0.5,
                          dt_shift: float = 0.0, init: str = "random") -> Inputs:
    """``u, delta, A, B, C, D, z, delta_bias`` of ``selective_scan`` (channel-first ``(batch, dim, length)``) or
    of ``selective_scan_channel_last`` (``(batch, length, dim)``); absent ones are ``None``. B and C are grouped
    (``(batch, groups, dstate, length)``) when ``groups > 1``. ``delta ~ N(dt_shift, dt_scale^2)``."""
    g = generator_of(generator)
    ushape = (batch, length, dim) if channel_last else (batch, dim, length)
    if channel_last:
        bshape = (batch, length, dstate) if groups == 1 else (batch, length, groups, dstate)
    else:
        bshape = (batch, dstate, length) if groups == 1 else (batch, groups, dstate, length)
    io = {"dtype": dtype, "device": device}
    return {
        "u": randn(g, *ushape, **io),
        "delta": randn(g, *ushape, **io, scale=dt_scale, shift=dt_shift),
        "A": ssm_A(g, dim, dstate, device=device, init=init),
        "B": randn(g, *bshape, **io),
        "C": randn(g, *bshape, **io),
        "D": ssm_D(g, dim, device=device, init=init) if has_D else None,
        "z": randn(g, *ushape, **io) if has_z else None,
        "delta_bias": ssm_delta_bias(g, dim, device=device, init=init) if has_bias else None,
    }


def ordered_scan_inputs(directions: int, *, batch: int = 2, shape: Sequence[int] = (2, 3, 5), channels: int = 5,
                        dstate: int = 4, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        generator: torch.Generator | int | None = None, has_D: bool = True, has_bias: bool = True,
                        dt_scale: float = 0.5, dt_shift: float = 0.0, init: str = "random") -> Inputs:
    """``x, delta, A, B, C, D, delta_bias`` of ``ordered_selective_scan`` for ``directions`` = K scan orders of a
    ``shape = (T, H, W)`` clip (the orders, groups and resets are the caller's)."""
    g = generator_of(generator)
    T, H, W = shape
    L, K, io = T * H * W, directions, {"dtype": dtype, "device": device}
    return {
        "x": randn(g, batch, L, channels, **io),
        "delta": randn(g, batch, K, L, channels, **io, scale=dt_scale, shift=dt_shift),
        "A": ssm_A(g, K, channels, dstate, device=device, init=init),
        "B": randn(g, batch, K, L, dstate, **io),
        "C": randn(g, batch, K, L, dstate, **io),
        "D": ssm_D(g, K, channels, device=device, init=init) if has_D else None,
        "delta_bias": ssm_delta_bias(g, K, channels, device=device, init=init) if has_bias else None,
    }


def space_time_scan_inputs(*, batch: int = 2, shape: Sequence[int] = (2, 3, 5), channels: int = 4,
                           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           generator: torch.Generator | int | None = None, names: Sequence[str] = STS6D) -> Inputs:
    """``x, orders`` of ``space_time_scan``: tokens ``(batch, T*H*W, channels)`` and the ``names`` orders."""
    T, H, W = shape
    return {"x": randn(generator_of(generator), batch, T * H * W, channels, dtype=dtype, device=device),
            "orders": scan_orders(tuple(shape), tuple(names), device=device)}


def space_time_merge_inputs(*, batch: int = 2, shape: Sequence[int] = (2, 3, 5), channels: int = 4,
                            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                            generator: torch.Generator | int | None = None, names: Sequence[str] = STS6D,
                            groups: Sequence[int] = STS6D_GROUPS) -> Inputs:
    """``ys, orders, groups`` of ``space_time_merge``: one ``(T*H*W, channels)`` token set per order."""
    T, H, W = shape
    return {"ys": randn(generator_of(generator), batch, len(names), T * H * W, channels, dtype=dtype, device=device),
            "orders": scan_orders(tuple(shape), tuple(names), device=device), "groups": tuple(groups)}


def deformable_inputs(*, batch: int = 2, shape: Sequence[int] = (2, 3, 5), channels: int = 12,
                      offset_groups: int = 2, taps: torch.Tensor = SPATIAL_TAPS, off_scale: float = 1.5,
                      dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                      generator: torch.Generator | int | None = None, fractional: bool = True) -> Inputs:
    """``x, offsets, mask, weight`` of ``deformable_aggregate`` (``taps`` and ``shape`` are the caller's).

    Offsets are ``off_scale * N(0, 1)`` (they cross the border); with ``fractional`` every sample position is kept
    >= 0.05 away from an integer, so that neither a finite difference nor a backend's rounding crosses a bilinear
    cell edge (where the gradient jumps). The mask is ``U(0, 1)`` (the sigmoid the model applies)."""
    g = generator_of(generator)
    T, H, W = shape
    L, P = T * H * W, taps.shape[0]
    off = torch.randn(batch, L, offset_groups, P, 2, generator=g, device=g.device) * off_scale
    if fractional:
        frac = off - off.floor()
        off = torch.where(frac < 0.05, off + 0.1, torch.where(frac > 0.95, off - 0.1, off))
    io = {"dtype": dtype, "device": device}
    return {
        "x": randn(g, batch, L, channels, **io),
        "offsets": off.to(**io),
        "mask": _rand(g, batch, L, offset_groups, P).to(**io),
        "weight": randn(g, P, channels, **io),
    }


def with_grad(inputs: Inputs, names: Sequence[str]) -> Inputs:
    """A copy of ``inputs`` whose ``names`` tensors are fresh leaves that require grad (the others shared)."""
    return {k: v.detach().clone().requires_grad_(True) if k in names and isinstance(v, torch.Tensor) else v
            for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------- op cases
@dataclass(frozen=True)
class Sizes:
    """The sizes of one op case: batch, clip ``frames x height x width`` tokens, channels, SSM state size.

    ``length`` is the selective scans' sequence length (default ``frames * height * width``); ``window`` the WSTS
    window of the windowed orders; ``offset_groups`` the deformable offset groups.
    """

    batch: int
    frames: int
    height: int
    width: int
    channels: int
    dstate: int
    length: int | None = None
    window: tuple[int, int] = DEFAULT_WINDOW
    offset_groups: int = 2

    @property
    def thw(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def seqlen(self) -> int:
        return self.tokens if self.length is None else self.length


SSM_GRADS = ("u", "delta", "A", "B", "C", "D", "delta_bias")
ORDERED_GRADS = ("x", "delta", "A", "B", "C", "D", "delta_bias")
DEFORMABLE_GRADS = ("x", "offsets", "mask", "weight")


@dataclass(frozen=True)
class OpCase:
    """One call of a registry op: ``inputs(sizes, dtype, device, generator)`` gives its keyword arguments,
    ``grads`` names the differentiable ones, ``label(sizes)`` describes it (the shape column of ``glsmamba
    verify``)."""

    op: str
    variant: str
    grads: tuple[str, ...]
    build: Callable[..., Inputs]
    describe: Callable[[Sizes], str]

    def inputs(self, sizes: Sizes, dtype: torch.dtype, device: torch.device | str,
               generator: torch.Generator | int | None = None, *, init: str = "random",
               dt_shift: float = 0.0) -> Inputs:
        """The keyword arguments (``init`` and ``dt_shift`` apply to the SSM ops only)."""
        return self.build(sizes, dtype, device, generator_of(generator), init, dt_shift)

    def label(self, sizes: Sizes) -> str:
        return self.describe(sizes)


def _ssm_label(s: Sizes) -> str:
    return f"B={s.batch} C={s.channels} L={s.seqlen} N={s.dstate}"


def _clip_label(s: Sizes) -> str:
    return f"B={s.batch} THW={s.frames}x{s.height}x{s.width} C={s.channels}"


def _selective_scan_case(channel_last: bool, grouped: bool, with_z: bool) -> Callable[..., Inputs]:
    def build(s: Sizes, dtype, device, gen, init, dt_shift) -> Inputs:
        kw = selective_scan_inputs(batch=s.batch, dim=s.channels, length=s.seqlen, dstate=s.dstate,
                                   groups=2 if grouped else 1, dtype=dtype, device=device, generator=gen,
                                   channel_last=channel_last, has_z=with_z, dt_shift=dt_shift, init=init)
        return {**kw, "delta_softplus": True, "return_last_state": with_z}

    return build


def _space_time_case(merge: bool) -> Callable[..., Inputs]:
    def build(s: Sizes, dtype, device, gen, init, dt_shift) -> Inputs:
        fn = space_time_merge_inputs if merge else space_time_scan_inputs
        return fn(batch=s.batch, shape=s.thw, channels=s.channels, dtype=dtype, device=device, generator=gen)

    return build


def _ordered_case(windowed: bool) -> Callable[..., Inputs]:
    def build(s: Sizes, dtype, device, gen, init, dt_shift) -> Inputs:
        if windowed:
            (orders, reset), groups = window_orders(s.thw, s.window, device=device), (0, 0)
        else:
            orders, reset, groups = scan_orders(s.thw, STS6D, device=device), None, STS6D_GROUPS
        kw = ordered_scan_inputs(orders.shape[0], batch=s.batch, shape=s.thw, channels=s.channels, dstate=s.dstate,
                                 dtype=dtype, device=device, generator=gen, dt_shift=dt_shift, init=init)
        return {**kw, "orders": orders, "groups": groups, "reset": reset, "delta_softplus": True}

    return build


def _deformable_case(taps: torch.Tensor) -> Callable[..., Inputs]:
    def build(s: Sizes, dtype, device, gen, init, dt_shift) -> Inputs:
        kw = deformable_inputs(batch=s.batch, shape=s.thw, channels=s.channels, offset_groups=s.offset_groups,
                               taps=taps, dtype=dtype, device=device, generator=gen)
        return {**kw, "taps": taps.to(device), "shape": s.thw}

    return build


def _make_cases() -> dict[tuple[str, str], OpCase]:
    cases = [
        OpCase("selective_scan", "plain", SSM_GRADS, _selective_scan_case(False, False, False), _ssm_label),
        OpCase("selective_scan", "grouped-z-last", SSM_GRADS + ("z",), _selective_scan_case(False, True, True),
               lambda s: _ssm_label(s) + " G=2 z last_state"),
        OpCase("selective_scan_channel_last", "plain", SSM_GRADS, _selective_scan_case(True, False, False),
               _ssm_label),
        OpCase("selective_scan_channel_last", "z-last", SSM_GRADS + ("z",), _selective_scan_case(True, False, True),
               lambda s: _ssm_label(s) + " z"),
        OpCase("space_time_scan", "sts6d", ("x",), _space_time_case(False), lambda s: _clip_label(s) + " K=6"),
        OpCase("space_time_merge", "sts6d", ("ys",), _space_time_case(True), lambda s: _clip_label(s) + " K=6 G=3"),
        OpCase("ordered_selective_scan", "sts6d", ORDERED_GRADS, _ordered_case(False),
               lambda s: _clip_label(s) + f" N={s.dstate} K=6 G=3"),
        OpCase("ordered_selective_scan", "wsts", ORDERED_GRADS, _ordered_case(True),
               lambda s: _clip_label(s) + f" N={s.dstate} K=2 window {s.window[0]}x{s.window[1]}"),
        OpCase("deformable_aggregate", "spatial", DEFORMABLE_GRADS, _deformable_case(SPATIAL_TAPS),
               lambda s: _clip_label(s) + f" Goff={s.offset_groups} spatial 3x3"),
        OpCase("deformable_aggregate", "temporal", DEFORMABLE_GRADS, _deformable_case(TEMPORAL_TAPS),
               lambda s: _clip_label(s) + f" Goff={s.offset_groups} temporal 3"),
    ]
    return {(c.op, c.variant): c for c in cases}


OP_CASES: dict[tuple[str, str], OpCase] = _make_cases()
"""(op, variant) -> :class:`OpCase`, every registry op at least once."""

OP_NAMES: tuple[str, ...] = tuple(dict.fromkeys(op for op, _ in OP_CASES))

VERIFY_CASES: tuple[tuple[str, str], ...] = (
    ("selective_scan", "plain"), ("selective_scan", "grouped-z-last"), ("selective_scan_channel_last", "z-last"),
    ("space_time_scan", "sts6d"), ("space_time_merge", "sts6d"),
    ("ordered_selective_scan", "sts6d"), ("ordered_selective_scan", "wsts"),
    ("deformable_aggregate", "spatial"), ("deformable_aggregate", "temporal"),
)
"""The op cases ``glsmamba verify`` runs, in its table's order."""
