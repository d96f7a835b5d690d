"""pytest set-up for the pytest-benchmark tests in bench/ (run with ``pytest bench/``; not in the default run).

Triton is benched on CUDA only, so the interpreter is never switched on here; the kernels' tests live in tests/.
"""
