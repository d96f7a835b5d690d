"""Hand-written C++ kernels of two no-grad reference fast paths, for x86-64 CPUs with AVX2 + FMA.

* :func:`gathered_scan`: :func:`glsmamba.reference.ordered_scan.ordered_selective_scan` without autograd, with dt
  shared by the directions (as the model passes it), steps the recurrence through it: the same formula as
  :func:`glsmamba.reference.ordered_scan.gathered_steps` (gathers by the scan orders, ``dt u``, the decays by the
  reference's polynomial :func:`glsmamba.reference._scan_seq.exp2`, ``D u``) with the index-add into the group sums
  fused in, over the whole sequence in one call.
* :func:`deformable`: :func:`glsmamba.reference.deformable.deformable_aggregate` without autograd in fp32: the
  sample positions, corner rows and bilinear coefficients of every (token, group, tap) computed per token, in the
  PyTorch fast path's order of operations, and the weighted corner rows summed per channel vector.
* :func:`grouped_deformable_add`: the grouped (DCNv2-style) form of that aggregation, each tap's unit-weight
  sample mixed by a ``(C / Gw) x (C / Gw)`` matrix per channel group and tap, added into an output in one pass per
  token (the grouped STMM modulation without autograd on the reference backend).

Their outputs are held to the oracles' in the tests (values and NaN/inf reach); only the rounding of the sums
differs. Like the compiled fused steps (Inductor's C++ backend) they need a C++ compiler at run time: the first
call builds ``_cpu_kernels.cpp`` with ``$CXX`` or ``g++`` (``-O3 -mavx2 -mfma -fopenmp``) into a cache directory
(``$GLSMAMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/glsmamba`` or ``~/.cache/glsmamba``), keyed by a hash of the source
and the flags. They use as many OpenMP threads as torch has intra-op threads.

``GLSMAMBA_CPU_KERNEL``: ``auto`` (the default: used where they build; where they do not -- no compiler, no AVX2,
a failing build -- :func:`unavailable_reason` says why and the PyTorch paths run), ``1`` (always; a missing kernel
raises :class:`RuntimeError` with the reason), ``0`` (never: PyTorch only). Measured: ``bench/bench_cpu_scan_kernel.py``
and the README.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from glsmamba.reference._scan_seq import _EXP2_COEFFS

SOURCE = Path(__file__).with_name("_cpu_kernels.cpp")
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
_LIB: dict = {}  # "lib": the loaded library, or "reason": why there is none (built once per process)


def mode() -> str:
    """``GLSMAMBA_CPU_KERNEL`` (read at every call): ``auto``, ``0`` or ``1``."""
    value = os.environ.get("GLSMAMBA_CPU_KERNEL", "auto")
    if value not in ("auto", "0", "1"):
        raise ValueError(f"GLSMAMBA_CPU_KERNEL must be 'auto', '0' or '1', got {value!r}")
    return value


def cache_dir() -> Path:
    root = os.environ.get("GLSMAMBA_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glsmamba"


def _cpu_reason() -> str | None:
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        return f"they need AVX2 and FMA; torch reports the CPU capability {cap!r}"
    return None


def _build() -> ctypes.CDLL:
    """Compiles (once per source, flags and compiler; cached on disk) and loads the library. Raises RuntimeError
    naming the compiler and its error output when the build fails."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler: g++ is not on PATH and CXX is not set")
    defs = tuple(f"-DCOEF{k}={c!r}f" for k, c in enumerate(_EXP2_COEFFS))
    key = hashlib.sha256("\0".join((SOURCE.read_text(), cxx, *FLAGS, *defs)).encode()).hexdigest()[:16]
    target = cache_dir() / f"glsm_cpu_kernels_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # built aside, then renamed: concurrent builds
        os.close(fd)
        cmd = [cxx, *FLAGS, *defs, str(SOURCE), "-o", tmp]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    fn = lib.glsm_gathered_scan
    fn.argtypes = ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
                   + [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 7)
    fn.restype = ctypes.c_int
    fn = lib.glsm_deformable
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 8
    fn.restype = ctypes.c_int
    fn = lib.glsm_grouped_deformable_add
    fn.argtypes = ([ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 11)
    fn.restype = ctypes.c_int
    return lib


def unavailable_reason() -> str | None:
    """None when the kernels can run here (building them on the first call), else a sentence saying why not."""
    if "lib" not in _LIB and "reason" not in _LIB:
        reason = _cpu_reason()
        if reason is None:
            try:
                _LIB["lib"] = _build()
            except (RuntimeError, OSError) as e:
                reason = str(e)
        if reason is not None:
            _LIB["reason"] = f"the reference's CPU kernels are unavailable: {reason}"
    return _LIB.get("reason")


def enabled() -> bool:
    """Whether the kernels run here under ``GLSMAMBA_CPU_KERNEL`` (not ``0``, and built; never raises for a missing
    kernel: the bench scripts, ``glsmamba info`` and the tests ask it)."""
    return mode() != "0" and unavailable_reason() is None


def use_kernel(dtype: torch.dtype) -> bool:
    """Whether a no-grad fast path computing in ``dtype`` (float32 only) runs its kernel, per
    ``GLSMAMBA_CPU_KERNEL``; under ``1`` a kernel that cannot run raises RuntimeError with the reason."""
    m = mode()
    if m == "0" or dtype != torch.float32:
        return False
    reason = unavailable_reason()
    if reason is not None and m == "1":
        raise RuntimeError(f"GLSMAMBA_CPU_KERNEL=1: {reason}")
    return reason is None


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _i64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int64).contiguous()


def gathered_scan(out: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, B: tuple[torch.Tensor, bool],
                  C: tuple[torch.Tensor, bool], idx: torch.Tensor, dirs: torch.Tensor, A2: torch.Tensor,
                  D_rows: torch.Tensor | None, target: torch.Tensor) -> None:
    """Adds the scan of the rows of ``idx`` into the group sums ``out (G*L, Bsz, D)`` (fp32, time-major), in place.

    x and dt ``(Bsz, L, D)`` natural order; B and C as ``ordered_scan._natural_rows`` gives them (``(Bsz, M, N)``,
    per direction or not); ``idx (n, S)`` the natural token read at step t by row s of direction ``dirs[s]``;
    A2 ``(S, N, D)`` (A log2(e) per row); D_rows ``(S, D)`` or None; ``target (n, S)`` the row of ``out`` each step
    adds to. Every tensor is made fp32 (int64 for indices) and contiguous here; the caller checked the shapes.
    """
    Bsz, L, D = x.shape
    n, S = idx.shape
    N = B[0].shape[-1]
    if not (out.is_contiguous() and out.dtype == torch.float32 and out.shape == (out.shape[0], Bsz, D)):
        raise ValueError(f"out must be contiguous fp32 (G*L, {Bsz}, {D}), got {tuple(out.shape)} {out.dtype}")
    xs, dts, Bs, Cs, A2s = _f32(x), _f32(dt), _f32(B[0]), _f32(C[0]), _f32(A2)
    Ds = None if D_rows is None else _f32(D_rows.reshape(S, D))
    boff, coff = (_i64(dirs * L if per_dir else torch.zeros_like(dirs)) for per_dir in (B[1], C[1]))
    ix, tg = _i64(idx), _i64(target)
    rc = _LIB["lib"].glsm_gathered_scan(xs.data_ptr(), dts.data_ptr(), Bs.data_ptr(), Bs.shape[1], Cs.data_ptr(),
                                         Cs.shape[1], ix.data_ptr(), boff.data_ptr(), coff.data_ptr(), A2s.data_ptr(),
                                         None if Ds is None else Ds.data_ptr(), tg.data_ptr(), out.data_ptr(), Bsz, L,
                                         S, n, N, D, torch.get_num_threads())
    if rc:
        raise MemoryError(f"the CPU scan kernel could not allocate its state ({S} x {Bsz} x {N} x {D} floats)")


def deformable(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor,
               shape: tuple[int, int, int]) -> torch.Tensor:
    """:func:`glsmamba.reference.deformable.deformable_aggregate`'s value in fp32, ``(Bsz, L, C)`` (the caller
    checked the arguments and casts the result). The inputs are made fp32 (taps int64) and contiguous here."""
    Bsz, L, C = x.shape
    Goff, P = offsets.shape[2], offsets.shape[3]
    T, H, W = shape
    xs, off, msk, wgt, tp = _f32(x), _f32(offsets), _f32(mask), _f32(weight), _i64(taps.cpu())
    out = torch.empty(Bsz, L, C)
    rc = _LIB["lib"].glsm_deformable(xs.data_ptr(), off.data_ptr(), msk.data_ptr(), wgt.data_ptr(), tp.data_ptr(),
                                     out.data_ptr(), Bsz, T, H, W, Goff, P, C, torch.get_num_threads())
    if rc:
        raise MemoryError(f"the CPU deformable kernel could not allocate its per-thread buffers ({P} taps)")
    return out


def grouped_deformable_add(out: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor,
                           weight: torch.Tensor, taps: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """``out += sum_p W_p sample_p(y)`` in place, fp32, no autograd: a grouped modulated deformable convolution.

    ``sample_p`` is :func:`glsmamba.reference.deformable.deformable_aggregate`'s sample of tap ``taps[p]`` alone
    with unit weight (offsets ``(Bsz, L, Goff, P, 2)`` and mask ``(Bsz, L, Goff, P)`` as there); ``weight
    (P, Gw, O, I)`` mixes it inside each of Gw groups of ``C / Gw`` channels: ``out[g, o] += sum_{p, i}
    weight[p, g, o, i] sample_p[g, i]``. ``y`` and ``out`` are ``(Bsz, L, C)`` fp32 with contiguous rows (any batch
    stride). The sums run over the taps and inputs in order, per token, in one pass. Returns ``out``.
    """
    Bsz, L, C = y.shape
    P, Gw, cg = weight.shape[0], weight.shape[1], weight.shape[2]
    Goff = offsets.shape[2]
    T, H, W = shape
    for name, t in (("y", y), ("out", out)):
        if t.dtype != torch.float32 or t.shape != (Bsz, L, C) or t.stride()[1:] != (C, 1):
            raise ValueError(f"{name} must be fp32 (Bsz, L, C) = {(Bsz, L, C)} with contiguous rows, got "
                             f"{tuple(t.shape)} {t.dtype} strides {t.stride()}")
    opad = -(-cg // 8) * 8
    w = torch.zeros(P, Gw, cg, opad)
    w[..., :cg] = weight.detach().to(torch.float32).transpose(2, 3)  # (P, Gw, I, O), outputs padded to 8
    off, msk, tp = _f32(offsets), _f32(mask), _i64(taps.cpu())
    fn = _LIB["lib"].glsm_grouped_deformable_add
    rc = fn(y.data_ptr(), y.stride(0), off.data_ptr(), msk.data_ptr(), w.data_ptr(), tp.data_ptr(), out.data_ptr(),
            out.stride(0), Bsz, T, H, W, Goff, P, C, Gw, opad, torch.get_num_threads())
    if rc:
        raise MemoryError(f"the CPU grouped deformable kernel could not allocate its per-thread buffers ({P} x {C})")
    return out
