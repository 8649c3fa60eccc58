"""Fused kernels that are not compiled C++/CUDA: ``srl_ext.kernels.triton``."""
