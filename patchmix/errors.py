"""The errors patchmix raises for bad input, one class per kind, each with the exit code the CLI returns.

The command line maps an error to its exit code by type (``exc.exit_code``), never by its message:

* :class:`ConfigError`: a setting that cannot run (unknown key, bad value, conflicting flags).
* :class:`DatasetError`: a dataset that is missing or malformed (the message names the file; ``layout`` holds
  the expected layout in full).
* :class:`PolicyError`: a policy file or object that does not fit (corrupt, wrong grid, unknown classes).
* :class:`CheckpointError`: a checkpoint that is missing, unreadable, of another kind, or of other settings.
* :class:`OutputError`: an output folder or file patchmix must not or cannot write into (foreign files, in
  use by another command, a file in the way, a read-only disk).

All of them exit with 2, and their message is one line naming the argument or file and what was expected
(the CLI points a dataset error at ``--help``, which lists the layouts). Anything else that escapes a command
is a bug in patchmix and exits with 1 with a traceback. The value-like ones also subclass :class:`ValueError`, so library callers that catch
``ValueError`` keep working. An interrupted training (``patchmix.training.Interrupted``) exits with 130.
"""

from __future__ import annotations


class PatchmixError(Exception):
    """Base class of patchmix's own errors; ``exit_code`` is what the command line returns for it."""

    exit_code = 2


class ConfigError(PatchmixError, ValueError):
    """A configuration that cannot run (unknown key, bad value); the CLI prints it and exits with 2.
    ``key``: the setting at fault (``"train.lr"``), so that the CLI can name the flag that set it."""

    def __init__(self, message: str = "", key: str | None = None):
        super().__init__(message)
        self.key = key


class DatasetError(PatchmixError, RuntimeError):
    """A dataset that is missing or malformed. The message is one line naming the file and what was expected;
    ``layout`` holds the expected on-disk layout in full (several lines), where there is one."""

    def __init__(self, message: str, layout: str | None = None):
        super().__init__(message)
        self.layout = layout


class PolicyError(PatchmixError, ValueError):
    """A policy file or object that cannot be used (corrupt, wrong grid size, unknown classes)."""


class CheckpointError(PatchmixError, ValueError):
    """A checkpoint that cannot be used: missing, unreadable (or not safe to read), of another method, seed,
    format or settings."""


class OutputError(PatchmixError):
    """An output folder or file that patchmix refuses to write into: it holds files that are not a patchmix
    run, another command holds it (its lock), or it cannot be written (a file in the way, a read-only disk)."""


#: The error types by name: how a DDP rank raises the error that rank 0 found (the name crosses the wire).
BY_NAME = {cls.__name__: cls for cls in (PatchmixError, ConfigError, DatasetError, PolicyError, CheckpointError,
                                         OutputError)}


__all__ = ["BY_NAME", "CheckpointError", "ConfigError", "DatasetError", "OutputError", "PatchmixError",
           "PolicyError"]
