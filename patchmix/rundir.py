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

``patchmix train`` and ``patchmix search`` write the same kinds of files (``search.npz``, ``logbook.json``).

Rules (:func:`check_output`, :func:`clean_output`): a folder that does not exist or is empty is fine; a
folder holding a patchmix run (its ``config.json`` is a patchmix configuration) is reused; any other
non-empty folder is refused, so that patchmix never writes over or deletes files it did not write. A
fresh ``patchmix run`` into a run folder removes only the files a run writes (the names above), never
anything else; ``--resume`` removes nothing and refuses settings that differ from the folder's.
"""

from __future__ import annotations

import json
import os
import re

from .config import Config
from .errors import ConfigError, OutputError
from .files import read_json

#: Files a run writes, relative to the output folder (a regular expression over the relative path): the
#: names above, an older version's search checkpoint (``.pkl``), and the temporary file of a write that a
#: kill interrupted (``<name>.tmp<pid>``).
RUN_FILES = re.compile(
    r"((config|metrics)\.json|log\.jsonl|report\.md|policy\.json"
    r"|checkpoints/(base|mixup|cutmix|random|guided)-seed-?\d+\.pt"
    r"|checkpoints/search(-seed-?\d+)?\.(npz|pkl)"
    r"|policies/seed-?\d+\.json"
    r"|search/(seed-?\d+-)?logbook\.json"
    r"|figures/(samples|guided_samples|fitness|pairs|accuracy|curves|fidelity)\.png)(\.tmp\d+)?"
)

#: Settings that may change between a run and its resume without changing its results.
RESUME_FREE = {"run.threads", "data.workers", "run.show_samples"}


def checkpoint_path(out: str, method: str, seed: int) -> str:
    return os.path.join(out, "checkpoints", f"{method}-seed{seed}.pt")


def search_checkpoint_path(out: str, seed: int | None = None) -> str:
    return os.path.join(out, "checkpoints", "search.npz" if seed is None else f"search-seed{seed}.npz")


def policy_path(out: str, seed: int) -> str:
    return os.path.join(out, "policies", f"seed{seed}.json")


def logbook_path(out: str, seed: int | None = None) -> str:
    return os.path.join(out, "search", "logbook.json" if seed is None else f"seed{seed}-logbook.json")


def is_run_folder(out: str) -> bool:
    """Whether ``out`` holds a patchmix run: its ``config.json`` is a configuration patchmix wrote."""
    saved = read_json(os.path.join(out, "config.json"), None)
    return isinstance(saved, dict) and {"preset", "data", "model", "train", "search", "run"} <= set(saved)


def check_output(out: str, command: str) -> None:
    """Refuse (:class:`~patchmix.errors.OutputError`) a non-empty ``out`` that holds no patchmix run.
    Read-only: every DDP rank calls it before any rank writes."""
    if os.path.isdir(out) and os.listdir(out) and not is_run_folder(out):
        raise OutputError(f"--out {out} is not empty and holds no patchmix run (no patchmix config.json); "
                          f"patchmix {command} will not write into it: choose a new or empty folder for --out")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file, not a folder")


def clean_output(out: str) -> list[str]:
    """Remove the files an earlier run wrote into ``out`` (the names of :data:`RUN_FILES`) and nothing else;
    returns their paths relative to ``out``."""
    removed = []
    for folder, _, files in os.walk(out):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), out).replace(os.sep, "/")
            if RUN_FILES.fullmatch(rel):
                os.remove(os.path.join(out, rel))
                removed.append(rel)
    return sorted(removed)


def check_resume_config(cfg: Config, out: str) -> None:
    """Refuse ``--resume`` when the settings differ from the run in ``out`` (its ``config.json``): finished
    jobs would otherwise be reused beside jobs trained with other settings, in one table."""
    saved = read_json(os.path.join(out, "config.json"), None)
    if saved is None:
        return

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    old, new = dict(flat(saved)), dict(flat(json.loads(json.dumps(cfg.to_dict()))))  # both as JSON reads them
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in RESUME_FREE and old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(
            f"--resume: the settings differ from the run in {out} ({'; '.join(diff)}); resume with the same "
            f"flags, e.g. --config {os.path.join(out, 'config.json')}, or start a new --out"
        )


__all__ = ["RESUME_FREE", "RUN_FILES", "check_output", "check_resume_config", "checkpoint_path", "clean_output",
           "is_run_folder", "logbook_path", "policy_path", "search_checkpoint_path"]
