"""``GLSMambaConfig``: every size and switch of the network, with the named presets.

The paper (arXiv 2510.11017, see ``docs/paper.md``) fixes the pipeline (frozen ViTPose encoder + 4x deconvolution,
4 GSM blocks then 2 LRM blocks, 5-frame clips with the centre frame as key frame, features at 1/4 of 256 x 192,
~9.8M trainable parameters for the B variant) but leaves most sizes open (docs/paper.md section 6). The decisions taken
here, and why:

* **Trunk width** ``dim`` (D) = 256 for ``base``/``huge``: the width of ViTPose's deconvolution output. With
  ``expand`` = 2, ``ffn_ratio`` = 4, ``ca_reduction`` = 8 and 4 + 2 blocks, ``base`` has 9,019,343 trainable
  parameters (paper: 9.8M, -8%; pinned by ``tests/test_model.py``). The ablations keep the paper's pattern:
  2 directions 8.17M, 6 directions with ``merge="sum"`` 8.32M (paper 9.1M for both), 4 directions 8.75M (9.4M).
* **S6**: standard Mamba-1 (input-dependent delta, B, C; ``A = -exp(A_log)``; ``D`` skip; Euler-discretised B;
  softplus on delta), ``d_state`` (N) = 16, ``expand`` = 2, ``dt_rank`` = ceil(D / 16).
* **Parameter sharing across directions** (``share_ssm_proj``): the paper's ablation counts (2, 4 and 6 directions
  without STMM cost the same 9.1M) say the extra directions add ~0 parameters. So by default one ``x_proj`` /
  ``dt_proj`` pair produces a single (delta, B, C) in natural token order, shared by every direction (projections
  commute with permutations), and each direction has only tiny weights of its own: ``A_log`` (K, Di, N),
  ``D`` (K, Di) and the delta bias (K, Di). ``share_ssm_proj=False`` gives VMamba-style per-direction projections.
* **Scan orders**: the six STS6D orders of ``reference.space_time.STS6D`` (unified / spatial / temporal, each forward
  and reversed); ``directions`` = 2 keeps unified only, 4 adds spatial, 6 adds temporal (the paper's ablation).
  The forward/backward pair of one type is summed into one stream (y_u, y_s, y_t) inside the fused op.
* **STMM** (``merge="stmm"``): ``F = y_u + M_s(y_s) + M_t(y_t)``. ``M_s`` is ``deformable_aggregate`` with
  ``SPATIAL_TAPS`` (3x3 at dt = 0) on y_s per frame, ``M_t`` is ``deformable_aggregate`` with ``TEMPORAL_TAPS``
  (dt in -1, 0, 1 at the same pixel) on y_t. Their offsets and masks (``stmm_groups`` offset groups) come from
  ``[y_u, y_s]`` / ``[y_u, y_t]`` through a per-frame depthwise 3x3 conv and a pointwise projection (zero-initialised,
  so offsets start at 0 and masks at 0.5); the depthwise tap weights start as 2 at the centre tap and 0 elsewhere,
  so at initialisation STMM equals the plain sum. ``merge="sum"`` is the ablation ``F = y_u + y_s + y_t``.
* **Gate stream** (``docs/paper.md`` section 1, source PN): the gate, not the scan branch, carries the depthwise conv:
  ``A = SiLU(LN(DWConv3x3(z)))`` per frame, with ``x, z = in_proj(LN(X))``; the scan branch is ``SiLU(x)``.
  Block: ``X <- X + out_proj(LN(F) * A)``, then ``X <- X + FFN(LN(X))`` (pre-norm residuals; FFN = Linear, GELU,
  Linear with ``ffn_ratio`` = 4).
* **Channel attention** (GSM only): per-frame global average pool of ``LN(X)``, the T frame vectors concatenated
  (T*D), an MLP (reduction ``ca_reduction`` = 8, ReLU) and a sigmoid give per-frame channel weights that scale the
  block input (applied in every GSM block). It ties a model to its ``num_frames``.
* **LRM**: the same block without channel attention, scanning the WSTS windowed orders (``window`` = 8 x 6 x T tubes,
  forward + reversed, state reset at each window start, border windows smaller, no padding) with a plain sum merge.
* **Encoder**: ``"vit"`` = ViTPose layout (patch 16 with ViTPose's padding 2, absolute position embedding with a
  class slot added to every token, pre-norm blocks, ``last_norm``) + ViTPose's two deconvolutions (4x4, stride 2,
  BN, ReLU) to 1/4 resolution, frozen by default (``freeze_encoder``): the deconvolutions are the frozen ViTPose head's
  (their weights load with the backbone), so the trainable part is projection + trunk + head. ``"conv"`` = a small
  conv stem (two stride-2 3x3 convs) for ``tiny``; trained from scratch, never frozen by default.
* **Embeddings**: linear projection to D, fixed 2-D sine-cosine spatial embedding (MAE layout: half the channels
  encode the row, half the column), learnable temporal embedding (T, D).
* **Head**: on the key (centre) frame only: LN, 3x3 conv D -> D, BN, ReLU, 1x1 conv to J heatmaps at 1/4 input
  resolution. J = ``num_joints`` (15 PoseTrack by default, 17 COCO).
* **Backend** (``backend``): ``"auto"`` (default) lets the registry decide per call (``model.set_backend``,
  ``model.use_backend``, ``GLSMAMBA_BACKEND``); ``"reference"`` / ``"triton"`` pin this model's op calls.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ENCODERS = ("vit", "conv")
MERGES = ("stmm", "sum")
DIRECTIONS = (2, 4, 6)
BACKEND_CHOICES = ("auto", "reference", "triton")


@dataclass(frozen=True)
class GLSMambaConfig:
    """Every size and switch of a GLSMamba network (see the module docstring for the decisions).

    Build a preset with :func:`get_config` (``get_config("base", num_joints=17)``) or :meth:`replace`.
    """

    name: str = "custom"
    # clip and output
    num_frames: int = 5
    image_size: tuple[int, int] = (256, 192)
    num_joints: int = 15
    # encoder
    encoder: str = "vit"
    vit_embed_dim: int = 768
    vit_depth: int = 12
    vit_num_heads: int = 12
    vit_mlp_ratio: float = 4.0
    vit_qkv_bias: bool = True
    deconv_channels: int = 256
    conv_channels: tuple[int, int] = (16, 32)
    freeze_encoder: bool = True
    # trunk
    dim: int = 256
    d_state: int = 16
    expand: int = 2
    dt_rank: int | None = None
    ffn_ratio: float = 4.0
    num_gsm: int = 4
    num_lrm: int = 2
    directions: int = 6
    merge: str = "stmm"
    share_ssm_proj: bool = True
    stmm_groups: int = 4
    ca_reduction: int = 8
    window: tuple[int, int] = (8, 6)
    drop_path: float = 0.0
    # runtime
    backend: str = "auto"

    def __post_init__(self) -> None:
        # normalise sequences given as lists (from JSON) to tuples, then validate.
        for name in ("image_size", "conv_channels", "window"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    # ---- derived sizes
    @property
    def d_inner(self) -> int:
        """Channels of the scan branch: ``expand * dim``."""
        return self.expand * self.dim

    @property
    def dt_rank_(self) -> int:
        """The resolved delta rank (``ceil(dim / 16)`` when ``dt_rank`` is None)."""
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.dim / 16)

    @property
    def encoder_channels(self) -> int:
        """Channels of the encoder's 1/4-resolution feature map."""
        return self.deconv_channels if self.encoder == "vit" else self.conv_channels[-1]

    @property
    def input_multiple(self) -> int:
        """Input H and W must be multiples of this (16 for the ViT, 4 for the conv encoder)."""
        return 16 if self.encoder == "vit" else 4

    @property
    def key_frame(self) -> int:
        """Index of the key (centre) frame."""
        return self.num_frames // 2

    # ---- validation / (de)serialisation
    def validate(self) -> None:
        def pos_int(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

        def nonneg_int(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")

        for name in ("num_frames", "num_joints", "vit_embed_dim", "vit_depth", "vit_num_heads", "deconv_channels",
                     "dim", "d_state", "expand", "stmm_groups", "ca_reduction"):
            pos_int(name)
        nonneg_int("num_gsm")
        nonneg_int("num_lrm")
        if self.dt_rank is not None:
            pos_int("dt_rank")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {DIRECTIONS}, got {self.directions!r}")
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {self.backend!r}")
        for name, n in (("image_size", 2), ("conv_channels", 2), ("window", 2)):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) == n and all(isinstance(i, int) and i >= 1 for i in v)):
                raise ValueError(f"{name} must be a tuple of {n} positive ints, got {v!r}")
        if any(s % self.input_multiple for s in self.image_size):
            raise ValueError(f"image_size must be multiples of {self.input_multiple} for encoder={self.encoder!r}, "
                             f"got {self.image_size}")
        if self.dim % 4:
            raise ValueError(f"dim must be a multiple of 4 (2-D sine-cosine embedding), got {self.dim}")
        if self.vit_embed_dim % self.vit_num_heads:
            raise ValueError(f"vit_embed_dim ({self.vit_embed_dim}) must be divisible by vit_num_heads "
                             f"({self.vit_num_heads})")
        if self.d_inner % self.stmm_groups:
            raise ValueError(f"stmm_groups ({self.stmm_groups}) must divide d_inner = expand * dim ({self.d_inner})")
        if not (self.vit_mlp_ratio > 0 and self.ffn_ratio > 0):
            raise ValueError(f"vit_mlp_ratio and ffn_ratio must be > 0, got {self.vit_mlp_ratio}, {self.ffn_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if (self.num_frames * self.dim) // self.ca_reduction < 1:
            raise ValueError(f"ca_reduction ({self.ca_reduction}) too large for num_frames * dim "
                             f"({self.num_frames * self.dim})")

    def replace(self, **overrides: Any) -> GLSMambaConfig:
        """A copy with ``overrides`` applied (unknown field names raise TypeError)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown GLSMambaConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GLSMambaConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise TypeError (naming them)."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown GLSMambaConfig field(s): {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def parse_overrides(cls, items: Iterable[str]) -> dict[str, Any]:
        """``FIELD=VALUE`` strings (the ``--set`` of every command) -> overrides typed from the field types.

        Values: ints (``num_frames=3``), floats (``ffn_ratio=3``), bools (``true/false``, ``1/0``, ``yes/no``),
        tuples of ints (``window=4,3``, ``4x3``, ``[4,3]`` or ``(4, 3)``), ``none`` for a field that may be None
        (``dt_rank=none``), strings as given (``merge=sum``; surrounding quotes are dropped). The values are
        checked by the config when it is built (:meth:`replace`, :func:`get_config`).

        Raises:
            ValueError: an item without ``=``, an unknown field (the message lists the known ones) or a value of
                the wrong type; the message names the item and the expected form.
        """
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        out: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ValueError(f"override {item!r}: expected FIELD=VALUE (KEY=VALUE with KEY a GLSMambaConfig "
                                 f"field), e.g. num_frames=3 or window=4,3")
            if key not in names:
                raise ValueError(f"unknown model config field {key!r} in override {item!r}; fields: "
                                 f"{', '.join(sorted(names))}")
            out[key] = cls._parse_value(item, key, text.strip(), hints[key])
        return out

    @staticmethod
    def _parse_value(item: str, key: str, text: str, hint: Any) -> Any:
        """``text`` as a value of type ``hint`` (``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]`` or one
        of them ``| None``)."""
        args = typing.get_args(hint)
        if type(None) in args:  # X | None
            if text.lower() in ("none", "null"):
                return None
            (hint,) = [a for a in args if a is not type(None)]
        if typing.get_origin(hint) is tuple:
            elem = typing.get_args(hint)
            want = f"{len(elem)} ints" if Ellipsis not in elem else "ints"
            parts = [p.strip() for p in text.strip("[]() ").replace("x", ",").split(",")]
            try:
                value = tuple(int(p) for p in parts)
            except ValueError:
                raise ValueError(f"override {item!r}: {key} takes {want}, e.g. {key}=4,3") from None
            if Ellipsis not in elem and len(value) != len(elem):
                raise ValueError(f"override {item!r}: {key} takes {want}, e.g. {key}=4,3; got {len(value)}")
            return value
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"override {item!r}: {key} takes true or false")
            return text.lower() in ("true", "1", "yes")
        if hint in (int, float):
            try:
                return hint(text)
            except ValueError:
                want = "an int, e.g. {}=2" if hint is int else "a number, e.g. {}=0.5"
                raise ValueError(f"override {item!r}: {key} takes {want.format(key)}") from None
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # a quoted string
            return text[1:-1]
        return text


_BASE = dict(
    name="base",
    encoder="vit", vit_embed_dim=768, vit_depth=12, vit_num_heads=12,
    dim=256, d_state=16, expand=2, ffn_ratio=4.0, num_gsm=4, num_lrm=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and synthetic data: conv encoder, narrow trunk, 2 GSM + 1 LRM, any multiple-of-4 input.
    "tiny": dict(
        name="tiny", num_frames=5, image_size=(64, 48), encoder="conv", conv_channels=(16, 32),
        freeze_encoder=False, dim=32, d_state=4, expand=2, dt_rank=4, ffn_ratio=2.0, num_gsm=2, num_lrm=1,
        stmm_groups=2, ca_reduction=4, window=(4, 3),
    ),
    # GLSMamba-B: frozen ViTPose-B (ViT-B/16, 768 wide, 12 blocks) + the 4 GSM + 2 LRM trunk.
    "base": _BASE,
    # GLSMamba-H: frozen ViTPose-H (1280 wide, 32 blocks, 16 heads); the trunk is base's (the paper does not
    # give a different one, and the deconvolution output is 256 channels in both).
    "huge": {**_BASE, "name": "huge", "vit_embed_dim": 1280, "vit_depth": 32, "vit_num_heads": 16},
}


def get_config(name: str = "base", **overrides: Any) -> GLSMambaConfig:
    """The preset ``name`` (``"tiny"``, ``"base"``, ``"huge"``) with any field overridden.

    Example:
        >>> cfg = get_config("base", num_joints=17)
    """
    if name not in PRESETS:
        raise ValueError(f"preset name must be one of {sorted(PRESETS)}, got {name!r}")
    return GLSMambaConfig().replace(**{**PRESETS[name], **overrides})
