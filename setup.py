"""Builds patchmix._C from csrc/ against the installed torch (no build isolation).

* ``csrc/*.cpp``: the CPU op kernels (also built by CMakeLists.txt, found by the same glob).
* ``csrc/python/*.cpp``: the pybind11 module glue (Python builds only).
* CUDA devices are served by the Triton kernels in ``kernels/`` (installed as ``patchmix._kernels``), so
  nothing here needs a CUDA compiler.
* ``PATCHMIX_NO_EXTENSION=1`` skips compilation entirely; the package then runs the reference ops on the CPU.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}
if os.environ.get("PATCHMIX_NO_EXTENSION", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/python/*.cpp"))
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    ext_modules = [CppExtension("patchmix._C", sources, extra_compile_args={"cxx": ["-O3", *openmp]},
                                extra_link_args=openmp)]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(
    packages=find_packages(include=["patchmix", "patchmix.*"]) + ["patchmix._kernels"],
    package_dir={"patchmix._kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
