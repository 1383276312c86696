"""Optional dependencies: each belongs to an extra of the package (``pip install 'patchmix[search]'``), and a
missing one fails with one line naming the extra to install.

``import patchmix``, the ops, the mixers and the loss need only torch and numpy; the genetic search, the
workflow's figures and statistics, and the bundled digits import their packages on first use through
:func:`require`. A leaf module: it imports nothing of patchmix but :mod:`patchmix.errors`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import PatchmixError

#: The distribution that provides each optional top-level module, where its name differs from the module's.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "cv2": "opencv-python-headless"}


class MissingExtraError(PatchmixError, ImportError):
    """An optional dependency is not installed. The message is one line naming the extra that installs it; the
    command line prints it and exits with 2, like any other :class:`patchmix.errors.PatchmixError`."""


def missing_extra(module: str, extra: str, feature: str) -> MissingExtraError:
    """The error for ``feature`` needing ``module``, which ``pip install 'patchmix[<extra>]'`` installs."""
    top = module.split(".")[0]
    package = DISTRIBUTIONS.get(top, top)
    return MissingExtraError(f"{feature} needs {package}, which is not installed: pip install 'patchmix[{extra}]'")


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra`` when it (or a dependency of it)
    is not installed. ``feature`` names what needs it, for the message (``"patchmix.search.search"``)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra(module, extra, feature) from exc
