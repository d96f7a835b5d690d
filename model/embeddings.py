"""Token embedding: per-frame features -> ``(B, L, D)`` tokens with space and time embeddings."""

from __future__ import annotations

import torch
from torch import nn


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE layout), ``(h * w, dim)`` in raster order.

    The first ``dim / 2`` channels encode the row ``i``, the last ``dim / 2`` the column ``j``; inside each half,
    ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000 ** (-k / (dim / 4))``, ``k = 0 .. dim/4 - 1``.

    Args:
        h, w: grid size (any positive ints).
        dim: embedding width, a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter))
    rows = torch.arange(h, dtype=torch.float64, device=device)[:, None] * omega  # (h, dim/4)
    cols = torch.arange(w, dtype=torch.float64, device=device)[:, None] * omega  # (w, dim/4)
    emb_h = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    emb_w = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([emb_h, emb_w], dim=-1).reshape(h * w, dim).to(dtype)


class SpaceTimeEmbedding(nn.Module):
    """``(B*T, C_enc, H, W)`` features -> ``(B, L, D)`` tokens, ``L = T*H*W`` in natural order.

    ``X_t = W_p F_t + E_spa + E_tem[t]``: linear projection, fixed 2-D sine-cosine spatial embedding (any H, W),
    learnable temporal embedding (one D-vector per frame).
    """

    def __init__(self, in_channels: int, dim: int, num_frames: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(in_channels, dim)
        self.temporal = nn.Parameter(torch.zeros(num_frames, dim))
        nn.init.trunc_normal_(self.temporal, std=0.02)

    def forward(self, feats: torch.Tensor, batch: int) -> torch.Tensor:
        bt, c, h, w = feats.shape
        # an empty batch holds no frames to count: it has the model's T (GLSMamba checks T before this)
        t = bt // batch if batch else self.temporal.shape[0]
        x = self.proj(feats.permute(0, 2, 3, 1))  # (B*T, H, W, D)
        x = x.reshape(batch, t, h * w, self.dim)
        spa = sincos_2d(h, w, self.dim, device=feats.device, dtype=x.dtype)
        x = x + spa[None, None] + self.temporal[:t].to(x.dtype)[None, :, None, :]
        return x.reshape(batch, t * h * w, self.dim)
