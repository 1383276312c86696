"""Loads the compiled C++ extension ``patchmix._C`` once (a leaf: only torch is imported here).

``PATCHMIX_DISABLE_EXTENSION=1`` skips it (the CPU then runs the pure-PyTorch references, as on a machine
where the extension was not built); ``_registry`` announces either case once and ``patchmix.backends()`` says why.

A C++ extension works only with the torch it was compiled against. The build writes that version to
``patchmix/_C.torch_version`` (setup.py), and :func:`_load` compares it with the installed torch *before*
loading: loading runs the extension's op registrations, which cannot be undone, so a mismatch found afterwards
could only raise. A mismatch therefore leaves the extension unloaded (the references serve the CPU) with one line
naming both versions. An extension without that file (copied by hand) is checked after loading against the torch
headers it was compiled with (``build_info()["torch"]``), and a mismatch there raises :class:`ImportError`.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from types import ModuleType

import torch

#: Written by setup.py beside the extension: the ``torch.__version__`` it was compiled against.
VERSION_FILE = Path(__file__).resolve().parents[1] / "_C.torch_version"

REBUILD = "rebuild it with `pip install --no-build-isolation .` against the installed torch"


def torch_mismatch(built: str, installed: str) -> str | None:
    """The one-line refusal when an extension built against torch ``built`` would run under ``installed``, or
    None when they are the same version (the full version, local tag included: ``2.13.0+cpu``)."""
    if built.strip() == installed:
        return None
    return f"patchmix._C was built against torch {built.strip()}, but torch {installed} is installed: {REBUILD}"


def _load(version_file: Path = VERSION_FILE, installed: str = torch.__version__) -> tuple[ModuleType | None, str | None]:
    """``(patchmix._C, None)``, or ``(None, why it is not loaded)``."""
    if os.environ.get("PATCHMIX_DISABLE_EXTENSION", "0") == "1":
        return None, "disabled by PATCHMIX_DISABLE_EXTENSION=1"
    if version_file.is_file():
        refusal = torch_mismatch(version_file.read_text(), str(installed))
        if refusal is not None:
            return None, refusal
    try:
        module = importlib.import_module("patchmix._C")
    except ImportError as exc:  # not built, or built against another torch without the version file
        return None, f"{exc}; build it with `pip install --no-build-isolation .`"
    headers = module.build_info().get("torch")  # major.minor.patch, without a local or pre-release tag
    release = re.match(r"\d+\.\d+\.\d+", str(installed))
    if headers is not None and release is not None and headers != release.group(0):
        raise ImportError(f"patchmix._C was compiled with the headers of torch {headers}, but torch {installed} is "
                          f"installed: {REBUILD}")
    return module, None


C, ERROR = _load()
