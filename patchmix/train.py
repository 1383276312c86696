"""Compatibility: the training layer lives in :mod:`patchmix.training` (one module per concern); this module
re-exports its public names so that ``from patchmix.train import train_model`` keeps working."""

from .training import *  # noqa: F403
from .training import __all__  # noqa: F401
