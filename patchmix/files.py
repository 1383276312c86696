"""Writing files so that a kill never leaves half of one, and reading the JSON files patchmix writes.

Every file patchmix writes (configs, metrics, logbooks, policies, checkpoints, figures, reports) goes through
:func:`atomic_path`: the content is written to a temporary file beside the target, flushed to disk, and
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a reader sees the old file or
the new one, never a torn one. A write the operating system refuses (a full disk, a quota, a read-only folder)
raises :class:`~patchmix.errors.OutputError` naming the file (:func:`write_error`): the command line exits with 2
and one line, and every file written before it is intact.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from .errors import OutputError

_MISSING = object()


def write_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The error for a file the operating system would not let patchmix write (``ENOSPC``, ``EDQUOT``, ``EROFS``,
    ``EACCES``, ...): one line naming the file and the reason."""
    return OutputError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}; the files written before it are "
                       f"intact")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """``with atomic_path(p) as tmp:`` write ``tmp`` (a path beside ``p``); on success it replaces ``p``,
    on an error it is removed and ``p`` is untouched. Parent folders are created. An ``OSError`` of the write
    (the caller's or the flush's) becomes an :class:`~patchmix.errors.OutputError` naming ``p``."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed its handle: flush the data to disk here
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON atomically (values JSON cannot hold are written as their ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = _MISSING) -> Any:
    """The JSON in ``path``; ``default`` when the file is missing or not valid JSON (if given; else raises)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        if default is _MISSING:
            raise
        return default


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (a checkpoint is replaced whole or not at all)."""
    import torch

    # through a Python file: torch's own writer turns a full disk into a RuntimeError, a Python write an OSError
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


__all__ = ["atomic_path", "atomic_write_text", "read_json", "torch_save", "write_error", "write_json"]
