"""Triton kernels for CUDA devices, installed as ``patchmix._kernels``: one module per op family, each holding
``_<op>_kernel`` and its host launcher ``<op>_cuda``, plus the device-side data checks they share
(``_checks``). Imported by ``patchmix.ops._registry`` only when Triton is installed."""
