"""Baselines that are not part of the project's ops: full attention (op and network) and mambapy's scan.

- :func:`attention`: full softmax attention over all L tokens with PyTorch SDPA. ``impl="sdpa"`` lets PyTorch
  pick its kernel (flash / memory-efficient: O(L) memory, O(L^2) time); ``impl="sdpa_math"`` forces the math
  kernel, which materialises the (L, L) score matrix like the paper's attention baseline (TransHR, OOM at
  15,360 tokens): O(L^2) time and memory.
- :class:`AttentionNet`: the quadratic network the paper compares with, at a given width: a stem to the
  token grid of GLSMamba's 1/4 features (a 4x4 patchify conv, or, as the paper's TransLR/TransNR/TransHR,
  the GLSMamba preset's own encoder and a linear projection to the width), ``depth`` pre-norm transformer
  blocks over all T*H*W tokens of the clip, and a linear head to joint heatmaps on the centre frame.
- :func:`mambapy_selective_scan`: the selective-scan contract (channel-first) computed with ``mambapy``'s
  Blelloch parallel scan (``mambapy.pscan.pscan``), fp32, materialising (B, L, D, N) tensors.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLS = ("sdpa", "sdpa_math")


def _sdpa_context(impl: str):
    if impl == "sdpa":
        return contextlib.nullcontext()
    if impl == "sdpa_math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {impl!r}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "sdpa") -> torch.Tensor:
    """Full (non-causal) softmax attention.

    Args:
        q, k, v: (Bsz, heads, L, head_dim).
        impl: ``"sdpa"`` (PyTorch's choice of kernel) or ``"sdpa_math"`` (materialised scores).

    Returns:
        (Bsz, heads, L, head_dim) in the input dtype.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must be equal-shaped (Bsz, heads, L, head_dim), got {q.shape}, {k.shape}, {v.shape}")
    with _sdpa_context(impl):
        return F.scaled_dot_product_attention(q, k, v)


def attention_heads(width: int, head_dim: int = 64) -> int:
    """Number of heads for ``width`` channels: ``width // head_dim`` (at least 1; must divide ``width``)."""
    heads = max(1, width // head_dim)
    while width % heads:
        heads -= 1
    return heads


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, impl: str) -> None:
        super().__init__()
        self.heads = heads
        self.impl = impl
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, c = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, l, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(qkv[0], qkv[1], qkv[2], impl=self.impl)
        x = x + self.proj(a.transpose(1, 2).reshape(b, l, c))
        return x + self.mlp(self.norm2(x))


class AttentionNet(nn.Module):
    """Full-attention pose network over all clip tokens (the quadratic baseline).

    Args:
        width: token channels (use the GLSMamba width for a same-width comparison).
        depth: transformer blocks (GLSMamba has 4 GSM + 2 LRM = 6 token-mixing blocks).
        joints: heatmap channels.
        impl: attention kernel, see :func:`attention`.
        encoder: None (a 4x4 patchify stem), or a module ``(N, 3, 4H, 4W) -> (N, encoder_channels, H, W)`` (e.g.
            the GLSMamba preset's :func:`glsmamba.model.encoder.build_encoder`) followed by a linear projection to
            ``width``: the paper's attention baselines (the same frozen ViT-B encoder as GLSMamba).
        encoder_channels: the encoder's output channels (required with ``encoder``).
        freeze_encoder: the encoder's parameters get no gradient and it runs without autograd (as GLSMamba's
            frozen encoder does).

    Input (Bsz, T, 3, 4H, 4W) images; output (Bsz, joints, H, W) heatmaps of the centre frame.
    """

    def __init__(self, width: int, depth: int = 6, joints: int = 17, mlp_ratio: float = 4.0, impl: str = "sdpa",
                 encoder: nn.Module | None = None, encoder_channels: int | None = None, freeze_encoder: bool = True):
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        if (encoder is None) != (encoder_channels is None):
            raise ValueError(f"encoder and encoder_channels go together, got encoder={type(encoder).__name__}, "
                             f"encoder_channels={encoder_channels!r}")
        self.encoder = encoder
        self.freeze_encoder = bool(freeze_encoder) and encoder is not None
        if encoder is None:
            self.stem = nn.Conv2d(3, width, kernel_size=4, stride=4)
        else:
            self.stem = nn.Conv2d(int(encoder_channels), width, kernel_size=1)
            if self.freeze_encoder:
                encoder.requires_grad_(False)
        heads = attention_heads(width)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, impl) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, joints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"x must be (Bsz, T, 3, height, width) images, got {tuple(x.shape)}")
        b, t = x.shape[:2]
        f = x.flatten(0, 1)
        if self.encoder is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
                f = self.encoder(f)
        f = self.stem(f)  # (Bsz*T, C, H, W)
        c, h, w = f.shape[1:]
        tokens = f.view(b, t, c, h * w).permute(0, 1, 3, 2).reshape(b, t * h * w, c)  # natural (t, h, w) order
        for blk in self.blocks:
            tokens = blk(tokens)
        centre = self.norm(tokens.view(b, t, h * w, c)[:, t // 2])
        return self.head(centre).transpose(1, 2).reshape(b, -1, h, w)


def mambapy_available() -> str | None:
    """``None`` if ``mambapy`` imports, else the reason."""
    try:
        import mambapy.pscan  # noqa: F401
    except Exception as e:
        return f"mambapy is not installed ({type(e).__name__}: {e}); pip install --no-deps mambapy"
    return None


def mambapy_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor:
    """The ``selective_scan`` contract via ``mambapy.pscan.pscan`` (fp32; groups G=1 only).

    Args:
        u, delta, z: (Bsz, D, L); A: (D, N); B, C: (Bsz, N, L); D, delta_bias: (D,).

    Returns:
        (Bsz, D, L) in u's dtype.
    """
    from mambapy.pscan import pscan

    if return_last_state:
        raise ValueError("return_last_state is not supported by the mambapy baseline")
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError(
            f"B and C must be (Bsz, N, L) for the mambapy baseline, got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    x = u.float().transpose(1, 2)  # (Bsz, L, D)
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt, threshold=20.0)
    dt = dt.transpose(1, 2)  # (Bsz, L, D)
    dA = torch.exp(dt.unsqueeze(-1) * A.float())  # (Bsz, L, D, N)
    bx = (dt * x).unsqueeze(-1) * B.float().transpose(1, 2).unsqueeze(2)  # (Bsz, L, D, N)
    hs = pscan(dA, bx)  # (Bsz, L, D, N)
    y = (hs @ C.float().transpose(1, 2).unsqueeze(-1)).squeeze(-1)  # (Bsz, L, D)
    if D is not None:
        y = y + D.float() * x
    y = y.transpose(1, 2)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def attention_bytes_materialised(bsz: int, heads: int, tokens: int, elem: int, mode: str) -> float:
    """Rough peak bytes of the math attention kernel: the (L, L) scores and probabilities (x2 with backward)."""
    scores = float(bsz) * heads * tokens * tokens * max(elem, 4)
    return scores * (2 if mode == "fwd" else 4)
