"""GLSMamba (ICCV 2025) for video human pose estimation: Triton kernels with pure-PyTorch references.

Subpackages (each a top-level folder of the repository, installed under this one namespace):

  ``glsmamba.kernels``    Triton kernels, one module per op family
  ``glsmamba.reference``  pure PyTorch twins of the kernels (same names and signatures), and their oracles
  ``glsmamba.model``      the network, its configs, checkpoints and the backend registry
  ``glsmamba.vhpe``       the pose pipeline: formats, codec, metrics, data, training, inference, demo
  ``glsmamba.bench``      speed/memory sweeps and static kernel reports
  ``glsmamba.verify``     every Triton op and the whole network checked against the reference
  ``glsmamba.cli``        the ``glsmamba`` command line (``python -m glsmamba`` too)

Importing this package imports nothing else (no torch, no Triton).
"""

__version__ = "0.1.0"
