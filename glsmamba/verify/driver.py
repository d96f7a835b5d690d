"""``glsmamba verify``: does every Triton op match its PyTorch reference on this machine? And the whole network?

For every op case of :data:`~glsmamba.verify.cases.VERIFY_CASES` at the sizes of the level, the same inputs run
through the ``"reference"`` and the ``"triton"`` backend; the forward outputs and the gradients of every
differentiable input (for a random cotangent) are compared with the tolerance table
(:mod:`glsmamba.verify.tolerances`, the one the tests use). Then a whole GLSMamba network runs on both backends
(:func:`~glsmamba.verify.network.check_network`). :func:`verify` returns 0 when everything passes, 1 otherwise.

Without CUDA the Triton kernels run under the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1`` is set by
:func:`prepare_environment`, first thing in :func:`verify`, before anything imports Triton) with tiny shapes; on a
GPU the shapes are bigger and low-precision dtypes are included.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from glsmamba.verify.cases import OP_CASES, VERIFY_CASES, OpCase, Sizes, with_grad
from glsmamba.verify.report import Row, failure_rows, jsonable, print_table, summary_row, worst
from glsmamba.verify.tolerances import GRAD_FACTOR, compare

LEVELS = ("quick", "default", "full")
DT_SHIFT = -1.0
"""``delta ~ N(-1, 0.5^2)`` in the SSM cases: softplus(-1) ~ 0.3, steps short enough for the state to carry
information across the long sequences of the GPU levels."""


def prepare_environment() -> str | None:
    """Make Triton usable here: without CUDA, turn the interpreter on before Triton is imported.

    Returns ``None`` when fine, else why the Triton backend cannot be checked in this process.
    """
    if torch.cuda.is_available():  # importing torch does not import triton
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if "triton" in sys.modules:
        return ("triton was imported before the interpreter could be enabled and there is no CUDA device: "
                "run with TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"
    return None


def level_plan(level: str, on_gpu: bool) -> tuple[Sizes, tuple[str, ...]]:
    """The op sizes and dtype names checked at ``level`` (``"quick"``, ``"default"``, ``"full"``)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    full = level == "full"
    if not on_gpu:
        dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16") if full else ("float32",)
    else:
        dtypes = ("float32", "float16", "bfloat16") if full else ("float32", "bfloat16")
    if on_gpu and level != "quick":
        (bsz, ch, n, seq), thw = ((2, 96, 16, 2048), (5, 32, 24)) if full else ((2, 64, 16, 1024), (5, 16, 12))
    elif full:
        (bsz, ch, n, seq), thw = (2, 12, 8, 96), (3, 6, 5)
    else:
        (bsz, ch, n, seq), thw = (2, 6, 4, 37), (3, 5, 4)
    return Sizes(bsz, *thw, channels=ch, dstate=n, length=seq, window=(2, 3), offset_groups=2), dtypes


def _run_backend(case: OpCase, base: dict[str, Any], backend: str, seed: int) -> Any:
    """(outputs, gradient per differentiable input) of one backend, or the error text."""
    from glsmamba.model.backend import get_op

    kwargs = with_grad(base, case.grads)
    try:
        out = get_op(case.op, backend=backend)(**kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        cots = [torch.randn(o.shape, generator=g, dtype=torch.float32).to(device=o.device, dtype=o.dtype)
                for o in outs]
        grads = torch.autograd.grad(outs, [kwargs[k] for k in case.grads], cots, allow_unused=True)
        return outs, dict(zip(case.grads, grads, strict=True))
    except Exception as e:  # reported as a failing row
        return f"{type(e).__name__}: {e}"


def op_rows(case: OpCase, sizes: Sizes, device: torch.device, dtype_name: str, seed: int) -> list[Row]:
    """The forward and the backward row of one op case: Triton against the reference on the same inputs."""
    base = case.inputs(sizes, getattr(torch, dtype_name), device, torch.Generator(device="cpu").manual_seed(seed),
                       dt_shift=DT_SHIFT)
    ref, tri = (_run_backend(case, base, b, seed) for b in ("reference", "triton"))
    common = {"op": case.op, "backend": "triton", "shape": case.label(sizes), "dtype": dtype_name}
    if isinstance(ref, str) or isinstance(tri, str):
        which, msg = ("reference", ref) if isinstance(ref, str) else ("triton", tri)
        return failure_rows(common, f"{which} failed: {msg}")
    if len(ref[0]) != len(tri[0]):
        return failure_rows(common, f"triton returned {len(tri[0])} outputs, reference {len(ref[0])}")
    fwd = {str(i): compare(r, o, dtype_name, "fwd") for i, (r, o) in enumerate(zip(ref[0], tri[0], strict=True))}
    per_grad = {k: compare(ref[1][k], tri[1][k], dtype_name, "grad") for k in case.grads}
    bwd = summary_row(common, f"bwd (worst: d{worst(per_grad)[0]})", per_grad)
    bwd["grads"] = {k: {kk: vv for kk, vv in c.row().items() if kk != "note"} for k, c in per_grad.items()}
    return [summary_row(common, "fwd", fwd), bwd]


def run_checks(level: str, device: torch.device, on_gpu: bool, ops: Sequence[str] | None, with_model: bool,
               seed: int, problem: str | None = None) -> list[Row]:
    """Every row of the check: the op cases (only ``ops`` if given), then the whole network."""
    from glsmamba.model import backend as registry

    problem = problem or registry.triton_unavailable_reason(device)
    if problem is not None:
        return failure_rows({"op": "*", "backend": "triton", "shape": "-", "dtype": "-"}, problem, ("available",))
    sizes, dtypes = level_plan(level, on_gpu)
    rows: list[Row] = []
    for key in VERIFY_CASES:
        case = OP_CASES[key]
        if ops and case.op not in ops:
            continue
        for dt in dtypes:
            rows.extend(op_rows(case, sizes, device, dt, seed))
    if with_model:
        from glsmamba.verify.network import check_network

        rows.extend(check_network(level, device, seed))
    return rows


def verify(level: str | None = None, ops: Sequence[str] | None = None, with_model: bool = True, seed: int = 0,
           as_json: bool = False) -> int:
    """Run the check and print the table (or one JSON object); 0 when every check passed, else 1.

    ``level`` defaults to ``"default"`` on a GPU and ``"quick"`` on the CPU interpreter.
    """
    problem = prepare_environment()  # first: nothing may import triton before this
    from glsmamba.model import backend as registry

    on_gpu = torch.cuda.is_available() and not registry.interpreter_enabled()
    device = torch.device("cuda" if on_gpu else "cpu")
    level = level or ("default" if on_gpu else "quick")
    start = time.time()
    header = {
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "level": level,
        "tolerances": f"glsmamba/verify/tolerances.py: |out - ref| <= atol + rtol * |ref|, grads x{GRAD_FACTOR:g}",
    }
    threads = torch.get_num_threads()
    if not on_gpu:  # tiny CPU tensors: intra-op threads only add overhead (and contention on shared machines)
        torch.set_num_threads(1)
    try:
        rows = run_checks(level, device, on_gpu, ops, with_model, seed, problem)
    finally:
        torch.set_num_threads(threads)
    header["seconds"] = round(time.time() - start, 1)
    ok = all(r["passed"] for r in rows)
    if as_json:
        print(json.dumps(jsonable({**header, "passed": ok, "rows": rows}), indent=2))
    else:
        print_table(header, rows)
    return 0 if ok else 1


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as e:  # pragma: no cover - depends on the install
        return f"not importable ({type(e).__name__})"
