"""Triton kernels for CUDA devices, installed as ``patchmix._kernels``: one module per op, each holding
``_<op>_kernel`` and its host launcher ``<op>_cuda``. Imported only when Triton is installed."""
