"""Builds patchmix._C from csrc/ against the installed torch (no build isolation).

* ``csrc/*.cpp``: op kernels (also built by CMakeLists.txt, found by the same glob).
* ``csrc/python/*.cpp``: the pybind11 module glue (Python builds only).
* ``csrc/cuda/*.cu``: CUDA sources, compiled only when the installed torch has CUDA.
* ``PATCHMIX_NO_EXTENSION=1`` skips compilation entirely; the package then runs the reference ops.

The Triton kernels in ``kernels/`` install as ``patchmix._kernels``.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}
if os.environ.get("PATCHMIX_NO_EXTENSION", "0") != "1":
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/python/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx = ["-O3", *openmp] + (["-DPATCHMIX_WITH_CUDA"] if with_cuda else [])
    if with_cuda:
        ext = CUDAExtension(
            "patchmix._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-DPATCHMIX_WITH_CUDA"]},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension("patchmix._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=openmp)
    ext_modules = [ext]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(
    packages=find_packages(include=["patchmix", "patchmix.*"]) + ["patchmix._kernels"],
    package_dir={"patchmix._kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
