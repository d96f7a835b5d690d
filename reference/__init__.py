"""Pure-PyTorch references: the same file names, function names and signatures as ``kernels/``."""
