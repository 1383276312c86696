"""What every command that writes a run folder (``patchmix run``, ``train``, ``search``, ``ablate``) does around
its work, in one place and in this order, so that a command that cannot run writes nothing:

1. the settings, validated when the configuration was resolved (:mod:`patchmix.config`), the device and the
   ``torch.compile`` backend, and ``train.init`` pinned to its file's path and sha256 (a recorded hash checked);
2. the output folder, read only (:meth:`RunFolder.check <patchmix.workflow.rundir.RunFolder.check>`): writable,
   no foreign files, not locked by another command, the settings of ``--resume``;
3. the runtime (device, ``torchrun``'s process group), the data (:func:`load_data`) and the settings that need
   it (:meth:`patchmix.config.Config.check_dataset`: the grid against the image size, the search's pairs;
   :func:`patchmix.training.model.check_model`: the model builds, ``train.init`` loads into it,
   ``train.freeze`` and ``train.lr_mult`` fit it);
4. the command's own inputs (``prepare``: a checkpoint read and checked against the data, a policy);
5. the folder committed (:meth:`RunFolder.open <patchmix.workflow.rundir.RunFolder.open>`): locked, checked
   again, an earlier run's files removed (a fresh command), ``config.json`` written once;
6. the log (``log.jsonl``), then the work; the lock is released however the command ends.

Under ``torchrun`` rank 0 checks and commits the folder and the other ranks raise the error it found
(:func:`agree`), so every rank refuses together; every rank loads the data and reads the inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

from .. import data as data_mod
from ..config import Config
from ..errors import BY_NAME, ConfigError, DatasetError, PatchmixError
from ..presets import PRESET_NEEDS_DATA
from ..training import Runtime, runtime_session
from ..training.log import Log
from ..training.loop import compile_model
from ..training.model import check_model, resolve_init
from .rundir import RunFolder


@dataclasses.dataclass
class Session:
    """What a command's work gets: the runtime, the data, the open log, the folder and what ``prepare``
    returned."""

    rt: Runtime
    ds: data_mod.Dataset
    log: Log
    folder: RunFolder
    prepared: Any = None


def load_data(cfg: Config) -> data_mod.Dataset:
    """:func:`patchmix.data.from_config`, with an operating-system error (a file where a folder was expected,
    no permission) as a :class:`~patchmix.errors.DatasetError` naming ``--data``."""
    d = cfg.data
    if not d.source:
        raise ConfigError(f"--preset {cfg.preset} needs {PRESET_NEEDS_DATA.get(cfg.preset, 'a dataset (--data PATH)')}",
                          key="data.source")
    try:
        return data_mod.from_config(cfg)
    except OSError as exc:
        what = f"{exc.strerror}: {exc.filename}" if exc.strerror else str(exc)
        layout = data_mod.LAYOUTS.get(d.format)
        expected = f"; expected a {layout.splitlines()[0].rstrip(':')}" if layout else ""
        raise DatasetError(f"--data {d.source} (format {d.format}): cannot read it ({what}){expected}") from None


def agree(rt: Runtime, step: Callable[[], None]) -> None:
    """Run ``step`` on rank 0 and share its outcome: when it raises a patchmix error, every rank raises that
    error (same type and message), so that all refuse together and none waits for the others. One process:
    just ``step()``."""
    if not rt.distributed:
        step()
        return
    failure, error = None, None
    if rt.is_main:
        try:
            step()
        except PatchmixError as exc:
            failure, error = (type(exc).__name__, str(exc)), exc
        except BaseException as exc:  # a bug or Ctrl-C on rank 0: the others stop too, then rank 0 raises it
            rt.broadcast_object(("", f"rank 0 failed: {type(exc).__name__}: {exc}"))
            raise
    failure = rt.broadcast_object(failure)
    if failure is None:
        return
    if error is not None:
        raise error
    name, message = failure
    raise BY_NAME.get(name, RuntimeError)(message)


@contextlib.contextmanager
def session(cfg: Config, out: str, *, command: str, mode: str = "fresh", quiet: bool = False,
            line: str | None = None, search: bool = False,
            prepare: Callable[[data_mod.Dataset, Runtime], Any] | None = None,
            inputs: tuple[str | None, ...] = ()) -> Iterator[Session]:
    """``with session(cfg, out, command="train", mode="fresh") as s:`` the steps of the module docstring.

    Args:
        command: the command's name in messages (``train``); ``line``: its command line for the lock file.
        mode: ``fresh``, ``resume`` or ``reuse`` (:data:`patchmix.workflow.rundir.MODES`).
        search: the command runs the search (its settings are checked against the dataset's classes).
        prepare: ``prepare(ds, rt)`` checks and reads the command's own inputs before anything is written; its
            result is ``Session.prepared``.
        inputs: the files ``prepare`` reads (a fresh command never removes them).

    ``cfg.train.init`` and ``cfg.train.init_sha256`` are set in place (:func:`patchmix.training.model.resolve_init`),
    so that ``config.json`` and ``--resume`` see the file as it is now.
    """
    resolve_init(cfg)
    folder = RunFolder(out, cfg, command=command, mode=mode, line=line, inputs=(*inputs, cfg.train.init))
    cfg.check_device()
    if cfg.run.compile != "off":  # the backend name, checked as the training checks it (compiling is lazy)
        import torch

        compile_model(torch.nn.Identity(), cfg)
    with runtime_session(cfg) as rt:
        agree(rt, folder.check)
        ds = load_data(cfg)
        cfg.check_dataset(ds, search=search)
        check_model(cfg, ds)
        prepared = prepare(ds, rt) if prepare is not None else None
        agree(rt, folder.open)
        try:
            with Log(os.path.join(out, "log.jsonl"), quiet=quiet, enabled=rt.is_main) as log:
                if folder.lock.took_over:
                    log.info(f"--out {out}: took over the lock of a command that ended without releasing it "
                             f"({folder.lock.took_over})")
                    log.event("lock", took_over=folder.lock.took_over)
                yield Session(rt, ds, log, folder, prepared)
        finally:
            folder.close()


__all__ = ["Session", "agree", "load_data", "session"]
