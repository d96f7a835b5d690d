"""GSM and LRM blocks (docs/design.md section 4; the decisions are documented in :mod:`glsmamba.model.config`).

Tokens are channel-last ``(B, L, C)`` with ``L = T*H*W`` in natural order ``l = (t*H + h)*W + w``; every block gets
the clip ``shape = (T, H, W)``. The scans and the deformable merge run through the backend registry at call time
(through :mod:`model.ops`), so switching the backend on a built model changes what runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from glsmamba.reference import _cpu_kernels
from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS
from glsmamba.reference.selective_scan import _dt as softplus_dt
from glsmamba.reference.space_time import STS6D, scan_orders, window_orders

from . import ops
from .backend import current_backend, resolve, use_backend
from .config import GLSMambaConfig

Shape = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------- scan orders
def global_scan_names(directions: int) -> tuple[str, ...]:
    """The STS6D orders used for ``directions`` = 2 (unified), 4 (+ spatial), 6 (+ temporal): forward types first,
    then their reversals, in ``STS6D`` order."""
    types = STS6D[: directions // 2]
    return tuple(types) + tuple(f"{t}_rev" for t in types)


def global_scan_groups(directions: int, by_type: bool) -> tuple[int, ...]:
    """Group id per direction: the forward/backward pair of a type share a group (``by_type``), else all in 0."""
    k = directions // 2
    return tuple(range(k)) * 2 if by_type else (0,) * directions


@functools.lru_cache(maxsize=64)
def _global_orders(shape: Shape, names: tuple[str, ...], device: torch.device) -> torch.Tensor:
    return scan_orders(shape, names, device=device)


def _order_device(device: torch.device) -> torch.device:
    # orders are index tensors: build them on CPU when counting FLOPs on the meta device (never used there)
    return torch.device("cpu") if device.type == "meta" else device


# ----------------------------------------------------------------------------------------------- small modules
class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with ``p = 0``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def _shift_frames(y: torch.Tensor, dt: int, t: int) -> torch.Tensor:
    """``y (B, L, C)`` of a ``t``-frame clip shifted by ``dt`` frames: ``x[frame i] = y[frame i + dt]``, zeros where
    ``i + dt`` is outside the clip (one ``(B, L, C)`` buffer: the frames of ``y`` that stay, and zero frames)."""
    b, l, c = y.shape
    frames, x = y.reshape(b, t, l // t, c), y.new_empty(b, t, l // t, c)
    a = min(abs(dt), t)
    src, dst = (slice(a, t), slice(0, t - a)) if dt > 0 else (slice(0, t - a), slice(a, t))
    x[:, dst] = frames[:, src]
    x[:, slice(t - a, t) if dt > 0 else slice(0, a)] = 0
    return x.reshape(b, l, c)


class SplitLinear(nn.Linear):
    """``nn.Linear`` that can apply one block of its weight: output rows ``rows`` and/or input columns ``cols``
    (bias only with ``bias=True`` and the rows' part of it). One weight in the checkpoint, and module-hook counters
    still see a Linear; the blocks are separate outputs instead of views of one wide one."""

    def forward(self, x: torch.Tensor, rows: slice = slice(None), cols: slice = slice(None),
                bias: bool = True) -> torch.Tensor:
        b = self.bias[rows] if bias and self.bias is not None else None
        return F.linear(x, self.weight[rows, cols], b)


class SplitDepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` that can run on the input channels ``channels`` alone (with their filters)."""

    def forward(self, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
        w = self.weight[channels]
        b = None if self.bias is None else self.bias[channels]
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups=w.shape[0])


def frame_conv(conv: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Apply a 2-D conv (a module or a function of the ``(N, C, H, W)`` input) to every frame of channel-last
    tokens: ``(B, L, C) -> (B, L, C')``."""
    t, h, w = shape
    b, _, c = x.shape
    y = conv(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).reshape(b, t * h * w, y.shape[1])


class ChannelAttention(nn.Module):
    """Sequential channel attention across frames: per-frame GAP, an MLP (ReLU) and a sigmoid give per-frame channel
    weights ``(B, T, D)`` that scale the tokens of each frame.

    ``form="joint"``: the T pooled vectors are concatenated (T*D) and one MLP ``T*D -> T*D / reduction -> T*D`` sees
    every frame (parameters grow with T^2). ``form="frame"``: one MLP ``D -> D / reduction -> D`` shared by the frames
    (no cross-frame mixing; parameters independent of T).
    """

    def __init__(self, num_frames: int, dim: int, reduction: float, form: str = "joint"):
        super().__init__()
        self.form = form
        width = num_frames * dim if form == "joint" else dim
        hidden = max(1, int(width // reduction))
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        t, h, w = shape
        b, l, d = x.shape
        xv = x.reshape(b, t, h * w, d)
        pooled = xv.mean(2)  # (B, T, D)
        if self.form == "joint":
            pooled = pooled.reshape(b, t * d)
        a = torch.sigmoid(self.fc2(self.act(self.fc1(pooled))))
        return (xv * a.reshape(b, t, 1, d)).reshape(b, l, d)


class GateStream(nn.Module):
    """The gate ``A = SiLU(LN(DWConv3x3(z)))``, depthwise conv per frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, z: torch.Tensor, shape: Shape) -> torch.Tensor:
        return F.silu(self.norm(frame_conv(self.dwconv, z, shape)))


# ----------------------------------------------------------------------------------------------- S6 over orders
class SpaceTimeS6(nn.Module):
    """Mamba-1 S6 run along K scan orders by the fused ``ordered_selective_scan`` op.

    ``(delta, B, C)`` are computed once in natural token order (projections commute with permutations).
    ``sharing`` says what the K directions share: ``"all"`` one S6 (projections, ``A_log``, ``D`` and the delta
    bias) read along K orders; ``"proj"`` the projections only (each direction has its own ``A_log``, ``D`` and
    delta bias); ``"none"`` nothing (VMamba-style per-direction projections).

    Args:
        d_inner: channels Di; d_state: N; dt_rank: R; num_dirs: K; sharing: see above.
    """

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, num_dirs: int, sharing: str = "all",
                 dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.num_dirs = d_inner, d_state, dt_rank, num_dirs
        self.sharing = sharing
        self.share_proj = sharing != "none"
        n_proj = 1 if self.share_proj else num_dirs
        n_own = 1 if sharing == "all" else num_dirs
        self.x_proj = nn.Linear(d_inner, n_proj * (dt_rank + 2 * d_state), bias=False)
        std = dt_rank ** -0.5
        if self.share_proj:
            self.dt_proj = nn.Linear(dt_rank, d_inner, bias=False)
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            self.dt_proj_weight = nn.Parameter(torch.empty(num_dirs, d_inner, dt_rank).uniform_(-std, std))
        # delta bias: softplus(bias) log-uniform in [dt_min, dt_max] (Mamba's init)
        dt = torch.exp(torch.rand(n_own, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, d_state + 1, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.log(a).repeat(n_own, d_inner, 1))
        self.D = nn.Parameter(torch.ones(n_own, d_inner))

    def forward(self, x: torch.Tensor, orders: torch.Tensor, groups: tuple[int, ...],
                reset: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, L, Di)`` natural order -> ``(B, G, L, Di)``: scans along ``orders`` summed per group."""
        b, l, di = x.shape
        k, r, n = self.num_dirs, self.dt_rank, self.d_state
        p = 1 if self.share_proj else k
        proj = self.x_proj(x).reshape(b, l, p, r + 2 * n).transpose(1, 2)  # (B, P, L, R + 2N)
        dt_in, bm, cm = proj.split([r, n, n], dim=-1)
        if self.share_proj:
            delta = self.dt_proj(dt_in)
        else:
            delta = torch.einsum("bklr,kdr->bkld", dt_in, self.dt_proj_weight)
        # shared projections (and a shared delta bias): zero-stride views over the directions (the Triton op reads
        # delta, B, C in place; the reference computes softplus(delta + bias) once for all directions)
        delta = delta.contiguous().expand(b, k, l, di)
        bm = bm.contiguous().expand(b, k, l, n)
        cm = cm.contiguous().expand(b, k, l, n)
        a = (-torch.exp(self.A_log.float())).expand(k, di, n).contiguous()
        bias, softplus = self.dt_bias.float().expand(k, di), True
        if self._dt_in_place(delta):
            # softplus(delta + bias) applied here, in place on our delta, by the reference op's own function: the
            # op then reads it as it is, where it would copy it to apply them (one (B, L, Di) buffer less at the
            # scan, the peak of the no-grad forward beside the merge)
            d = delta[:, 0]
            delta = softplus_dt(d, bias[0], True, d.dtype, 2, inplace=True)[:, None].expand(b, k, l, di)
            bias, softplus = None, False
        return ops.ordered_selective_scan(
            x, delta, a, bm, cm, self.D.float().expand(k, di).contiguous(), orders, groups,
            reset=reset, delta_bias=bias, delta_softplus=softplus,
        )

    def _dt_in_place(self, delta: torch.Tensor) -> bool:
        """Whether the forward applies the delta bias and softplus itself: no autograd, a CPU fp32 delta computed
        once for all directions (one delta bias), outside torch.compile / export (which see the op's own form)."""
        return (self.sharing == "all" and not torch.is_grad_enabled()
                and delta.device.type == "cpu" and delta.dtype == torch.float32
                and not torch.compiler.is_compiling() and not torch.compiler.is_exporting())


# ----------------------------------------------------------------------------------------------- STMM
class Modulator(nn.Module):
    """One STMM modulation ``M(y)``: a modulated deformable convolution over the taps ``taps`` (``(dt, dh, dw)``)
    whose offsets and masks (``offset_groups`` groups) are predicted from ``[ref, y]`` by a per-frame depthwise 3x3
    conv and a pointwise projection.

    ``group_channels=None`` (depthwise form): one ``deformable_aggregate`` call with depthwise tap weights
    ``weight (P, C)``. ``group_channels=c`` (grouped form, a grouped DCNv2): every tap is sampled on its own (mask
    applied, unit weight) and the P samples are mixed by ``weight (P, C / c, c, c)`` inside each group of ``c``
    channels: ``out[g, o] = sum_p,i weight[p, g, o, i] * sample_p[g, i]``. Tap ``(dt, dh, dw)`` is sampled by one
    ``deformable_aggregate`` call with the centre tap only, on the clip shifted by ``dt`` frames (zeros past its
    ends; the clip itself for dt = 0) with ``(dh, dw)`` added to its offsets, and its sample is mixed into the sum
    at once (one batched matmul over the groups, reading the ``(L, C)`` sample in place). :meth:`grouped_oracle`
    is the first form: all P samples from one call over P stacked copies of the batch, then one einsum (9 copies
    of the clip and a transposed copy of the ``(L, P, C)`` samples).

    The projection starts at zero (offsets 0, masks 0.5) and the centre tap's weight at 2 (twice the identity in the
    grouped form), every other tap at 0, so ``M(y) = y`` at initialisation.
    """

    def __init__(self, channels: int, taps: torch.Tensor, offset_groups: int, group_channels: int | None = None):
        super().__init__()
        taps = torch.as_tensor(taps, dtype=torch.long, device="cpu").reshape(-1, 3)
        self.register_buffer("taps", taps.clone(), persistent=False)
        self.tap_list = tuple(tuple(tap) for tap in taps.tolist())
        self.groups = offset_groups
        self.group_channels = group_channels
        p = taps.shape[0]
        self.offset_dw = SplitDepthwiseConv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.offset_pw = SplitLinear(2 * channels, offset_groups * p * 3)
        nn.init.zeros_(self.offset_pw.weight)
        nn.init.zeros_(self.offset_pw.bias)
        centre = [i for i, tap in enumerate(taps.tolist()) if tap == [0, 0, 0]]
        if len(centre) != 1:
            raise ValueError(f"taps must contain (0, 0, 0) exactly once, got {taps.tolist()}")
        if group_channels is None:
            weight = torch.zeros(p, channels)
            weight[centre[0]] = 2.0
        else:
            weight = torch.zeros(p, channels // group_channels, group_channels, group_channels)
            weight[centre[0]] = 2.0 * torch.eye(group_channels)
        self.weight = nn.Parameter(weight)

    def forward(self, ref: torch.Tensor | None, y: torch.Tensor, shape: Shape, out: torch.Tensor | None = None,
                offsets: tuple[torch.Tensor, torch.Tensor] | None = None, predict: bool = False):
        """``M(y)``, offsets and masks predicted from ``[ref, y]``. The in-place merge's steps (no autograd; through
        this call, so that module hooks such as the FLOP counter's see them as this module's): ``predict`` returns
        ``(offsets, mask)`` (:meth:`offsets_and_mask`); with those as ``offsets`` (``ref`` not read) and ``out``,
        ``out += M(y)`` in place is returned (:meth:`add_to`)."""
        if predict:
            return self.offsets_and_mask(ref, y, shape)
        offsets, mask = self.offsets_and_mask(ref, y, shape) if offsets is None else offsets
        if out is not None:
            return self.add_to(out, y, offsets, mask, shape)
        if self.group_channels is None:
            return ops.deformable_aggregate(y, offsets, mask, self.weight.to(y.dtype), self.taps, shape)
        if torch.is_grad_enabled() and not torch.compiler.is_exporting():
            # The tap-by-tap sum would keep every tap's (B, L, C) sample for the weight gradient (P of them); the
            # backward samples them again instead (one more forward of this sum, bitwise the same values), on the
            # backend in force now (the backward runs outside the model's backend context, maybe on another thread).
            backend = current_backend()

            def grouped(y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                with use_backend(backend):
                    return self._grouped(y, offsets, mask, shape)

            return checkpoint(grouped, y, offsets, mask, use_reentrant=False)
        return self._grouped(y, offsets, mask, shape)

    def offsets_and_mask(self, ref: torch.Tensor, y: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted ``offsets (B, L, Goff, P, 2)`` and ``mask (B, L, Goff, P)`` (for tests of the forms)."""
        b, l, c = y.shape
        # offset_pw(offset_dw([ref, y])) without the (B, L, 2C) concatenation and its conv: the depthwise conv
        # is per channel, so it runs on ref and on y with its two weight halves, and the projection is the sum of
        # its two column blocks applied to them (values as before up to the order of the projection's sum)
        o = None
        for i, part in enumerate((ref, y)):
            half = slice(i * c, (i + 1) * c)
            f = frame_conv(functools.partial(self.offset_dw, channels=half), part, shape)
            f = self.offset_pw(f, cols=half, bias=i == 0)
            o = f if o is None else o.add_(f)
            del f
        o = o.reshape(b, l, self.groups, self.taps.shape[0], 3)
        return o[..., :2].contiguous(), torch.sigmoid(o[..., 2]).contiguous()

    def add_to(self, out: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor,
               shape: Shape, by_frame: bool | None = None) -> torch.Tensor:
        """``out += M(y)`` in place (no autograd), with the offsets and mask :meth:`offsets_and_mask` gave: the
        same values as ``out + forward(ref, y)``, without a ``(B, L, C)`` result beside ``out``. The grouped form on
        the reference backend on a CPU runs the fused C++ kernel where it can (:meth:`_cpu_kernel`); otherwise it
        samples frame by frame (see :meth:`_grouped_acc`) when ``by_frame``; None: on CPU tensors (a GPU would
        launch B x T times as many sampling kernels, not measured here)."""
        if self.group_channels is None:
            return out.add_(ops.deformable_aggregate(y, offsets, mask, self.weight.to(y.dtype), self.taps, shape))
        if self._cpu_kernel(y, out):
            return _cpu_kernels.grouped_deformable_add(out, y, offsets, mask, self.weight, self.taps, shape)
        b, l, c = y.shape
        by_frame = y.device.type == "cpu" if by_frame is None else by_frame
        acc = self._grouped_acc(y, offsets, mask, shape, by_frame=by_frame)  # (G, B*L, O)
        out.view(b, l, acc.shape[0], acc.shape[2]).add_(acc.transpose(0, 1).view(b, l, acc.shape[0], acc.shape[2]))
        return out

    @staticmethod
    def _cpu_kernel(y: torch.Tensor, out: torch.Tensor) -> bool:
        """Whether :meth:`add_to` runs the reference's fused C++ kernel (sampling and mixing of every tap in one
        pass per token, ``reference/_cpu_kernels.py``) instead of a registry call per tap: fp32 CPU tensors with
        contiguous rows, not traced (compile, export), the backend in force resolving to ``reference`` here,
        ``GLSMAMBA_CPU_KERNEL`` not 0 and the kernel built (under 1 a kernel that cannot run raises)."""
        c = y.shape[-1]
        return (y.device.type == "cpu" and y.dtype == out.dtype == torch.float32 and y.shape[0] * y.shape[1] > 0
                and y.stride()[1:] == (c, 1) and out.stride()[1:] == (c, 1)
                and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
                and resolve(current_backend(), y.device) == "reference" and _cpu_kernels.use_kernel(torch.float32))

    def _grouped(self, y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, shape: Shape) -> torch.Tensor:
        """The grouped form tap by tap (see the class docstring); ``(B, L, C)``."""
        b, l, c = y.shape
        return self._grouped_acc(y, offsets, mask, shape).transpose(0, 1).reshape(b, l, c)

    def _grouped_acc(self, y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, shape: Shape,
                     by_frame: bool = False) -> torch.Tensor:
        """:meth:`_grouped` in the layout of its sum, ``(G, B*L, O)`` (group, token, output channel of the group).

        ``by_frame`` (no autograd): each tap is sampled one output frame at a time, from the one frame it reads
        (frame ``f + dt`` of ``y``, or a zero frame past the clip's ends) -- a centre-tap sample never leaves its
        frame, so the values are the same -- and mixed into that frame's rows of the sum: no shifted clip and only a
        frame's ``(H*W, C)`` sample at a time instead of the clip's ``(L, C)``.
        """
        t = shape[0]
        b, l, c = y.shape
        g, cg = c // self.group_channels, self.group_channels
        centre, unit = self.taps.new_zeros(1, 3), y.new_ones(1, c)
        weight = self.weight.to(y.dtype).transpose(2, 3)  # (P, G, I, O)
        acc = y.new_empty(g, b * l, cg) if by_frame else None  # (G, B*L, O)
        for p, (dt, dh, dw) in enumerate(self.tap_list):
            off = offsets[:, :, :, p:p + 1]
            if dh or dw:
                off = off + off.new_tensor([dh, dw])
            if by_frame:
                self._tap_by_frame(acc, y, off, mask[..., p:p + 1], dt, shape, weight[p], first=p == 0)
                continue
            x = y if not dt else _shift_frames(y, dt, t)
            sample = ops.deformable_aggregate(x, off.contiguous(), mask[..., p:p + 1].contiguous(), unit, centre,
                                              shape)
            rows = sample.reshape(b * l, g, cg).transpose(0, 1)  # (G, B*L, I), read in place
            acc = torch.bmm(rows, weight[p]) if acc is None else acc.baddbmm_(rows, weight[p])
            del x, sample, rows  # not alive beside the next tap's
        return acc

    def _tap_by_frame(self, acc: torch.Tensor, y: torch.Tensor, off: torch.Tensor, mask: torch.Tensor, dt: int,
                      shape: Shape, weight: torch.Tensor, first: bool) -> None:
        """One tap of :meth:`_grouped_acc` ``by_frame``: ``acc (G, B*L, O)`` gets (``first``: is set to) the mixed
        samples; ``off (B, L, Goff, 1, 2)`` and ``mask (B, L, Goff, 1)`` the tap's."""
        t, h, w = shape
        b, l, c = y.shape
        hw, g = h * w, acc.shape[0]
        centre, unit = self.taps.new_zeros(1, 3), y.new_ones(1, c)
        zero = None
        for i in range(b):
            for f in range(t):
                src = f + dt
                if 0 <= src < t:
                    frame = y[i:i + 1, src * hw:(src + 1) * hw]
                else:
                    zero = y.new_zeros(1, hw, c) if zero is None else zero
                    frame = zero
                rows = slice(f * hw, (f + 1) * hw)
                sample = ops.deformable_aggregate(frame, off[i:i + 1, rows].contiguous(),
                                                  mask[i:i + 1, rows].contiguous(), unit, centre, (1, h, w))
                x = sample.reshape(hw, g, -1).transpose(0, 1)  # (G, H*W, I)
                out = acc[:, i * l + f * hw:i * l + (f + 1) * hw]
                if first:
                    torch.bmm(x, weight, out=out)
                else:
                    out.baddbmm_(x, weight)
                del sample, x

    def grouped_oracle(self, ref: torch.Tensor, y: torch.Tensor, shape: Shape) -> torch.Tensor:
        """The grouped form's first implementation (all taps in one call over P copies, one einsum): the oracle
        of :meth:`forward` in the tests."""
        b, l, c = y.shape
        p = self.taps.shape[0]
        offsets, mask = self.offsets_and_mask(ref, y, shape)
        samples = self._sample_taps(y, offsets, mask, shape)  # (B, L, P, C)
        g, cg = c // self.group_channels, self.group_channels
        out = torch.einsum("blpgi,pgoi->blgo", samples.reshape(b, l, p, g, cg), self.weight.to(y.dtype))
        return out.reshape(b, l, c)

    def _sample_taps(self, y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, shape: Shape) -> torch.Tensor:
        """Every tap's masked bilinear sample, ``(B, L, P, C)``, in one ``deformable_aggregate`` call."""
        t, h, w = shape
        b, l, c = y.shape
        p, goff = len(self.tap_list), offsets.shape[2]
        frames = y.reshape(b, t, h * w, c)
        shifted = []
        for dt, _, _ in self.tap_list:  # x_dt[t] = y[t + dt], zero where t + dt is outside the clip
            a = abs(dt)
            shifted.append(F.pad(frames, (0, 0, 0, 0, a, a))[:, dt + a:dt + a + t] if dt else frames)
        xs = torch.stack(shifted, dim=1).reshape(b * p, l, c)
        shift = torch.tensor([[dh, dw] for _, dh, dw in self.tap_list], dtype=offsets.dtype, device=offsets.device)
        off = (offsets + shift).permute(0, 3, 1, 2, 4).reshape(b * p, l, goff, 1, 2)
        msk = mask.permute(0, 3, 1, 2).reshape(b * p, l, goff, 1)
        centre = self.taps.new_zeros(1, 3)
        out = ops.deformable_aggregate(xs, off, msk, y.new_ones(1, c), centre, shape)
        return out.reshape(b, p, l, c).transpose(1, 2)


class STMM(nn.Module):
    """Spatial- and temporal-modulated scan merging: ``F = y_u + M_s(y_s) + M_t(y_t)`` (terms present as the
    number of directions allows: 2 -> y_u, 4 -> + M_s(y_s), 6 -> + M_t(y_t)).

    ``group_channels``: ``(spatial, temporal)`` channels per group of the grouped form, or None (depthwise form).
    """

    def __init__(self, channels: int, directions: int, offset_groups: int,
                 group_channels: tuple[int, int] | None = None):
        super().__init__()
        gs, gt = group_channels if group_channels is not None else (None, None)
        self.spatial = Modulator(channels, SPATIAL_TAPS, offset_groups, gs) if directions >= 4 else None
        self.temporal = Modulator(channels, TEMPORAL_TAPS, offset_groups, gt) if directions >= 6 else None

    def forward(self, ys: torch.Tensor, shape: Shape, inplace: bool = False) -> torch.Tensor:
        """``ys (B, G, L, Di)`` = (y_u, y_s, y_t)[:G] -> ``(B, L, Di)``.

        ``inplace`` (no autograd): F is summed into ``ys[:, 0]`` and returned as that view (``ys`` is consumed),
        every modulator's offsets computed first (they read y_u), so that neither a running sum nor a modulator's
        ``(B, L, Di)`` result is allocated beside the scan's sums; the same values in the same order.
        """
        y_u = ys[:, 0]
        mods = [(m, ys[:, i]) for i, m in enumerate((self.spatial, self.temporal), 1) if m is not None]
        if not inplace:
            out = y_u
            for m, y in mods:
                out = out + m(y_u, y, shape)
            return out
        if torch.is_grad_enabled():
            raise RuntimeError("STMM(inplace=True) runs without autograd only (torch.no_grad)")
        offsets = [m(y_u, y, shape, predict=True) for m, y in mods]
        for m, y in mods:
            m(None, y, shape, out=y_u, offsets=offsets.pop(0))  # each pair released once its sum is added
        return y_u


# ----------------------------------------------------------------------------------------------- blocks
class _SSMBlock(nn.Module):
    """Shared body of GSM and LRM::

        h = LN(X) [* channel attention]
        x, z = in_proj(h);  A = SiLU(LN(DWConv(z)));  F = merge(S6 over the orders (SiLU(x)))
        X = X + out_proj(LN(F) * A);  X = X + FFN(LN(X))   (the FFN only when ffn_ratio > 0)
    """

    def __init__(self, cfg: GLSMambaConfig, num_dirs: int, channel_attention: bool, drop_path: float):
        super().__init__()
        self.num_dirs = num_dirs
        d, di = cfg.dim, cfg.d_inner
        self.norm1 = nn.LayerNorm(d)
        self.channel_attn = (ChannelAttention(cfg.num_frames, d, cfg.ca_reduction, cfg.ca_form)
                             if channel_attention else None)
        self.in_proj = SplitLinear(d, 2 * di, bias=False)
        self.gate = GateStream(di)
        self.ssm = SpaceTimeS6(di, cfg.d_state, cfg.dt_rank_, self.num_dirs, cfg.ssm_sharing)
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d, bias=False)
        hidden = int(round(d * cfg.ffn_ratio))
        self.norm2 = nn.LayerNorm(d) if hidden else None
        self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) if hidden else None
        self.drop_path = DropPath(drop_path)

    def scan(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:  # pragma: no cover - abstract
        """``x (B, L, Di)`` -> the per-group scan sums ``(B, G, L, Di)``."""
        raise NotImplementedError

    def merge_scans(self, ys: torch.Tensor, shape: Shape) -> torch.Tensor:
        """``ys (B, G, L, Di)`` -> ``F (B, L, Di)``: the group sums merged (the plain sum: group 0 holds them all)."""
        return ys[:, 0]

    def forward(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        """``x (B, L, D)`` -> ``(B, L, D)`` for the clip ``shape = (T, H, W)``.

        Every ``(B, L, Di)`` intermediate is dropped as soon as it is used, so the scan and the merge (the peak of
        the no-grad forward) hold only the block input, ``h`` (``D`` channels) and the group sums: ``in_proj`` runs
        as its x and z halves (two separate outputs, not views of one ``(B, L, 2 Di)``), the scan's input is
        released before the merge, the merge sums into the scan's output in place (STMM) and ``ys`` is released
        once ``out_norm`` has read it, and z and the gate are computed from ``h`` after that. The values are the
        same (``in_proj``'s two row blocks of its one weight).
        """
        h = self.norm1(x)
        if self.channel_attn is not None:
            h = self.channel_attn(h, shape)
        di = self.ssm.d_inner
        xs = F.silu(self.in_proj(h, rows=slice(0, di)), inplace=not torch.is_grad_enabled())
        ys = self.scan(xs, shape)
        del xs
        f = self.out_norm(self.merge_scans(ys, shape))  # the merge may be a view of ys (its sums in place)
        del ys
        gate = self.gate(self.in_proj(h, rows=slice(di, None)), shape)
        del h
        x = x + self.drop_path(self.out_proj(f * gate))
        if self.ffn is None:
            return x
        return x + self.drop_path(self.ffn(self.norm2(x)))


class GSMBlock(_SSMBlock):
    """Global spatiotemporal Mamba block: channel attention, STS6D scan (2/4/6 directions), STMM or sum merge."""

    def __init__(self, cfg: GLSMambaConfig, drop_path: float = 0.0):
        super().__init__(cfg, cfg.directions, channel_attention=True, drop_path=drop_path)
        self.scan_names = global_scan_names(cfg.directions)
        use_stmm = cfg.merge == "stmm" and cfg.directions > 2
        self.scan_groups = global_scan_groups(cfg.directions, by_type=use_stmm)
        group_channels = cfg.stmm_channels_per_group if cfg.stmm_form == "grouped" else None
        self.merge = STMM(cfg.d_inner, cfg.directions, cfg.stmm_groups, group_channels) if use_stmm else None

    def scan(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        orders = _global_orders(tuple(shape), self.scan_names, _order_device(x.device))
        return self.ssm(x, orders, self.scan_groups)

    def merge_scans(self, ys: torch.Tensor, shape: Shape) -> torch.Tensor:
        """As :meth:`_SSMBlock.merge_scans`; without autograd STMM sums into ``ys[:, 0]`` in place."""
        if self.merge is None:
            return ys[:, 0]
        return self.merge(ys, shape, inplace=not torch.is_grad_enabled() and not torch.compiler.is_compiling())


class LRMBlock(_SSMBlock):
    """Local refinement Mamba block: no channel attention, WSTS windowed orders (forward + reversed, state reset at
    every window start), plain sum merge."""

    def __init__(self, cfg: GLSMambaConfig, drop_path: float = 0.0):
        super().__init__(cfg, 2, channel_attention=False, drop_path=drop_path)
        self.window = tuple(cfg.window)

    def scan(self, x: torch.Tensor, shape: Shape) -> torch.Tensor:
        orders, reset = window_orders(tuple(shape), self.window, _order_device(x.device))  # cached
        return self.ssm(x, orders, (0, 0), reset=reset)


class HeatmapHead(nn.Module):
    """Key-frame head: ``(B, H, W, D)`` tokens -> ``(B, J, H, W)`` heatmaps at the tokens' resolution.

    ``kind="conv"``: LN -> 3x3 conv D -> D -> BN -> ReLU -> 1x1 conv to J; ``kind="linear"``: LN -> 1x1 conv to J.
    """

    def __init__(self, dim: int, num_joints: int, kind: str = "conv"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        if kind == "conv":
            self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(dim)
            self.act = nn.ReLU(inplace=True)
        else:
            self.conv = self.bn = self.act = None
        self.final = nn.Conv2d(dim, num_joints, 1)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        if self.conv is not None:
            x = self.act(self.bn(self.conv(x)))
        return self.final(x)
