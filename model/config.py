"""``GLSMambaConfig``: every size and switch of the network, with the named presets.

The paper (arXiv 2510.11017, see ``docs/paper.md``) fixes the pipeline (frozen ViTPose encoder + 4x deconvolution,
4 GSM blocks then 2 LRM blocks, 5-frame clips with the centre frame as key frame, features at 1/4 of 256 x 192) and
reports sizes and costs (docs/paper.md sections 3 and 4): GLSMamba-B 9.8 M trainable parameters and 138.9 GFLOPs,
GLSMamba-BLR (features at 1/16, 960 tokens) 9.8 M and 85.1, and the scan ablations 9.1 M / 137.4 (2 directions),
9.4 M / 138.1 (4), 9.1 M / 137.4 (6 directions with STMM replaced by a sum). It leaves most sizes open
(docs/paper.md section 6). The defaults below were chosen so that one configuration matches all ten of those
numbers: ``bench/config_search.py`` counts them over a grid of the open points (width, expansion, FFN ratio,
channel-attention form and reduction, S6 sharing, STMM form, head), and ``glsmamba summary --paper`` prints them
beside the paper's. The paper's "GFLOPs" are multiply-adds of the layers alone (no attention products, no selective
scans, no deformable sampling: the evidence is in :mod:`model.flops`); with that count the defaults give

    row                       trainable parameters               multiply-adds of the layers ("GFLOPs")
    base                      9,885,343  (paper 9.8 M, +0.9 %)    141.1 G  (paper 138.9, +1.6 %)
    base-lr                   10,016,415 (paper 9.8 M, +2.2 %)     85.5 G  (paper  85.1, +0.4 %)
    2 directions              8,967,695  (paper 9.1 M, -1.5 %)    137.7 G  (paper 137.4, +0.2 %)
    4 directions              9,414,267  (paper 9.4 M, +0.2 %)    140.0 G  (paper 138.1, +1.4 %)
    6 directions, sum merge   8,967,695  (paper 9.1 M, -1.5 %)    137.7 G  (paper 137.4, +0.2 %)

(of the 1,600 grid points, 3 match all ten within 3 %; these defaults are the best, worst difference 2.2 %).
The compute budget that decides the trunk: 138.9 - 82.1 (the frozen ViT-B's layers, 5 frames) - 7.0 (ViTPose's two
frozen deconvolutions) leaves ~50 G multiply-adds for 15,360 tokens, ~3.2 M per token; and 9.1 M parameters
(2 directions) at that cost means ~5 M of them are not applied per token. The decisions, and their evidence:

* **Trunk width** ``dim`` (D) = 256 for ``base``/``huge``: the width of ViTPose's deconvolution output.
  ``expand`` = 2 (scan branch Di = 512), ``d_state`` (N) = 16, ``dt_rank`` = ceil(D / 16) (Mamba's defaults). The
  Mamba core of 6 blocks at D = 256 costs 2.6 M multiply-adds per token. Below, "search: ..." is the best
  worst-difference over the grid with each value (``bench/results/config-search/``): D = 192 18 %, 320 3.0 %,
  256 2.2 %; expand 1 2.7 %.
* **FFN** (``ffn_ratio`` = 0.5, hidden 128; 0 = no FFN): the paper's block ends in an FFN (PN), but the budget
  leaves ~0.4 M multiply-adds per token for it over 6 blocks: ratio 0.5. With ratio 4 (version 1) the trunk cost
  ~101 G, twice the paper's (base 190 G in the paper's unit). Search: no FFN 5.2 %, 0.5 2.2 %, 1 4.5 %, 2 2.7 %,
  4 15.5 %.
* **Channel attention** (GSM only, ``ca_form="joint"``, ``ca_reduction`` = 2.5): per-frame global average pool of
  ``LN(X)``, the T pooled vectors concatenated (T*D = 1280), an MLP 1280 -> 512 -> 1280 (ReLU) and a sigmoid give
  per-frame channel weights that scale the block input, in every GSM block (PN: "the T frame features are
  concatenated, then GAP -> MLPs -> sigmoid"). It runs once per clip, so it is where parameters without per-token
  cost fit: 1.31 M per block, 5.25 M in all, which puts the 2-direction model at 8.97 M (paper 9.1 M). It ties a
  model to its ``num_frames`` (its size grows with T^2). ``ca_form="frame"``: one MLP D -> D / r -> D shared by
  the frames (no cross-frame mixing). Search: reduction 8 (version 1) 15 %, 4 3.0 %, 2.5 2.2 %, 2 4.9 %; the
  per-frame form 27 % (too few parameters).
* **S6 and sharing across directions** (``ssm_sharing="all"``): standard Mamba-1 (input-dependent delta, B, C;
  ``A = -exp(A_log)``; ``D`` skip; Euler-discretised B; softplus on delta), and one S6 - projections, ``A_log``,
  ``D`` and delta bias - read along every scan order: the paper's 2-direction and 6-direction-sum rows have the same
  parameters and GFLOPs (9.1 M, 137.4), so the extra directions add nothing. ``x_proj`` / ``dt_proj`` produce
  (delta, B, C) once in natural token order (projections commute with permutations). ``"proj"`` (version 1) gives
  each direction its own ``A_log``, ``D`` and delta bias (+147 k for 6 directions in ``base``); ``"none"`` adds
  VMamba-style per-direction projections. Search: "proj" 2.7 %.
* **Scan orders**: the six STS6D orders of ``reference.space_time.STS6D`` (unified / spatial / temporal, each forward
  and reversed); ``directions`` = 2 keeps unified only, 4 adds spatial, 6 adds temporal (the paper's ablation).
  The forward/backward pair of one type is summed into one stream (y_u, y_s, y_t) inside the fused op.
* **STMM** (``merge="stmm"``): ``F = y_u + M_s(y_s) + M_t(y_t)``. ``M_s`` samples y_s at the 3x3 ``SPATIAL_TAPS``
  (dt = 0) per frame, ``M_t`` samples y_t at the ``TEMPORAL_TAPS`` (dt in -1, 0, 1 at the same pixel), both with
  learned offsets and masks (``stmm_groups`` = 1 offset group) predicted from ``[y_u, y_s]`` / ``[y_u, y_t]`` by a
  per-frame depthwise 3x3 conv and a pointwise projection (zero-initialised: offsets start at 0, masks at 0.5).
  ``stmm_form="grouped"``: each modulator is a grouped deformable convolution (DCNv2) whose tap weights mix the
  sampled taps inside groups of ``stmm_group_channels`` = (16, 64) channels (spatial, temporal; capped at Di):
  73.7 k weights per block for M_s and 98.3 k for M_t, so the temporal modulator is the larger, as the paper's steps
  (+0.3 M spatial, +0.4 M temporal, at only +0.7 / +0.8 GFLOPs) say: those parameters cannot sit in per-token layers
  (0.3 M applied to 15,360 tokens would cost 4.6 G), they are the deformable convolution's own weights, which a
  module-hook counter does not see. Ours: +0.45 M / +0.47 M and +2.3 / +1.1 G (the offset predictors read 2 Di
  channels), every row within 3 %. The centre tap's weight starts at twice the identity and every other tap at 0,
  so at initialisation STMM equals the plain sum. ``stmm_form="depthwise"`` (version 1): one depthwise weight per
  tap and channel (the temporal modulator then the smaller, 48.7 k vs 125.5 k per block with 4 offset groups).
  Search: depthwise with 4 offset groups 4.4 %, grouped (16, 64) 2.2 %, grouped (32, 128) 2.7 %. Cost of the
  grouped form: it samples every tap separately (one ``deformable_aggregate`` call over P copies of the stream, as
  a DCN's im2col does), so training holds P = 9 (spatial) and 3 (temporal) copies of the Di-wide stream per GSM
  block for the backward.
  ``merge="sum"`` is the ablation ``F = y_u + y_s + y_t``.
* **Gate stream** (``docs/paper.md`` section 1, source PN): the gate, not the scan branch, carries the depthwise conv:
  ``A = SiLU(LN(DWConv3x3(z)))`` per frame, with ``x, z = in_proj(LN(X))``; the scan branch is ``SiLU(x)``.
  Block: ``X <- X + out_proj(LN(F) * A)``, then ``X <- X + FFN(LN(X))`` (pre-norm residuals; FFN = Linear, GELU,
  Linear).
* **LRM**: the same block without channel attention, scanning the WSTS windowed orders (``window`` = 8 x 6 x T tubes,
  forward + reversed, state reset at each window start, border windows smaller, no padding) with a plain sum merge.
* **Encoder**: ``"vit"`` = ViTPose layout (patch 16 with ViTPose's padding 2, absolute position embedding with a
  class slot added to every token, pre-norm blocks, ``last_norm``) + ViTPose's two deconvolutions (4x4, stride 2,
  BN, ReLU) to 1/4 resolution, frozen by default (``freeze_encoder``): the deconvolutions are the frozen ViTPose head's
  (their weights load with the backbone), so the trainable part is projection + trunk + head. The two-variant solve
  above (encoder cost 82.0 G from the paper's own numbers, matching the ViT-B's layers) says the paper counts the
  deconvolutions in base and not in BLR. ``"conv"`` = a small conv stem (two stride-2 3x3 convs) for ``tiny``;
  trained from scratch, never frozen by default.
* **Resolution** (``feature_stride``): 4 (GLSMamba-B) or 16 (GLSMamba-BLR, preset ``base-lr``): the ViT's 1/16
  tokens feed the trunk directly (no deconvolutions; 16 x 12 x 5 = 960 tokens), the projection reads the ViT's 768
  channels, and the head's heatmaps are bilinearly upsampled from 16 x 12 to 64 x 48 (no parameters). Evidence for
  a head at the tokens' resolution: BLR's 85.1 leaves 3.0 G over the ViT for embedding, trunk and head, while a 3x3
  head at 64 x 48 alone costs 1.8 G. For the conv encoder, stride 16 adds a 4x4 average pool (same parameters).
  **Conflict**: the paper gives base and BLR the same 9.8 M; here BLR's projection from 768 instead of 256 channels
  adds (768 - 256) * D = 131 k (+1.3 %; equal to within the paper's 0.1 M rounding only for D <= 195).
* **Embeddings**: linear projection to D, fixed 2-D sine-cosine spatial embedding (MAE layout: half the channels
  encode the row, half the column), learnable temporal embedding (T, D).
* **Head** (``head="conv"``): on the key (centre) frame only: LN, 3x3 conv D -> D, BN, ReLU, 1x1 conv to J heatmaps
  at the tokens' resolution (1/4 input, or 1/16 upsampled to 1/4). J = ``num_joints`` (15 PoseTrack by default,
  17 COCO). ``"linear"``: LN and the 1x1 conv only (search: 4.6 %).
* **Backend** (``backend``): ``"auto"`` (default) lets the registry decide per call (``model.set_backend``,
  ``model.use_backend``, ``GLSMAMBA_BACKEND``); ``"reference"`` / ``"triton"`` pin this model's op calls.

Version 1 (before these defaults): FFN ratio 4, channel-attention reduction 8, per-direction ``A_log``/``D``/delta
bias (``share_ssm_proj``), depthwise STMM with 4 offset groups: ``base`` had 9,019,343 trainable parameters (-8 %)
and cost 190 G multiply-adds in the paper's unit (+37 %). Checkpoints of that layout load (``model.checkpoint``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ENCODERS = ("vit", "conv")
FEATURE_STRIDES = (4, 16)
MERGES = ("stmm", "sum")
DIRECTIONS = (2, 4, 6)
SSM_SHARING = ("all", "proj", "none")
STMM_FORMS = ("grouped", "depthwise")
CA_FORMS = ("joint", "frame")
HEADS = ("conv", "linear")
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
    feature_stride: int = 4
    # trunk
    dim: int = 256
    d_state: int = 16
    expand: int = 2
    dt_rank: int | None = None
    ffn_ratio: float = 0.5
    num_gsm: int = 4
    num_lrm: int = 2
    directions: int = 6
    merge: str = "stmm"
    ssm_sharing: str = "all"
    stmm_form: str = "grouped"
    stmm_group_channels: tuple[int, int] = (16, 64)
    stmm_groups: int = 1
    ca_form: str = "joint"
    ca_reduction: float = 2.5
    window: tuple[int, int] = (8, 6)
    head: str = "conv"
    drop_path: float = 0.0
    # runtime
    backend: str = "auto"

    def __post_init__(self) -> None:
        # normalise sequences given as lists (from JSON) to tuples, then validate.
        for name in ("image_size", "conv_channels", "window", "stmm_group_channels"):
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
    def stmm_channels_per_group(self) -> tuple[int, int]:
        """Channels per group of the grouped STMM modulators (spatial, temporal): ``stmm_group_channels`` capped at
        ``d_inner``."""
        return min(self.stmm_group_channels[0], self.d_inner), min(self.stmm_group_channels[1], self.d_inner)

    @property
    def encoder_channels(self) -> int:
        """Channels of the encoder's feature map (at 1/``feature_stride`` of the input)."""
        if self.encoder == "conv":
            return self.conv_channels[-1]
        return self.deconv_channels if self.feature_stride == 4 else self.vit_embed_dim

    @property
    def input_multiple(self) -> int:
        """Input H and W must be multiples of this (16 for the ViT, ``feature_stride`` for the conv encoder)."""
        return 16 if self.encoder == "vit" else self.feature_stride

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
                     "dim", "d_state", "expand", "stmm_groups"):
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
        for name, choices in (("feature_stride", FEATURE_STRIDES), ("ssm_sharing", SSM_SHARING),
                              ("stmm_form", STMM_FORMS), ("ca_form", CA_FORMS), ("head", HEADS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        for name, n in (("image_size", 2), ("conv_channels", 2), ("window", 2), ("stmm_group_channels", 2)):
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
        if self.stmm_form == "grouped" and any(self.d_inner % c for c in self.stmm_channels_per_group):
            raise ValueError(f"stmm_group_channels {self.stmm_group_channels} (capped at d_inner) must divide "
                             f"d_inner = expand * dim ({self.d_inner}) for stmm_form='grouped'")
        if not (self.vit_mlp_ratio > 0 and self.ffn_ratio >= 0):
            raise ValueError(f"vit_mlp_ratio must be > 0 and ffn_ratio >= 0 (0: no FFN), got {self.vit_mlp_ratio}, "
                             f"{self.ffn_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        ca_width = self.num_frames * self.dim if self.ca_form == "joint" else self.dim
        if not (isinstance(self.ca_reduction, (int, float)) and not isinstance(self.ca_reduction, bool)
                and self.ca_reduction > 0):
            raise ValueError(f"ca_reduction must be a positive number, got {self.ca_reduction!r}")
        if ca_width // self.ca_reduction < 1:
            raise ValueError(f"ca_reduction ({self.ca_reduction}) too large for the channel attention's width "
                             f"{ca_width} (ca_form={self.ca_form!r})")

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
    dim=256, d_state=16, expand=2, num_gsm=4, num_lrm=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU tests and synthetic data: conv encoder, narrow trunk (D = 32), 2 GSM + 1 LRM, base's choices otherwise
    # (STMM with base's group counts: 32 spatial and 8 temporal groups of the 64 scan channels).
    "tiny": dict(
        name="tiny", num_frames=5, image_size=(64, 48), encoder="conv", conv_channels=(16, 32),
        freeze_encoder=False, dim=32, d_state=4, expand=2, dt_rank=4, num_gsm=2, num_lrm=1, window=(4, 3),
        stmm_group_channels=(2, 8),
    ),
    # GLSMamba-B: frozen ViTPose-B (ViT-B/16, 768 wide, 12 blocks) + the 4 GSM + 2 LRM trunk at 1/4 resolution.
    "base": _BASE,
    # GLSMamba-BLR: base with the ViT's 1/16 tokens fed to the trunk (no deconvolutions, 16 x 12 x 5 = 960 tokens);
    # the head upsamples its heatmaps to 1/4 (64 x 48).
    "base-lr": {**_BASE, "name": "base-lr", "feature_stride": 16},
    # GLSMamba-H: frozen ViTPose-H (1280 wide, 32 blocks, 16 heads); the trunk is base's (the paper does not
    # give a different one, and the deconvolution output is 256 channels in both).
    "huge": {**_BASE, "name": "huge", "vit_embed_dim": 1280, "vit_depth": 32, "vit_num_heads": 16},
}


def get_config(name: str = "base", **overrides: Any) -> GLSMambaConfig:
    """The preset ``name`` (``"tiny"``, ``"base"``, ``"base-lr"``, ``"huge"``) with any field overridden.

    Example:
        >>> cfg = get_config("base", num_joints=17)
    """
    if name not in PRESETS:
        raise ValueError(f"preset name must be one of {sorted(PRESETS)}, got {name!r}")
    return GLSMambaConfig().replace(**{**PRESETS[name], **overrides})
