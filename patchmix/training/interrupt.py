"""Ctrl-C during training: the first one finishes the current step, writes a resumable checkpoint and stops
(:class:`Interrupted`); a second one stops at once (``KeyboardInterrupt``).

The request is a plain Python flag set by the signal handler: checking it after every step reads nothing
from the device.
"""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import PatchmixError
from .runtime import Runtime


class Interrupted(PatchmixError):
    """Training stopped on request; a resumable checkpoint was written to ``path``. Exit code 130."""

    exit_code = 130

    def __init__(self, path: str | None):
        super().__init__(f"interrupted; checkpoint written to {path}; continue with --resume")
        self.path = path


class StopFlag:
    """``with StopFlag():`` installs the Ctrl-C handler (main thread only) and restores the old one on leaving.

    The request is process-wide and sticky (a class attribute): a Ctrl-C that lands after one training's
    last step check (during its final evaluation, say) stops the next training at its first step instead
    of being forgotten, and the workflow checks it between trainings (:func:`stop_requested`).
    """

    requested = False

    def __init__(self):
        self._old = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if StopFlag.requested:
            raise KeyboardInterrupt
        StopFlag.requested = True
        try:
            sys.stderr.write("\n[patchmix] interrupt: finishing this step and writing a checkpoint "
                             "(Ctrl-C again to stop at once)\n")
        except Exception:
            pass

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class StopCheck:
    """``check()``: whether the training stops now, agreed by every rank: Ctrl-C (:class:`StopFlag`) or, for
    tests that simulate a kill, ``after_steps`` optimizer steps counted by ``step()``. Under DDP the ranks
    agree over the host-side control group (:meth:`Runtime.any_rank`): nothing is read from the device."""

    def __init__(self, rt: Runtime, after_steps: int | None = None):
        self.rt, self.after_steps, self.steps = rt, after_steps, 0

    def step(self) -> None:
        self.steps += 1

    def __call__(self) -> bool:
        want = StopFlag.requested or (self.after_steps is not None and self.steps >= self.after_steps)
        return self.rt.any_rank(want)


def stop_requested() -> bool:
    """Whether Ctrl-C asked this process to stop (see :class:`StopFlag`)."""
    return StopFlag.requested


def reset_stop_request() -> None:
    """Forget an earlier Ctrl-C (each CLI command starts with none)."""
    StopFlag.requested = False


__all__ = ["Interrupted", "StopCheck", "StopFlag", "reset_stop_request", "stop_requested"]
