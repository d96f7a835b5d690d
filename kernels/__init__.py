"""Triton kernels. Every public function here has a twin of the same name and signature in ``reference/``.

Importing a submodule imports Triton; set ``TRITON_INTERPRET=1`` *before* that to run the kernels on CPU tensors.
"""
