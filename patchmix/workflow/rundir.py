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
``patchmix ablate`` writes its jobs' files with a variant tag (``checkpoints/random-P8-image-seed0.pt``,
``checkpoints/guided-max-allowed-seed0.pt``, ``policies/max-allowed-seed0.json``, ...), its table as
``table6.md`` / ``table6.json`` (``table7.*``) and ``figures/table6.png``; a variant equal to the run's own
settings uses the run's file names, so an ablation in a run's folder reuses that run's finished jobs.

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

from ..choices import METHODS
from ..config import Config
from ..errors import ConfigError, OutputError
from ..files import read_json

#: Files a run writes, relative to the output folder (a regular expression over the relative path): the
#: names above, an older version's search checkpoint (``.pkl``), and the temporary file of a write that a
#: kill interrupted (``<name>.tmp<pid>``).
RUN_FILES = re.compile(
    r"((config|metrics)\.json|log\.jsonl|report\.md|policy\.json|table[67]\.(md|json)"
    rf"|checkpoints/({'|'.join(METHODS)})(-[A-Za-z0-9]+)*-seed-?\d+\.pt"
    r"|checkpoints/search((-[A-Za-z0-9]+)*-seed-?\d+)?\.(npz|pkl)"
    r"|policies/([A-Za-z0-9]+-)*seed-?\d+\.json"
    r"|search/(([A-Za-z0-9]+-)*seed-?\d+-)?logbook\.json"
    r"|figures/(samples|guided_samples|fitness|pairs|accuracy|curves|fidelity|table[67])\.png)(\.tmp\d+)?"
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


def check_resume_config(cfg: Config, out: str, free: set[str] = RESUME_FREE, what: str = "--resume") -> None:
    """Refuse ``--resume`` when the settings differ from the run in ``out`` (its ``config.json``): finished
    jobs would otherwise be reused beside jobs trained with other settings, in one table. ``free``: the keys
    that may differ; ``what``: the command's name in the message."""
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
            if k not in free and old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(
            f"{what}: the settings differ from the run in {out} ({'; '.join(diff)}); use the same flags, e.g. "
            f"--config {os.path.join(out, 'config.json')}, or a new --out"
        )


__all__ = ["ABLATION_FREE", "RESUME_FREE", "RUN_FILES", "check_output", "check_resume_config", "checkpoint_path",
           "clean_output",
           "is_run_folder", "logbook_path", "policy_path", "search_checkpoint_path"]
