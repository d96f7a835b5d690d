"""Speed and memory sweeps against sequence resolution (tokens = T x H x W), CSV + matplotlib plots.

Modules:
  harness   timing (do_bench on CUDA, wall clock on CPU), peak memory, device peaks, roofline, CSV writer
  cases     inputs per op / network for a resolution, traffic models (bytes, exps) per mode
  baselines full attention (op and network, SDPA) and mambapy's parallel scan
  sweep     the sweep driver (``python -m glsmamba.bench``, ``glsmamba bench``)
  plot      CSV -> PNG; summary: CSV -> summary.md (the targets); store: copy a run to results/<device>/
  gpu.sh    one command for a GPU machine; bench_reference_speed.py: reference vs recurrent oracle on CPU
  static    ``glsmamba bench --static``: every kernel against its roofline without a GPU (results/static/):
            traffic (the interpreter traffic counter), sass (sm_90 compile of the intercepted launches),
            static_ops (the ops, shapes and compulsory bytes), extrapolate, estimate, report_static
"""
