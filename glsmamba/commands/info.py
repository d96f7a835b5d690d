"""``glsmamba info``: versions, devices, and which backends can run here (and why not)."""

from __future__ import annotations

import argparse
import json
import platform

HELP = "show torch/triton versions, devices and which backends are available (and why not)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def collect() -> dict:
    import numpy
    import torch

    from glsmamba.model import backend

    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # pragma: no cover - depends on the install
        triton_version = f"not importable ({type(e).__name__}: {e})"
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    status = backend.backend_status()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "devices": devices,
        "triton_interpreter": backend.interpreter_enabled(),
        "default_backend": backend.current_backend(),
        "backends": {name: ("available" if why is None else f"unavailable: {why}") for name, why in status.items()},
        "reference_cpu_kernels": _cpu_kernels_status(),
    }


def _cpu_kernels_status() -> str:
    """Whether the reference's no-grad CPU paths run their C++ kernels here (building them on first use)."""
    from glsmamba.reference import _cpu_kernels

    try:
        mode = _cpu_kernels.mode()
    except ValueError as e:
        return f"off: {e}"
    if mode == "0":
        return "off (GLSMAMBA_CPU_KERNEL=0): PyTorch only"
    why = _cpu_kernels.unavailable_reason()
    if why is not None:
        return f"unavailable, PyTorch paths run: {why}"
    return f"available (GLSMAMBA_CPU_KERNEL={mode}; cache {_cpu_kernels.cache_dir()})"


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key:<{width}}")
            for k, v in value.items():
                print(f"  {k:<{width - 2}} {v}")
        elif isinstance(value, list):
            print(f"{key:<{width}} {', '.join(value)}")
        else:
            print(f"{key:<{width}} {value}")
    return 0
