"""The output folder of a command (``--out``): what a run writes there, and the rules for writing into a
folder that already exists.

A ``patchmix run`` folder::

    config.json        the resolved configuration (re-run with --config)
    metrics.json       per-run results, the summary table, search results, timings
    log.jsonl          JSON-lines events (epochs, searches, results)
    report.md          links the files and figures
    checkpoints/       <method>-seed<s>.pt (training), search-seed<s>.npz (search)
    policy.json        the first seed's policy (policies/seed<s>.json: every seed's)
    search/            seed<s>-logbook.json: best/mean/worst fitness and pair changes per generation
    figures/           samples.png, guided_samples.png, fitness.png, pairs.png, accuracy.png, curves.png,
                       fidelity.png
    .patchmix.lock     the lock: who holds the folder while a command runs (empty after a clean end)

``patchmix train`` and ``patchmix search`` write the same kinds of files (``search.npz``, ``logbook.json``).
``patchmix ablate`` writes its jobs' files with a variant tag (``checkpoints/random-P8-image-seed0.pt``,
``checkpoints/guided-max-allowed-seed0.pt``, ``policies/max-allowed-seed0.json``, ...), its table as
``table6.md`` / ``table6.json`` (``table7.*``) and ``figures/table6.png``; a variant equal to the run's own
settings uses the run's file names, so an ablation in a run's folder reuses that run's finished jobs.

Rules (:class:`RunFolder`, the one mechanism behind ``run``, ``train``, ``search`` and ``ablate``):

* a folder that does not exist or is empty is fine; a folder holding a patchmix run (its ``config.json`` is a
  patchmix configuration) is reused; any other non-empty folder is refused, so that patchmix never writes over
  or deletes files it did not write;
* nothing is written before the command has checked everything it can (settings, data, checkpoint, policy,
  this folder); then the folder is locked, and ``config.json`` is written (atomically) once;
* the lock: ``.patchmix.lock`` inside the folder, an exclusive ``flock`` held by the command (rank 0 under
  ``torchrun``) until it ends; the file names the holder (pid, host, command), so a second command into the
  folder is refused with that name. The kernel drops a ``flock`` with its process, so the lock of a killed
  command is taken over by the next one (and the log says so);
* a fresh command (no ``--resume``) into a run folder removes only the files a run writes (:data:`RUN_FILES`),
  never anything else, and never a file the command reads (its ``--policy`` or ``--model-checkpoint``);
* ``--resume`` (every command) removes nothing and refuses settings that differ from the folder's
  ``config.json`` (but for :data:`RESUME_FREE`); ``patchmix ablate`` likewise (but for :data:`ABLATION_FREE`);
* a finished search is reused (:func:`finished_policy`): its policy file exists only once it has finished.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import socket
import sys

from ..choices import METHODS
from ..config import Config
from ..errors import ConfigError, OutputError
from ..files import atomic_write_text, read_json

#: The lock file of a run folder (see :class:`FolderLock`).
LOCK_NAME = ".patchmix.lock"

#: Files a run writes, relative to the output folder (a regular expression over the relative path): the
#: names above, the lock file, an older version's search checkpoint (``.pkl``), and the temporary file of a write that a
#: kill interrupted (``<name>.tmp<pid>``).
RUN_FILES = re.compile(
    r"(\.patchmix\.lock|(config|metrics)\.json|log\.jsonl|report\.md|policy\.json|table[67]\.(md|json)"
    rf"|checkpoints/({'|'.join(METHODS)})(-[A-Za-z0-9]+)*-seed-?\d+\.pt"
    r"|checkpoints/search((-[A-Za-z0-9]+)*-seed-?\d+)?\.(npz|pkl)"
    r"|policies/([A-Za-z0-9]+-)*seed-?\d+\.json"
    r"|search/(([A-Za-z0-9]+-)*seed-?\d+-)?logbook\.json"
    r"|figures/(samples|guided_samples|fitness|pairs|accuracy|curves|fidelity|cams|table[67])\.png)(\.tmp\d+)?"
)

#: Settings that may change between a run and its resume without changing its results.
RESUME_FREE = {"run.threads", "data.workers", "run.show_samples"}
#: ... and between a run and an ablation that shares its folder (each trains the seeds and methods it needs).
ABLATION_FREE = RESUME_FREE | {"run.seeds", "run.methods", "run.fidelity_individuals", "run.fidelity_draws",
                               "run.fgsm_epsilons"}


def _tagged(tag: str, name: str) -> str:
    """``name`` of a variant: ``<tag>-<name>`` (no tag: the run's own file)."""
    return f"{tag}-{name}" if tag else name


def checkpoint_path(out: str, method: str, seed: int, tag: str = "") -> str:
    return os.path.join(out, "checkpoints", f"{method}-{_tagged(tag, f'seed{seed}')}.pt")


def search_checkpoint_path(out: str, seed: int | None = None, tag: str = "") -> str:
    name = "search.npz" if seed is None else f"search-{_tagged(tag, f'seed{seed}')}.npz"
    return os.path.join(out, "checkpoints", name)


def policy_path(out: str, seed: int, tag: str = "") -> str:
    return os.path.join(out, "policies", f"{_tagged(tag, f'seed{seed}')}.json")


def logbook_path(out: str, seed: int | None = None, tag: str = "") -> str:
    name = "logbook.json" if seed is None else f"{_tagged(tag, f'seed{seed}')}-logbook.json"
    return os.path.join(out, "search", name)


def is_run_folder(out: str) -> bool:
    """Whether ``out`` holds a patchmix run: its ``config.json`` is a configuration patchmix wrote."""
    saved = read_json(os.path.join(out, "config.json"), None)
    return isinstance(saved, dict) and {"preset", "data", "model", "train", "search", "run"} <= set(saved)


def check_writable(path: str, flag: str, *, folder: bool) -> None:
    """Refuse (:class:`~patchmix.errors.OutputError`) an output ``path`` (``flag``: how the user named it, e.g.
    ``--out``) that cannot be written: a file in its way (``path`` itself, for a ``folder``, or one of its
    parents), a folder where a file is to be written, or a parent folder patchmix may not write in (a read-only
    disk). Reads only."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if folder and not os.path.isdir(path):
            raise OutputError(f"{flag} {path} is a file, not a folder")
        if not folder and os.path.isdir(path):
            raise OutputError(f"{flag} {path} is a folder; name a file to write")
    parent = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot write in {parent} (a read-only disk, or no permission)")


def folder_entries(out: str) -> list[str]:
    """The entries of ``out`` but its lock file (none when it does not exist)."""
    return [e for e in os.listdir(out) if e != LOCK_NAME] if os.path.isdir(out) else []


def check_output(out: str, command: str) -> None:
    """Refuse (:class:`~patchmix.errors.OutputError`) an ``out`` that cannot be written, or a non-empty one
    that holds no patchmix run. Reads only."""
    check_writable(out, "--out", folder=True)
    if folder_entries(out) and not is_run_folder(out):
        raise OutputError(f"--out {out} is not empty and holds no patchmix run (no patchmix config.json); "
                          f"patchmix {command} will not write into it: choose a new or empty folder for --out")


def clean_output(out: str) -> list[str]:
    """Remove the files an earlier run wrote into ``out`` (the names of :data:`RUN_FILES`, but the lock file)
    and nothing else; returns their paths relative to ``out``."""
    removed = []
    for folder, _, files in os.walk(out):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), out).replace(os.sep, "/")
            if RUN_FILES.fullmatch(rel) and rel != LOCK_NAME:
                os.remove(os.path.join(out, rel))
                removed.append(rel)
    return sorted(removed)


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_resume_config(cfg: Config, out: str, free: set[str] = RESUME_FREE, what: str = "--resume") -> None:
    """Refuse ``--resume`` when the settings differ from the run in ``out`` (its ``config.json``): finished
    jobs would otherwise be reused beside jobs trained with other settings, in one table. ``free``: the keys
    that may differ; ``what``: the command's name in the message."""
    saved = read_json(os.path.join(out, "config.json"), None)
    if saved is None:
        return
    old, new = dict(_flat(saved)), dict(_flat(json.loads(json.dumps(cfg.to_dict()))))  # both as JSON reads them
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in free and old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(
            f"{what}: the settings differ from the run in {out} ({'; '.join(diff)}); use the same flags, e.g. "
            f"--config {os.path.join(out, 'config.json')}, or a new --out"
        )


class FolderLock:
    """An exclusive lock on a run folder for one command: ``fcntl.flock`` on ``<out>/.patchmix.lock``, which
    names the holder (pid, host, command, start time) while it is held and is emptied on release.

    The kernel drops a ``flock`` when its process ends, however it ends, so a lock left by a killed command is
    simply taken over (:attr:`took_over` then names that command: its file was not emptied). The file is
    opened close-on-exec; processes forked from the holder (DataLoader workers) share the lock until they
    exit. Where ``fcntl`` does not exist (Windows) there is no lock."""

    def __init__(self, out: str, command: str):
        self.out, self.command = out, command
        self.path = os.path.join(out, LOCK_NAME)
        self.fd: int | None = None
        self.took_over: str | None = None

    def _busy(self, fd: int) -> OutputError:
        holder = _describe_holder(os.pread(fd, 4096, 0))
        return OutputError(f"--out {self.out} is in use by another patchmix command ({holder}); wait for it to "
                           f"end, or choose another --out")

    def probe(self) -> None:
        """Refuse (:class:`~patchmix.errors.OutputError`) when another process holds the lock. Writes nothing."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows)
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # no lock file (or none readable): nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(fd) from None
        finally:
            os.close(fd)  # releases the probe's own lock, if it got one

    def acquire(self) -> None:
        """Create the folder if needed and take the lock; :class:`~patchmix.errors.OutputError` when another
        command holds it, or when the folder cannot be written."""
        try:
            import fcntl
        except ImportError:
            return
        try:
            os.makedirs(self.out, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(f"--out {self.out}: cannot write there ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # BlockingIOError: another command holds it; else a file system without flock
            err = self._busy(fd) if isinstance(exc, BlockingIOError) else OutputError(
                f"--out {self.out}: cannot lock it ({exc.strerror}); patchmix needs a file system with flock")
            os.close(fd)
            raise err from None
        left = os.pread(fd, 4096, 0)
        self.took_over = _describe_holder(left) if left.strip() else None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"--out {self.out}: cannot write there ({exc.strerror})") from None
        self.fd = fd

    def release(self) -> None:
        """Empty the lock file (a clean end) and drop the lock."""
        if self.fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # the lock is dropped all the same; the next holder only reports a take-over
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _describe_holder(raw: bytes) -> str:
    try:
        h = json.loads(raw.decode())
        return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "holder unknown"


#: How a command uses its folder: ``fresh`` (replaces an earlier run's files), ``resume`` (keeps them, same
#: settings), ``reuse`` (``patchmix ablate``: keeps them, the settings of :data:`ABLATION_FREE` may differ).
MODES = ("fresh", "resume", "reuse")


class RunFolder:
    """The output folder of one command: :meth:`check` (reads only; call it before anything is written), then
    :meth:`open` (lock, check again under the lock, remove an earlier run's files for a fresh command, create
    ``checkpoints/``, write ``config.json`` once), then :meth:`close` (unlock). Under ``torchrun`` only rank 0
    calls them (:func:`patchmix.workflow.session.session` shares its decision with the other ranks).

    ``inputs``: files the command reads (a policy, a checkpoint); a fresh command refuses to remove them."""

    def __init__(self, out: str, cfg: Config, *, command: str, mode: str = "fresh", line: str | None = None,
                 inputs: tuple[str | None, ...] = ()):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.out, self.cfg, self.command, self.mode = out, cfg, command, mode
        self.inputs = [p for p in inputs if p]
        self.lock = FolderLock(out, line or " ".join(["patchmix", *sys.argv[1:]]))

    @property
    def config_path(self) -> str:
        return os.path.join(self.out, "config.json")

    def check(self, *, locked: bool = False) -> None:
        """Everything about the folder that can be checked without writing: writable, no foreign files, not
        locked by another command (unless ``locked``: this one holds the lock), the settings of a resumed or
        reused run, no input file a fresh command would remove. Raises :class:`~patchmix.errors.OutputError`
        or :class:`~patchmix.errors.ConfigError`."""
        if not locked:  # first: a folder in use may be half-way through another command's commit
            self.lock.probe()
        check_output(self.out, self.command)
        if self.mode == "resume":
            check_resume_config(self.cfg, self.out)
        elif self.mode == "reuse":
            check_resume_config(self.cfg, self.out, ABLATION_FREE, what=self.command)
        elif os.path.isdir(self.out):
            root = os.path.realpath(self.out)
            for path in self.inputs:
                rel = os.path.relpath(os.path.realpath(path), root).replace(os.sep, "/")
                if RUN_FILES.fullmatch(rel):
                    raise OutputError(f"{path} lies in --out {self.out}, whose earlier run a fresh patchmix "
                                      f"{self.command} replaces; copy it elsewhere, use --resume, or choose "
                                      f"another --out")

    def open(self) -> None:
        """Lock the folder, check it again (another command may have changed it since :meth:`check`) and
        commit: remove an earlier run's files (fresh), create ``checkpoints/``, write ``config.json`` (a fresh
        command's, or a resumed folder's that has none)."""
        self.lock.acquire()
        try:
            self.check(locked=True)
            if self.mode == "fresh":
                clean_output(self.out)
            os.makedirs(os.path.join(self.out, "checkpoints"), exist_ok=True)
            if self.mode == "fresh" or not os.path.exists(self.config_path):
                self.cfg.save(self.config_path)
        except OSError as exc:
            self.close()
            raise OutputError(f"--out {self.out}: cannot write there ({exc.strerror}: {exc.filename})") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.lock.release()


def write_metrics(path: str, doc) -> None:
    """Write a results document (``metrics.json``, ``<table>.json``) as strict JSON (``allow_nan=False``). The
    settings in it are finite (:meth:`patchmix.config.Config.validate`); a measurement that is not a finite
    number (the loss of a training that diverged) is written as null."""
    atomic_write_text(path, json.dumps(_finite(doc), indent=1, allow_nan=False, default=str) + "\n")


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def finished_policy(out: str, seed: int, classes: list[str], grid_size: int, tag: str = ""):
    """The policy of the finished search ``(seed, tag)`` of the folder, or None (then the search runs, resuming
    its checkpoint). The rule, one for ``run`` and ``ablate``: a search writes its policy file once it has
    finished, and a folder's files are of the command's settings (a fresh command removed an earlier run's
    files; ``--resume`` and ``ablate`` compared the settings), so a policy file found is that search's
    result."""
    from ..search import Policy

    path = policy_path(out, seed, tag)
    return Policy.load(path, classes, grid_size) if os.path.exists(path) else None


__all__ = ["ABLATION_FREE", "LOCK_NAME", "MODES", "RESUME_FREE", "RUN_FILES", "FolderLock", "RunFolder",
           "check_output", "check_resume_config", "check_writable", "checkpoint_path", "clean_output",
           "finished_policy", "folder_entries", "is_run_folder", "logbook_path", "policy_path",
           "search_checkpoint_path", "write_metrics"]
