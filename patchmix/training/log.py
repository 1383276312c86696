"""What a run tells: a JSON-lines event log for programs (``log.jsonl``, rank 0 only), messages and
progress bars for people (stderr, silenced by ``--quiet``)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from torch import Tensor

from .._optional import require
from ..errors import OutputError
from ..files import write_error


def _tqdm():
    return require("tqdm", "workflow", "the training's progress bars").tqdm


class Log:
    """JSON-lines event log (``log.jsonl``, rank 0 only) plus human messages (suppressed by ``quiet``).

    A context manager: leaving the ``with`` block closes the file, also when interrupted or failing.
    """

    def __init__(self, path: str | None = None, quiet: bool = False, enabled: bool = True):
        self.quiet = quiet
        self.enabled = enabled
        self._file = None
        self.path = path
        if path and enabled:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self._file = open(path, "a", buffering=1)
            except OSError as exc:
                raise write_error(path, exc) from None

    @classmethod
    def silent(cls) -> Log:
        """A log that records and prints nothing (library calls without a run folder)."""
        return cls(quiet=True, enabled=False)

    def event(self, kind: str, **fields) -> None:
        if self._file is not None:
            rec = {"time": round(time.time(), 3), "event": kind, **fields}
            try:
                self._file.write(json.dumps(rec, default=_json_default) + "\n")
            except OSError as exc:  # a full disk: the lines before this one are in the file
                raise write_error(self.path, exc) from None

    def info(self, msg: str) -> None:
        if self.enabled and not self.quiet:
            _tqdm().write(msg, file=sys.stderr)

    def progress(self, **kw):
        """A tqdm bar on stderr; disabled when quiet, on ranks other than 0, and when stderr is no terminal."""
        return _tqdm()(disable=True if (self.quiet or not self.enabled) else None,  # None: off when not a terminal
                    dynamic_ncols=True, leave=False, file=sys.stderr, **kw)

    def close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as exc:
                raise write_error(self.path, exc) from None

    def __enter__(self) -> Log:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.close()  # also when interrupted or failing: the JSON-lines log is flushed and closed
        except OutputError:
            if exc_type is None:  # else the error already leaving the block is the one to report
                raise


def _json_default(o):
    if isinstance(o, Tensor):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


__all__ = ["Log"]
