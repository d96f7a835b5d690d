"""The GLSMamba network: ``(B, T, 3, H, W)`` frames -> ``(B, J, H/4, W/4)`` key-frame heatmaps."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backend import check_backend_name, use_backend
from .blocks import GSMBlock, HeatmapHead, LRMBlock
from .config import GLSMambaConfig, get_config
from .embeddings import SpaceTimeEmbedding
from .encoder import build_encoder


class GLSMamba(nn.Module):
    """GLSMamba (Feng et al., ICCV 2025) for video human pose estimation.

    Pipeline: per-frame encoder (frozen ViTPose + 2 deconvolutions, or the small conv encoder) at 1/4 resolution
    (``feature_stride`` 16, GLSMamba-BLR: the ViT's 1/16 tokens) -> projection to D + sine-cosine spatial and
    learnable temporal embeddings -> ``num_gsm`` GSM blocks -> ``num_lrm`` LRM blocks -> heatmap head on the key
    (centre) frame, its heatmaps bilinearly upsampled to 1/4 of the input when the trunk ran at 1/16.

    Args:
        config: a :class:`GLSMambaConfig` or a preset name (``"tiny"``, ``"base"``, ``"base-lr"``, ``"huge"``).
        **overrides: config fields to override.

    Frames are float tensors normalised as ViTPose expects (ImageNet mean/std), ``H`` and ``W`` multiples of
    ``config.input_multiple`` (16 for the ViT, ``feature_stride`` for the conv encoder); any such size works.

    Backend: ops run on the backend resolved at each call. ``net.backend`` is ``config.backend`` initially;
    ``"auto"`` follows the registry (``model.use_backend`` contexts, the process-wide ``model.set_backend``,
    ``GLSMAMBA_BACKEND``), ``"reference"`` / ``"triton"`` pin this model (at any time: ``net.backend = "triton"``
    or ``net.pin_backend("triton")``).

    Example:
        >>> net = GLSMamba("tiny")
        >>> net(torch.randn(2, 5, 3, 64, 48)).shape
        torch.Size([2, 15, 16, 12])
    """

    def __init__(self, config: GLSMambaConfig | str = "base", **overrides: Any):
        super().__init__()
        if isinstance(config, str):
            config = get_config(config, **overrides)
        elif isinstance(config, GLSMambaConfig):
            config = config.replace(**overrides) if overrides else config
        else:
            raise TypeError(f"config must be a GLSMambaConfig or a preset name, got {type(config).__name__}")
        self.config = config
        self._backend = config.backend
        self.encoder = build_encoder(config)
        self.embed = SpaceTimeEmbedding(config.encoder_channels, config.dim, config.num_frames)
        n = config.num_gsm + config.num_lrm
        rates = [config.drop_path * i / max(1, n - 1) for i in range(n)]
        self.gsm = nn.ModuleList(GSMBlock(config, rates[i]) for i in range(config.num_gsm))
        self.lrm = nn.ModuleList(LRMBlock(config, rates[config.num_gsm + i]) for i in range(config.num_lrm))
        self.head = HeatmapHead(config.dim, config.num_joints, config.head)
        if config.freeze_encoder:
            self.freeze_encoder()

    # ---- backend
    @property
    def backend(self) -> str:
        """This model's backend: ``"auto"`` (follow the registry) or a pinned ``"reference"`` / ``"triton"``."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = check_backend_name(name)

    def pin_backend(self, name: str) -> GLSMamba:
        """Pin (or with ``"auto"`` unpin) this model's backend; returns the model.

        Only this model: the process-wide switch is :func:`glsmamba.model.set_backend`."""
        self.backend = name
        return self

    # ---- freezing
    def freeze_encoder(self, frozen: bool = True) -> None:
        """(Un)freeze the encoder's parameters; a frozen encoder stays in eval mode (BN statistics fixed)."""
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True) -> GLSMamba:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    # ---- forward
    def _check_frames(self, frames: Any, clip: bool = True) -> None:
        """``frames`` must be a float ``(B, T, 3, H, W)`` clip (``clip``) or ``(N, 3, H, W)`` frames, with ``T`` the
        model's ``num_frames`` and ``H, W`` multiples of the encoder's ``input_multiple``."""
        cfg = self.config
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
        layout = "(B, T, 3, H, W)" if clip else "(N, 3, H, W)"
        if frames.dim() != len(layout.split(",")) or frames.shape[-3] != 3:
            raise ValueError(f"frames must be {layout}, got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise TypeError(f"frames must be a floating tensor, got dtype {frames.dtype}")
        if clip and frames.shape[1] != cfg.num_frames:
            raise ValueError(f"frames has T={frames.shape[1]} frames (shape {tuple(frames.shape)}), the model expects "
                             f"num_frames={cfg.num_frames}")
        h, w = frames.shape[-2:]
        m = cfg.input_multiple
        if h % m or w % m or h == 0 or w == 0:
            raise ValueError(f"frames H, W must be positive multiples of {m} for encoder={cfg.encoder!r}, "
                             f"got shape {tuple(frames.shape)}")

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """The per-frame encoder alone: ``frames (N, 3, H, W)`` -> features ``(N, C_enc, h, w)``.

        Every frame is encoded on its own, so features can be cached per frame crop and reused by every clip that
        holds the crop (:class:`glsmamba.vhpe.streaming.StreamingPredictor`); :meth:`forward_features` runs the
        rest. Gradients flow only when the encoder is trainable.
        """
        self._check_frames(frames, clip=False)
        grad = torch.is_grad_enabled() and not self.encoder_frozen
        with torch.set_grad_enabled(grad):
            return self.encoder(frames)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Everything after the encoder: ``feats (B, T, C_enc, h, w)`` (:meth:`encode` of each frame) -> key-frame
        heatmaps. ``forward(frames)`` is exactly ``forward_features(encode(frames.flatten(0, 1)).unflatten(0,
        (B, T)))``."""
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        c = self.config.encoder_channels
        if feats.dim() != 5 or feats.shape[1] != self.config.num_frames or feats.shape[2] != c:
            raise ValueError(f"feats must be (B, T={self.config.num_frames}, C={c}, h, w) encoder features, got "
                             f"shape {tuple(feats.shape)}")
        ctx = use_backend(self._backend) if self._backend != "auto" else contextlib.nullcontext()
        b, t, _, h, w = feats.shape
        with ctx:
            x = self.embed(feats.flatten(0, 1), b)
            del feats  # the caller's temporary (forward's encoder output) is not kept through the blocks
            for blk in self.blocks:  # each block's input is released when the next block starts
                x = blk(x, (t, h, w))
        key = x.reshape(x.shape[0], t, h, w, x.shape[-1])[:, self.config.key_frame]
        heatmaps = self.head(key)
        up = self.config.feature_stride // 4
        if up != 1:  # trunk at 1/16: heatmaps at 1/4 of the input as in base (bilinear, no parameters)
            heatmaps = F.interpolate(heatmaps, size=(h * up, w * up), mode="bilinear", align_corners=False)
        return heatmaps

    def _trunk(self, feats: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        b, t = feats.shape[:2]
        shape = (t, feats.shape[-2], feats.shape[-1])
        x = self.embed(feats.flatten(0, 1), b)
        for blk in self.blocks:
            x = blk(x, shape)
        return x, shape

    @property
    def blocks(self) -> tuple[nn.Module, ...]:
        """The token-mixing blocks in the order they run: the GSM blocks, then the LRM blocks."""
        return (*self.gsm, *self.lrm)

    def tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Trunk output ``(B, L, D)`` (all frames) and the clip shape ``(T, H/s, W/s)``, s = ``feature_stride``."""
        self._check_frames(frames)
        return self._trunk(self.encode(frames.flatten(0, 1)).unflatten(0, frames.shape[:2]))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames (B, T, 3, H, W)`` -> key-frame heatmaps ``(B, J, H/4, W/4)``."""
        self._check_frames(frames)
        return self.forward_features(self.encode(frames.flatten(0, 1)).unflatten(0, frames.shape[:2]))

    # ---- parameters / checkpoints
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Weights + config in one file (see :func:`model.checkpoint.save`)."""
        from .checkpoint import save

        save(self, path, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> GLSMamba:
        """Build the model from a file written by :meth:`save` (see :func:`model.checkpoint.load`)."""
        from .checkpoint import load

        return load(path, **kwargs)

    def load_vitpose(self, path: str | os.PathLike, **kwargs: Any) -> dict[str, list[str]]:
        """Load a ViTPose backbone (+ deconvolutions) from a file (see :func:`model.checkpoint.load_vitpose`)."""
        from .checkpoint import load_vitpose

        return load_vitpose(self, path, **kwargs)
