"""Per-frame visual encoders producing features at 1/``feature_stride`` (4 or 16) of the input resolution.

* :class:`ViTPoseEncoder`: the ViTPose layout (plain ViT, patch 16, absolute position embedding), at stride 4
  followed by ViTPose's classic two 4x4 stride-2 deconvolutions (each + BN + ReLU) taking the 1/16 token map to 1/4;
  at stride 16 (GLSMamba-BLR) the ViT's tokens themselves. Submodule names follow ViTPose/mmpose
  (``vit.patch_embed.proj``, ``vit.blocks.<i>.attn.qkv``, ``vit.last_norm``, ``deconv.<0,1,3,4>``) so ViTPose
  checkpoints map by prefix (see :mod:`model.checkpoint`).
* :class:`ConvEncoder`: two stride-2 3x3 convolutions, for the ``tiny`` preset; at stride 16 followed by a 4x4
  average pool (the same trainable layers, features at 1/16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GLSMambaConfig


class PatchEmbed(nn.Module):
    """ViTPose patch embedding: a 16x16 stride-16 conv with padding 2 (ViTPose's ``4 + 2 * (ratio // 2 - 1)``
    for ratio 1), giving an (H/16, W/16) grid for H, W multiples of 16."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Plain ViT in the ViTPose layout: ``(N, 3, H, W) -> (N, C, H/16, W/16)``.

    ``pos_embed`` is ``(1, 1 + gh * gw, C)`` for the nominal grid of ``image_size``; ViTPose adds the class slot to
    every token (``x + pos[:, 1:] + pos[:, :1]``). Other input sizes interpolate the grid part bicubically.
    """

    def __init__(self, image_size: tuple[int, int], embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 qkv_bias: bool):
        super().__init__()
        self.grid = (image_size[0] // 16, image_size[1] // 16)
        self.patch_embed = PatchEmbed(3, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], embed_dim))
        self.blocks = nn.ModuleList(ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.last_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """``(1, gh * gw, C)``: the grid part (+ class slot) resized to a ``gh x gw`` grid when needed."""
        pos = self.pos_embed[:, 1:]
        if (gh, gw) != self.grid:
            c = pos.shape[-1]
            pos = pos.reshape(1, self.grid[0], self.grid[1], c).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(gh, gw), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1).reshape(1, gh * gw, c)
        return pos + self.pos_embed[:, :1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        n, c, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2) + self.position_embedding(gh, gw)
        for blk in self.blocks:
            x = blk(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(n, c, gh, gw)


def deconv_layers(in_channels: int, channels: int) -> nn.Sequential:
    """ViTPose's decoder minus its final 1x1 conv: 2 x (ConvTranspose 4x4 stride 2, BN, ReLU), 1/16 -> 1/4."""
    layers: list[nn.Module] = []
    for i in range(2):
        layers += [
            nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
    seq = nn.Sequential(*layers)
    for m in seq.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=0.001)
    return seq


class ViTPoseEncoder(nn.Module):
    """ViTPose backbone + its two deconvolutions: ``(N, 3, H, W) -> (N, deconv_channels, H/4, W/4)``; at
    ``feature_stride`` 16 the backbone alone (``deconv`` is None): ``(N, vit_embed_dim, H/16, W/16)``."""

    def __init__(self, cfg: GLSMambaConfig):
        super().__init__()
        self.vit = ViT(cfg.image_size, cfg.vit_embed_dim, cfg.vit_depth, cfg.vit_num_heads, cfg.vit_mlp_ratio,
                       cfg.vit_qkv_bias)
        self.deconv = deconv_layers(cfg.vit_embed_dim, cfg.deconv_channels) if cfg.feature_stride == 4 else None
        self.out_channels = cfg.encoder_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vit(x)
        return x if self.deconv is None else self.deconv(x)


class ConvEncoder(nn.Module):
    """Small conv stem for ``tiny``: 2 x (3x3 stride-2 conv, BN, ReLU): ``(N, 3, H, W) -> (N, C, H/4, W/4)``; at
    ``feature_stride`` 16 a 4x4 average pool follows (``(N, C, H/16, W/16)``, no extra parameters)."""

    def __init__(self, cfg: GLSMambaConfig):
        super().__init__()
        c0, c1 = cfg.conv_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c0, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
            nn.Conv2d(c0, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AvgPool2d(cfg.feature_stride // 4) if cfg.feature_stride > 4 else None
        self.out_channels = c1
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return x if self.pool is None else self.pool(x)


def build_encoder(cfg: GLSMambaConfig) -> nn.Module:
    return ViTPoseEncoder(cfg) if cfg.encoder == "vit" else ConvEncoder(cfg)
