"""Checkpoints: weights + config in one file, and ViTPose backbone import.

File format (``torch.save``, read back with ``torch.load(weights_only=True)``: tensors and plain Python values only,
nothing executable)::

    {"format": "glsmamba", "version": 2, "config": GLSMambaConfig.to_dict(), "state_dict": {name: tensor},
     "frozen_included": bool, "extra": {...}}

Version 1 files (written before the configuration fields ``ssm_sharing``, ``stmm_form``, ``stmm_group_channels``,
``ca_form``, ``head`` and ``feature_stride`` existed; their switch ``share_ssm_proj`` is now ``ssm_sharing``) are
converted on reading (:func:`upgrade_config`): every field they stored keeps its value and the new fields get the
values that rebuild the version-1 layout (per-direction ``A_log``/``D``/delta bias, depthwise STMM, joint channel
attention, conv head, features at 1/4), so their weights load unchanged into the network they were trained as.

``save(..., include_frozen=False)`` leaves the frozen encoder out (a ViT-B is ~86M parameters); :func:`load` then
needs ``backbone=`` (a ViTPose file) or ``strict=False``.

ViTPose import (:func:`load_vitpose`) reads mmpose/ViTPose checkpoints: a dict with ``"state_dict"`` (or ``"model"``,
or the bare state dict), keys optionally prefixed ``module.``; ``backbone.*`` maps to the ViT
(``patch_embed.proj``, ``pos_embed``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``last_norm``), ``keypoint_head.deconv_layers.<i>`` (mmpose 0.x / ViTPose) or ``head.deconv_layers.<i>`` (mmpose 1.x)
maps to the two deconvolutions, the COCO ``final_layer`` is skipped (GLSMamba has its own J-joint head).
A bare backbone state dict (keys starting ``patch_embed.``) is accepted too. ``.safetensors`` files are read with
the optional ``safetensors`` package.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import GLSMambaConfig

FORMAT = "glsmamba"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# the values of the fields added in version 2 that rebuild a version-1 network
_V1_LAYOUT: dict[str, Any] = {"stmm_form": "depthwise", "ca_form": "joint", "head": "conv", "feature_stride": 4}


def upgrade_config(data: dict[str, Any], version: int) -> dict[str, Any]:
    """A checkpoint's config dict of ``version`` in the current field layout (see the module docstring)."""
    if version not in READABLE_VERSIONS:
        raise ValueError(f"checkpoint version {version!r}: this code reads versions {READABLE_VERSIONS}")
    if version == 1:
        data = dict(data)
        share = data.pop("share_ssm_proj", True)
        data.setdefault("ssm_sharing", "proj" if share else "none")
        for key, value in _V1_LAYOUT.items():
            data.setdefault(key, value)
        # any other field added since: its default (stmm_group_channels, unused by the depthwise form)
        for key, value in GLSMambaConfig().to_dict().items():
            data.setdefault(key, value)
    return data


class CheckpointError(ValueError):
    """A checkpoint does not match the model: the message lists missing, unexpected and mis-shaped keys."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], mismatched: list[str] | None = None):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched or []
        parts = [what]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:50]) + (f", ... ({len(keys) - 50} more)" if len(keys) > 50 else "")
                parts.append(f"{len(keys)} {title}: {shown}")
        super().__init__("; ".join(parts))


def _check_and_load(module: nn.Module, state: dict[str, torch.Tensor], what: str, strict: bool,
                    allow_missing: tuple[str, ...] = ()) -> dict[str, list[str]]:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(what, missing, unexpected, mismatched)
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"loaded": [k for k in state if k in own], "missing": missing, "unexpected": unexpected}


def save(model: nn.Module, path: str | os.PathLike, *, include_frozen: bool = True,
         extra: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights and config to ``path`` (one file; see the module docstring).

    Args:
        model: a :class:`model.GLSMamba`.
        include_frozen: also store the frozen encoder's weights.
        extra: JSON-like metadata stored as is (epoch, metrics, ...).
    """
    from .glsmamba import GLSMamba

    if not isinstance(model, GLSMamba):
        raise TypeError(f"model must be a GLSMamba, got {type(model).__name__}")
    state = model.state_dict()
    if not include_frozen and model.encoder_frozen:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "frozen_included": include_frozen or not model.encoder_frozen,
        "extra": extra or {},
    }
    torch.save(payload, os.fspath(path))


class DamagedCheckpointError(ValueError):
    """A file torch cannot read as a checkpoint (cut short, empty, not a torch file, corrupted): the message is one
    line, ``"<path>: <reason>"``; ``path`` and ``reason`` are attributes."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


class MissingEncoderError(ValueError):
    """A checkpoint saved without its frozen encoder was loaded without ``backbone=`` (``path``: the checkpoint)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        super().__init__(f"{self.path} was saved without the frozen encoder weights: pass backbone=<ViTPose file> "
                         f"or strict=False")


# torch.save's legacy (non-zip) format starts with its magic number pickled with protocol 2
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def damaged_file_reason(path: str | os.PathLike, deep: bool = False) -> str | None:
    """Why the file at ``path`` cannot be a torch checkpoint, judged from its bytes without unpickling anything:
    ``"empty file (0 bytes)"``, ``"truncated: not a complete torch zip archive"``, ``"a zip archive but not a torch
    checkpoint (no data.pkl)"``, ``"not a torch checkpoint (...)"``; ``deep`` also checks every archive member's CRC
    (reads the whole file). ``None`` when the file looks like an intact torch file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist()):
                    return "a zip archive but not a torch checkpoint (no data.pkl)"
                bad = zf.testzip() if deep else None
        except zipfile.BadZipFile:
            return f"truncated: not a complete torch zip archive ({size} bytes)"
        except (OSError, EOFError, ValueError, RuntimeError) as e:  # zlib / struct errors inside the archive
            return f"corrupted torch zip archive ({type(e).__name__})"
        return f"corrupted: archive member {bad} fails its CRC check" if bad else None
    if head == _LEGACY_TORCH_MAGIC:
        return "truncated or corrupted torch file (legacy format)" if deep else None
    return "not a torch checkpoint (neither a torch zip archive nor a legacy torch file)"


def load_torch_file(path: str | os.PathLike, *, weights_only: bool = True) -> Any:
    """``torch.load(path)`` on the CPU, with a damaged file reported as :class:`DamagedCheckpointError` (checked
    from the bytes first, so torch's zip and unpickler messages never reach the user); an intact file whose
    contents the safe loader refuses raises ``pickle.UnpicklingError`` as before."""
    path = os.fspath(path)
    reason = damaged_file_reason(path)
    if reason is not None:
        raise DamagedCheckpointError(path, reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        reason = damaged_file_reason(path, deep=True)
        if reason is None and isinstance(e, pickle.UnpicklingError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise DamagedCheckpointError(path, reason or f"torch cannot read it ({type(e).__name__}: {first})") from e


def unpickling_detail(e: BaseException) -> str:
    """The safe unpickler's own complaint in ``e`` (e.g. ``Unsupported global: GLOBAL numpy...``), without torch's
    advice to load the file with ``weights_only=False``."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0].split(". ")[0] if lines else type(e).__name__


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a GLSMamba checkpoint (validated format; the config converted to the current layout, the
    file's own version kept under ``"version"``); a damaged file raises :class:`DamagedCheckpointError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = load_torch_file(path)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is not a GLSMamba checkpoint (not tensors + plain values: "
                         f"{unpickling_detail(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a GLSMamba checkpoint (no 'format': {FORMAT!r} entry); for ViTPose "
                         f"weights use load_vitpose")
    version = payload.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path}: checkpoint version {version!r}, this code reads versions {READABLE_VERSIONS}")
    if not isinstance(payload.get("config"), dict):
        raise ValueError(f"{path}: the checkpoint has no config dict")
    payload["config"] = upgrade_config(payload["config"], version)
    return payload


def load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", strict: bool = True,
         backbone: str | os.PathLike | None = None, trust_backbone: bool = False, **config_overrides: Any):
    """Build a :class:`model.GLSMamba` from a file written by :func:`save`.

    Args:
        path: the checkpoint.
        map_location: device for the returned model.
        strict: raise :class:`CheckpointError` on missing or unexpected keys (shape mismatches always raise).
        backbone: a ViTPose file to fill the encoder when the checkpoint was saved without frozen weights.
        trust_backbone: read ``backbone`` with full unpickling (see :func:`load_vitpose`'s ``trusted``).
        **config_overrides: config fields to change that do not alter parameter shapes (e.g. ``backend``).
    """
    from .glsmamba import GLSMamba

    payload = read(path)
    cfg = GLSMambaConfig.from_dict(payload["config"])
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    net = GLSMamba(cfg)
    allow = () if payload.get("frozen_included", True) else ("encoder.",)
    if allow and backbone is None and strict:
        raise MissingEncoderError(path)
    _check_and_load(net, payload["state_dict"], f"checkpoint {os.fspath(path)} does not match the model", strict,
                    allow_missing=allow)
    if backbone is not None:
        load_vitpose(net, backbone, trusted=trust_backbone)
    return net.to(map_location)


# ---------------------------------------------------------------------------------------------- ViTPose import
def _read_state_dict(path: str | os.PathLike, trusted: bool) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ViTPose checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("reading .safetensors needs the 'safetensors' package (pip install safetensors)") from e
        obj: Any = load_file(path)
    else:
        try:
            obj = load_torch_file(path, weights_only=not trusted)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path} holds objects other than tensors (mmpose checkpoints often store their config "
                             f"in 'meta'); if you trust the file, pass trusted=True (command line: --trust-backbone): "
                             f"{unpickling_detail(e)}") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'state_dict'), "
                         f"got {type(obj).__name__}")
    return obj


def map_vitpose_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """ViTPose / mmpose key names -> :class:`model.encoder.ViTPoseEncoder` names.

    Returns:
        (mapped state dict, skipped keys: the COCO ``final_layer`` and other heads' entries).
    """
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    bare = any(k.removeprefix("module.").startswith("patch_embed.") for k in state)
    for key, value in state.items():
        k = key.removeprefix("module.")
        if bare and not k.startswith(("backbone.", "keypoint_head.", "head.")):
            k = "backbone." + k
        if k.startswith("backbone."):
            out["vit." + k.removeprefix("backbone.")] = value
        elif k.startswith(("keypoint_head.deconv_layers.", "head.deconv_layers.")):
            out["deconv." + k.split("deconv_layers.", 1)[1]] = value
        elif k.startswith(("keypoint_head.", "head.")):
            skipped.append(key)
        else:
            out[k] = value  # reported as unexpected by the loader
    return out, skipped


def load_vitpose(target: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                 trusted: bool = False) -> dict[str, list[str]]:
    """Load ViTPose weights (backbone + its two deconvolutions) from ``path`` into ``target``.

    An encoder at ``feature_stride`` 16 (GLSMamba-BLR) has no deconvolutions: the file's are skipped.

    Args:
        target: a :class:`model.GLSMamba` with ``encoder="vit"`` or its :class:`~model.encoder.ViTPoseEncoder`.
        path: ``.pth`` / ``.pt`` (mmpose/ViTPose layout, see the module docstring) or ``.safetensors``.
        strict: raise :class:`CheckpointError` listing missing / unexpected keys (a backbone-only file without the
            deconvolutions needs ``strict=False``; shape mismatches always raise).
        trusted: allow full unpickling (mmpose files that store non-tensor metadata).

    Returns:
        ``{"loaded": [...], "missing": [...], "unexpected": [...], "skipped": [...]}`` (encoder-relative names).
    """
    from .encoder import ViTPoseEncoder

    encoder = getattr(target, "encoder", target)
    if not isinstance(encoder, ViTPoseEncoder):
        raise TypeError(f"target must be a GLSMamba with encoder='vit' or a ViTPoseEncoder, got "
                        f"{type(encoder).__name__}")
    mapped, skipped = map_vitpose_keys(_read_state_dict(path, trusted))
    if encoder.deconv is None:
        skipped += [k for k in mapped if k.startswith("deconv.")]
        mapped = {k: v for k, v in mapped.items() if not k.startswith("deconv.")}
    pos = mapped.get("vit.pos_embed")
    own_pos = encoder.vit.pos_embed
    if pos is not None and pos.dim() == 3 and pos.shape[-1] == own_pos.shape[-1] and pos.shape[1] != own_pos.shape[1]:
        mapped["vit.pos_embed"] = _resize_pos_embed(pos, encoder.vit.grid)
    frozen = not any(p.requires_grad for p in encoder.parameters())
    report = _check_and_load(encoder, mapped, f"ViTPose checkpoint {os.fspath(path)} does not match the encoder",
                             strict)
    if frozen:
        encoder.eval()
    report["skipped"] = skipped
    return report


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, 1 + n, C)`` with a square-or-known grid -> ``(1, 1 + gh*gw, C)`` (bicubic on the grid part)."""
    n, c = pos.shape[1] - 1, pos.shape[2]
    # ViTPose grids are 4:3 (256x192 -> 16x12) or square; find gh*gw = n with gh/gw closest to the target's ratio
    target = grid[0] / grid[1]
    pairs = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
    gh, gw = min(pairs, key=lambda p: abs(p[0] / p[1] - target))
    g = pos[:, 1:].reshape(1, gh, gw, c).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], c)], dim=1)
