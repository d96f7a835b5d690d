"""One registry that maps an op name and a backend name to the function that runs it.

Backends:
  ``"reference"``  pure PyTorch (``reference/``), always available, any device.
  ``"triton"``     Triton kernels (``kernels/``): CUDA tensors with compiled kernels, or CPU tensors
                   when the Triton interpreter is on (``TRITON_INTERPRET=1`` set before Triton is imported).
  ``"auto"``       resolved per call: ``"triton"`` for CUDA tensors when Triton imports, else ``"reference"``.

The backend is resolved at *call time* (never cached at module construction), from, in order: the
``backend=`` argument of :func:`get_op`, the innermost :func:`use_backend` context, the process default
set by :func:`set_default_backend`, the environment variable ``GLSMAMBA_BACKEND``, then ``"auto"``.
An explicitly requested backend that cannot run raises :class:`BackendUnavailableError`; it never falls back.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from glsmamba.kernels._utils import (  # noqa: F401  (re-exported: the one answer to "can Triton run here")
    BackendUnavailableError,
    interpreter_enabled,
    triton_import_error,
    triton_unavailable_reason,
)

BACKENDS = ("reference", "triton")
CHOICES = ("auto", *BACKENDS)

# op name -> module name shared by kernels/ and reference/ (docs/design.md section 1: same file, same function name).
OPS: dict[str, str] = {
    "selective_scan": "selective_scan",
    "selective_scan_channel_last": "selective_scan",
    "space_time_scan": "space_time",
    "space_time_merge": "space_time",
    "ordered_selective_scan": "ordered_scan",
    "deformable_aggregate": "deformable",
}


_state = threading.local()
_default: list[str | None] = [None]
_call_counts: dict[tuple[str, str], int] = {}


def check_backend_name(name: str, argname: str = "backend") -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{argname} must be one of {CHOICES}, got {name!r}")
    return name


def set_default_backend(name: str | None) -> None:
    """Set the process-wide backend (``None`` restores the environment/``"auto"`` default)."""
    _default[0] = None if name is None else check_backend_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with ``name`` as the backend of every op call that does not name one."""
    check_backend_name(name)
    stack = _stack()
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _stack() -> list[str]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def current_backend() -> str:
    """The backend name in force here (may be ``"auto"``)."""
    stack = _stack()
    if stack:
        return stack[-1]
    if _default[0] is not None:
        return _default[0]
    env = os.environ.get("GLSMAMBA_BACKEND")
    if env:
        return check_backend_name(env, "GLSMAMBA_BACKEND")
    return "auto"


def backend_status() -> dict[str, str | None]:
    """Backend name -> ``None`` if it can run on this machine, else the reason (for ``glsmamba info``)."""
    return {"reference": None, "triton": triton_unavailable_reason(None)}


def _device_of(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.device | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device
    return None


def resolve(backend: str, device: torch.device | None) -> str:
    """Turn ``backend`` (maybe ``"auto"``) into a concrete backend for tensors on ``device``.

    Raises:
        BackendUnavailableError: ``backend`` was named explicitly and cannot run on ``device``.
    """
    check_backend_name(backend)
    if backend == "auto":
        if device is not None and device.type == "cuda" and triton_unavailable_reason(device) is None:
            return "triton"
        return "reference"
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend 'triton' was requested but cannot run: {reason}")
    return backend


# plain dict cache (not functools.cache): torch.compile traces through it without warnings
_impls: dict[tuple[str, str], Callable[..., Any]] = {}


def _load(op: str, backend: str) -> Callable[..., Any]:
    key = (op, backend)
    if key not in _impls:
        package = "glsmamba.kernels" if backend == "triton" else "glsmamba.reference"
        _impls[key] = getattr(importlib.import_module(f"{package}.{OPS[op]}"), op)
    return _impls[key]


def get_impl(op: str, backend: str) -> Callable[..., Any]:
    """The function implementing ``op`` in concrete ``backend`` (no availability check)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} here, got {backend!r}")
    return _load(op, backend)


def call(op: str, *args: Any, backend: str | None = None, **kwargs: Any) -> Any:
    """Run ``op`` on the backend resolved for these arguments (see the module docstring)."""
    name = current_backend() if backend is None else check_backend_name(backend)
    concrete = resolve(name, _device_of(args, kwargs))
    if not torch.compiler.is_compiling():  # traced, the count would be a guarded constant: a recompile per call
        key = (op, concrete)
        _call_counts[key] = _call_counts.get(key, 0) + 1
    return get_impl(op, concrete)(*args, **kwargs)


def get_op(op: str, backend: str | None = None) -> Callable[..., Any]:
    """A callable that runs ``op``, resolving the backend at each call."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OPS)}")
    return functools.partial(call, op, backend=backend)


def call_counts() -> dict[tuple[str, str], int]:
    """(op, concrete backend) -> number of calls dispatched so far (tests use it to prove what ran); calls traced
    into a ``torch.compile`` graph are not counted."""
    return dict(_call_counts)


def reset_call_counts() -> None:
    _call_counts.clear()
