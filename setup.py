"""Builds patchmix._C from csrc/ against the torch already installed: ``pip install --no-build-isolation .``.

* ``csrc/*.cpp``: the CPU op kernels (also built by CMakeLists.txt, found by the same glob).
* ``csrc/python/*.cpp``: the pybind11 module glue (Python builds only).
* CUDA devices are served by the Triton kernels in ``kernels/`` (installed as ``patchmix._kernels``), so
  nothing here needs a CUDA compiler.
* The extension only works with the torch it was compiled against, so the build records that version twice: in
  the wheel's metadata (``torch>=X.Y,<X.(Y+1)``, so that pip will not swap torch under it) and in
  ``patchmix/_C.torch_version`` beside the extension, which ``patchmix.ops._extension`` compares with the
  installed torch before loading it.
* A build without torch importable (an isolated build: ``pip install .`` without ``--no-build-isolation``) stops
  with one line saying so, instead of compiling against a torch the user does not run.
* ``PATCHMIX_DISABLE_EXTENSION=1`` skips compilation entirely (the same variable disables loading a built
  extension at run time); the package then runs the reference ops on the CPU.
"""

import glob
import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

#: torch versions the Python code supports; an extension build narrows it to the minor version it compiled against
TORCH_RANGE = "torch>=2.11,<2.15"
CORE = ["numpy"]
TORCH_VERSION_FILE = "_C.torch_version"  # beside patchmix/_C*.so; read by patchmix/ops/_extension.py

NO_TORCH = ("patchmix: building the C++ extension needs torch installed in the build environment; install torch, "
            "then `pip install --no-build-isolation .` (or set PATCHMIX_DISABLE_EXTENSION=1 to skip the extension)")


def _disabled() -> bool:
    if os.environ.get("PATCHMIX_NO_EXTENSION") is not None:
        print("patchmix: PATCHMIX_NO_EXTENSION is deprecated; use PATCHMIX_DISABLE_EXTENSION", file=sys.stderr)
    return "1" in (os.environ.get("PATCHMIX_DISABLE_EXTENSION", "0"), os.environ.get("PATCHMIX_NO_EXTENSION", "0"))


try:
    import torch
except ImportError:  # an sdist needs no torch; building the extension does (RefuseBuild)
    torch = None


class RefuseBuild(build_ext):
    """The build command when torch is not importable: stop with one line instead of a compile error."""

    def run(self):
        sys.exit(NO_TORCH)


def _with_torch_version(base):
    """``base`` (torch's BuildExtension) that also writes the torch version beside the built extension, in the build
    folder (wheels) and, for ``--inplace`` and editable installs, beside the copy in the source tree."""

    class Build(base):
        def _version_file(self):
            return os.path.join(self.build_lib, "patchmix", TORCH_VERSION_FILE)

        def build_extensions(self):
            super().build_extensions()
            with open(self._version_file(), "w") as f:
                f.write(torch.__version__ + "\n")

        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            package = self.get_finalized_command("build_py").get_package_dir("patchmix")
            self.copy_file(self._version_file(), os.path.join(package, TORCH_VERSION_FILE))

        def get_outputs(self):
            return [*super().get_outputs(), self._version_file()]

    return Build


ext_modules = []
cmdclass = {}
install_requires = [TORCH_RANGE, *CORE]
if not _disabled():
    if torch is None:
        ext_modules = [Extension("patchmix._C", sources=[])]
        cmdclass = {"build_ext": RefuseBuild}
    else:
        from torch.utils.cpp_extension import BuildExtension, CppExtension

        sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/python/*.cpp"))
        openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
        ext_modules = [CppExtension("patchmix._C", sources, extra_compile_args={"cxx": ["-O3", *openmp]},
                                    extra_link_args=openmp)]
        cmdclass = {"build_ext": _with_torch_version(BuildExtension.with_options(use_ninja=True))}
        major, minor = (int(p) for p in torch.__version__.split(".")[:2])
        install_requires = [f"torch>={major}.{minor},<{major}.{minor + 1}", *CORE]

setup(
    packages=find_packages(include=["patchmix", "patchmix.*"]) + ["patchmix._kernels"],
    package_dir={"patchmix._kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=install_requires,
)
