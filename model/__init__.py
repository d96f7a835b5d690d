"""The GLSMamba network, its configs, checkpoints and the backend switch.

Importing ``model`` never imports Triton; the kernels load on the first op call that resolves to ``"triton"``.

Example:
    >>> from glsmamba import model
    >>> net = model.GLSMamba("tiny")
    >>> model.set_backend("reference")          # process-wide, takes effect at the next call
    >>> with model.use_backend("triton"):       # scoped
    ...     heatmaps = net(frames)
"""

from __future__ import annotations

from .backend import BackendUnavailableError, call_counts, current_backend, reset_call_counts, use_backend
from .backend import set_default_backend as _set_default_backend
from .blocks import GSMBlock, HeatmapHead, LRMBlock
from .checkpoint import CheckpointError, load, load_vitpose, save
from .config import PRESETS, GLSMambaConfig, get_config
from .glsmamba import GLSMamba


def set_backend(name: str | None) -> None:
    """Set the process-wide backend: ``"reference"``, ``"triton"``, ``"auto"`` (or ``None`` to restore the default).

    Resolved at every op call, so it changes what an already built model runs (unless the model pins its own
    backend via ``config.backend`` / :meth:`GLSMamba.pin_backend`; a :func:`use_backend` context inside wins over this).
    """
    _set_default_backend(name)


__all__ = [
    "PRESETS",
    "BackendUnavailableError",
    "CheckpointError",
    "GLSMamba",
    "GLSMambaConfig",
    "GSMBlock",
    "HeatmapHead",
    "LRMBlock",
    "call_counts",
    "current_backend",
    "get_config",
    "load",
    "load_vitpose",
    "reset_call_counts",
    "save",
    "set_backend",
    "use_backend",
]
