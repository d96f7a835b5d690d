"""Test session set-up.

Without a CUDA device the Triton kernels run under the Triton interpreter on CPU tensors. The variable must be set
before ``triton`` is imported (``@triton.jit`` reads it at decoration time), hence here, at the top of conftest.
Tests marked ``gpu`` need compiled kernels on a CUDA device and are skipped without one.
"""

from __future__ import annotations

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

try:  # import triton now, under the variable above: its flags are read at import (a later test may patch the env)
    import triton  # noqa: E402, F401
except ImportError:  # pragma: no cover - triton is a dependency
    pass

HAS_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"

if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n 2` (the README's command): one process per core, one thread each
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with compiled Triton kernels (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests run: the GPU when compiled kernels are available, else CPU under the interpreter."""
    return torch.device("cuda") if HAS_GPU else torch.device("cpu")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored afterwards: on tiny tensors on a loaded 2-core machine, intra-op
    threads only add contention (measured 7x slower for the overfit runs with 2 threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
