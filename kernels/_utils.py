"""Small helpers shared by the Triton launchers, and the one answer to "can Triton run here, and if not, why".

This module imports only ``os`` and ``torch`` (Triton and NumPy lazily), so the backend registry
(``glsmamba.model.backend``) can ask it without importing any kernel.

The interpreter flag has one source: the ``TRITON_INTERPRET`` environment variable. Triton reads it when it
decorates a kernel, so the kernel modules record the value they were built with (:func:`record_build`, called at
their import); from then on a different live value makes the Triton backend unavailable with a reason, instead of
launching kernels built for the other mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from fractions import Fraction

import torch

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here (the message says why)."""


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (read live: it is what the next kernel import will be built with)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_built: list[bool] = []  # how the kernel modules were decorated: [True] for the interpreter; empty before any import


def record_build() -> None:
    """Called by every kernel module at import, before its ``@triton.jit``: remember the mode Triton builds them in
    (and, under the interpreter, make its custom-combine scans fold per step: :func:`vectorise_interpreter_scan`)."""
    if _built:
        return
    _built.append(interpreter_enabled())
    if _built[0]:
        vectorise_interpreter_scan()
        if os.environ.get("GLSMAMBA_INTERPRETER_CHECKS", "0") != "1":
            interpreter_overflow_checks(False)


def interpreter_overflow_checks(on: bool) -> bool | None:
    """Switch the Triton interpreter's integer-overflow assertions (``sanitize_overflow``: after every 32-bit add,
    sub and mul it recomputes the result in 64 bits and asserts it is in range; a CUDA launch compiles them only in
    debug mode). They never change a result, and they cost about a third of the interpreter's time on the scan
    kernels, so the kernel modules switch them off at import under the interpreter unless
    ``GLSMAMBA_INTERPRETER_CHECKS=1`` is set. Returns the previous setting (``None``: an interpreter without it)."""
    try:
        from triton.runtime import interpreter as ti
    except ImportError:  # pragma: no cover - depends on the install
        return None
    builder = getattr(ti, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or not hasattr(options, "sanitize_overflow"):
        return None
    previous = bool(options.sanitize_overflow)
    builder.options = dataclasses.replace(options, sanitize_overflow=bool(on))
    return previous


def operator_only(fn) -> bool:
    """Whether a scan or reduce combine function only applies operators to its arguments (no global, attribute or
    closure: e.g. ``return a1 * a2, a2 * b1 + b2``). On the NumPy arrays of the interpreter's tensors such a function
    computes exactly what the interpreter's element-wise ops would (they are the same NumPy operations), without
    their overhead."""
    code = fn.__code__
    return not (code.co_names or code.co_freevars or code.co_cellvars)


def vectorise_interpreter_scan() -> bool:
    """Make the Triton interpreter run ``tl.associative_scan`` with a custom combine one step at a time, with the
    combine applied to whole slices across the other axes, instead of one Python call per element.

    The interpreter's own fallback (``ScanOps.generic_scan``) calls the combine once per element of the block in
    row-major order: out[i] = combine(out[i - 1 along the axis], in[i]). This does the same left fold along the axis,
    in the same order, with the same float32 NumPy arithmetic, on slices: the combine of an associative scan is
    element-wise, so the results are bit-identical and the cost falls from one call per element to one per step
    (and to plain NumPy arithmetic for an :func:`operator_only` combine). Built-in cumsum/cumprod keep their NumPy
    paths.

    Applied once, only when ``triton.runtime.interpreter.ScanOps.generic_scan`` exists (the interpreters of triton
    3.6 to 3.9); on another interpreter it changes nothing and returns ``False`` (the fallback is slow, not wrong).
    Compiled kernels are never affected.
    """
    try:
        from triton.runtime import interpreter as ti
    except ImportError:  # pragma: no cover - depends on the install
        return False
    ops = getattr(ti, "ScanOps", None)
    if ops is None or not callable(getattr(ops, "generic_scan", None)):
        return False
    if getattr(ops.generic_scan, "_glsmamba_vectorised", False):
        return True
    import numpy as np

    def generic_scan(self, input):  # noqa: A002 - the interpreter's own parameter name
        datas = [arg.handle.data for arg in input]
        dtypes = [arg.dtype for arg in input]
        axis = self.axis
        outs = [np.empty_like(d) for d in datas]
        index = [slice(None)] * datas[0].ndim

        def at(i: int) -> tuple:
            index[axis] = i
            return tuple(index)

        acc = [np.take(d, 0, axis=axis) for d in datas]
        for o, a in zip(outs, acc, strict=True):
            o[at(0)] = a
        fn = self.combine_fn.fn
        direct = operator_only(fn)
        for i in range(1, datas[0].shape[axis]):
            cur = [np.take(d, i, axis=axis) for d in datas]
            ret = None
            if direct:
                with np.errstate(all="ignore"):  # (inf and NaN propagate as in the interpreter)
                    ret = fn(*acc, *cur)
                ret = ret if isinstance(ret, tuple) else (ret,)
                if not all(isinstance(r, np.ndarray) and r.dtype == d.dtype for r, d in zip(ret, datas, strict=True)):
                    ret = None  # (e.g. a Python scalar): the interpreter's way below
            if ret is None:
                ret = fn(*(self.to_tensor(a, dt) for a, dt in zip(acc, dtypes, strict=True)),
                         *(self.to_tensor(c, dt) for c, dt in zip(cur, dtypes, strict=True)))
                ret = ret if isinstance(ret, tuple) else (ret,)
            acc = []
            for o, r in zip(outs, ret, strict=True):
                v = np.asarray(r.handle.data if hasattr(r, "handle") else r)
                if o.ndim == 1:  # a 1-D block: the slices are scalars (the interpreter's shape (1,))
                    o[i] = v.reshape(-1)[0]
                else:
                    o[at(i)] = np.broadcast_to(v, o[at(i)].shape)
                acc.append(o[at(i)].copy())
        return [self.to_tensor(o, dt) for o, dt in zip(outs, dtypes, strict=True)]

    generic_scan._glsmamba_vectorised = True
    generic_scan.original = ops.generic_scan  # the interpreter's own (tests compare against it)
    ops.generic_scan = generic_scan
    return True


def interpreting() -> bool:
    """True when the kernels run (or, before any kernel module is imported, will run) under the CPU interpreter."""
    return _built[0] if _built else interpreter_enabled()


_triton_import: list[str | None] = []


def triton_import_error() -> str | None:
    """``None`` if Triton imports, else the reason (computed once)."""
    if not _triton_import:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _triton_import.append(None)
        except Exception as e:  # pragma: no cover - depends on the install
            _triton_import.append(f"triton is not importable ({type(e).__name__}: {e})")
    return _triton_import[0]


def triton_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the Triton backend cannot run on ``device`` (``None`` = it can).

    ``device=None`` asks about the machine: any CUDA device, or the interpreter.
    """
    err = triton_import_error()
    if err is not None:
        return err
    live = interpreter_enabled()
    if _built and _built[0] != live:
        built = "for the interpreter (TRITON_INTERPRET=1)" if _built[0] else "for CUDA (TRITON_INTERPRET unset)"
        return (f"the kernels were built {built} when first imported, and TRITON_INTERPRET is now "
                f"{os.environ.get('TRITON_INTERPRET')!r}: set the variable before the first import of triton")
    if device is None:
        if torch.cuda.is_available() or live:
            return None
        return "no CUDA device and the Triton interpreter is off (set TRITON_INTERPRET=1 before importing triton)"
    if device.type == "cuda":
        if live:
            return "TRITON_INTERPRET=1 is set: the interpreter runs kernels on CPU tensors only, got CUDA tensors"
        return None
    if device.type == "cpu":
        if live:
            return None
        return "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1 before importing triton)"
    return f"Triton kernels do not support device type {device.type!r}"


def check_runnable(*tensors: torch.Tensor | None, op: str) -> None:
    """Raise if the compiled/interpreted kernels cannot run on these tensors (never fall back silently)."""
    for t in tensors:
        if t is None:
            continue
        if t.dtype not in TRITON_DTYPES and t.is_floating_point():
            # float64 inputs are for the reference's gradcheck; the kernels compute in float32
            raise TypeError(f"{op}: the triton backend supports float16/bfloat16/float32 inputs, got {t.dtype}")
        reason = triton_unavailable_reason(t.device)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: triton backend cannot run on {t.device}: {reason}")


def device_guard(t: torch.Tensor):
    """Launch on the tensor's own CUDA device (multi-GPU safety); a no-op on CPU."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# The machine the CUDA geometry plans for when no CUDA device is there to ask (H100 / H200 SXM: 132 SMs).
DEFAULT_SMS = 132


# ---- launch configuration: the one switch for geometry and test-only knobs ----------------------------------------


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How the launchers choose their geometry; set with :func:`launch_config`, read with :func:`current_config`.

    Attributes:
        cuda_geometry: ``True``: the block sizes, chunking, grids, segment sizes and ``num_warps`` a CUDA launch
            uses, even under the interpreter (the static traffic count and the sm_90 report use this); ``False``:
            the interpreter's (few large programs); ``None`` (default): the geometry of where the kernels run.
        sms: streaming multiprocessors the CUDA geometry plans for (``None``: the CUDA device's own count, or
            :data:`DEFAULT_SMS` without one).
        scale: multiplies the machine's budget (SMs). A problem cut along independent
            dimensions (batch, channel blocks) by a factor r, run with ``scale = r``, makes exactly the choices the
            whole problem makes on the whole machine (exact: a ``Fraction`` is welcome), so a count on the cut
            problem extrapolates to the whole one (see ``bench/traffic.py``).
        tiles_per_chunk: forward tiles per chunk of the selective scan's chunk-parallel forward (tests: several
            chunks on tiny inputs; rounded up to whole checkpoint intervals); ``None``: one chunk unless the
            programs cannot fill two waves.
        bwd_splits: channel ranges per backward program of the scans (each range sums its own dB/dC, the ranges
            are summed afterwards in a fixed order); ``None``: more than one only when the programs cannot fill
            two waves.
        fwd_tile: steps per forward tile under the interpreter geometry (tests: a tile shorter than the checkpoint
            spacing); ``None``: one tile per checkpoint interval.
        fast: the kernels' inline-asm fast paths (``lg2.approx``, the approximate division: the ``FAST``
            constexpr); ``None``: where the kernels are compiled, never under the interpreter, which cannot run
            inline asm. ``True`` only for launches that are captured, not run (the sm_90 report compiles what a
            CUDA launch would).

    Launchers must take every machine-dependent decision through this object (:func:`gpu_geometry`,
    :func:`sm_budget`, :func:`current_config`), never from a module global or the device directly.
    """

    cuda_geometry: bool | None = None
    sms: int | None = None
    scale: Fraction | int = 1
    tiles_per_chunk: int | None = None
    bwd_splits: int | None = None
    fwd_tile: int | None = None
    fast: bool | None = None


# Process-wide, not a ContextVar: autograd runs the backward of CUDA tensors on its own threads.
_CONFIG: list[LaunchConfig] = [LaunchConfig()]


@contextlib.contextmanager
def launch_config(**changes) -> Iterator[LaunchConfig]:
    """Within the block, launchers use the current :class:`LaunchConfig` with ``changes`` applied (nestable;
    process-wide, so a backward run by autograd inside the block sees it too).

    Example: ``with launch_config(cuda_geometry=True, bwd_splits=2): ...``.
    """
    previous = _CONFIG[0]
    _CONFIG[0] = dataclasses.replace(previous, **changes)
    try:
        yield _CONFIG[0]
    finally:
        _CONFIG[0] = previous


def current_config() -> LaunchConfig:
    return _CONFIG[0]


def gpu_geometry() -> bool:
    """True when the launchers must choose the CUDA geometry (on CUDA, or when :func:`launch_config` asks)."""
    c = _CONFIG[0]
    return (not interpreting()) if c.cuda_geometry is None else c.cuda_geometry


def fast_paths() -> bool:
    """The ``FAST`` constexpr of the scan launches: inline-asm fast paths when compiled (see ``LaunchConfig.fast``)."""
    c = _CONFIG[0]
    return (not interpreting()) if c.fast is None else c.fast


def busiest_sm(programs: int, sms: Fraction | int) -> Fraction:
    """Issue time of the busiest SM for ``programs`` one-warp programs of equal work, in programs' work: it runs
    ceil(programs / sms) of them from min(4, that many) schedulers (0 for no programs: an empty batch)."""
    p = math.ceil(Fraction(programs) / sms)
    return Fraction(p, min(4, max(p, 1)))


def sm_budget(device: torch.device) -> Fraction:
    """The SM count the CUDA geometry plans for, times the config's ``scale`` (exact)."""
    c = _CONFIG[0]
    sms = c.sms
    if sms is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else DEFAULT_SMS
    return Fraction(sms) * Fraction(c.scale)
