"""pytest-benchmark timings of the hot ops at small sizes: ``python -m pytest bench/ --benchmark-only``.

Kept out of the default test run (``testpaths = ["tests"]``). Every (op, backend, mode) the case builders know
is a test; ones that cannot run here (triton without CUDA, mambapy missing) skip with the
reason. Compare runs with pytest-benchmark's own options (``--benchmark-autosave``, ``--benchmark-compare``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="pip install pytest-benchmark (in the [test] extra)")

from glsmamba.bench.cases import Shape, targets  # noqa: E402
from glsmamba.bench.harness import Skip  # noqa: E402
from glsmamba.bench.sweep import make_runner  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
# Small: 2 frames of 16 x 12 tokens (384), 64 channels (GPU: 5 x 32 x 24 = 3840 tokens, 384 channels).
SHAPE = Shape(2, 5, 32, 24, 384, 16) if DEVICE.type == "cuda" else Shape(1, 2, 16, 12, 64, 16)
HOT = ("selective_scan", "selective_scan_channel_last", "ordered_selective_scan", "space_time_scan",
       "space_time_merge", "deformable_aggregate", "attention")  # fmt: skip
BACKENDS = ("reference", "triton", "mambapy", "sdpa", "sdpa_math")  # compile: see the sweep (compile time)

CASES = [
    pytest.param(t, b, m, id=f"{t.key}-{b}-{m}")
    for t in targets("tiny")
    if t.op in HOT
    for b in t.backends
    if b in BACKENDS
    for m in ("fwd", "fwd+bwd")
]


@pytest.mark.parametrize("target,backend,mode", CASES)
def test_hot_op(benchmark, target, backend, mode):
    try:
        case = target.build(SHAPE, DTYPE, DEVICE, backend)
    except Skip as e:
        pytest.skip(str(e))
    run, _ = make_runner(case, mode, DEVICE)

    def step():
        for g in case.grad_inputs:
            g.grad = None
        run()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: JIT / autotune outside the measurement
    benchmark.group = f"{target.key} {mode} {SHAPE.label()}"
    benchmark.extra_info.update(backend=backend, tokens=SHAPE.tokens, dtype=str(DTYPE))
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
