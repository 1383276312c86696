"""Loads the compiled C++ extension ``patchmix._C`` once (a leaf: only torch is imported here).

``PATCHMIX_DISABLE_EXTENSION=1`` skips it (the CPU then runs the pure-PyTorch references, as on a machine
where the extension was not built); ``_registry`` announces either case once.
"""

from __future__ import annotations

import importlib
import os


def _load():
    if os.environ.get("PATCHMIX_DISABLE_EXTENSION", "0") == "1":
        return None, "disabled by PATCHMIX_DISABLE_EXTENSION=1"
    try:
        return importlib.import_module("patchmix._C"), None
    except ImportError as exc:  # not built, or built against another torch
        return None, str(exc)


C, ERROR = _load()
