"""The genetic search's checkpoint file: one ``.npz`` (numpy's zip of arrays) holding the population, the hall of
fame and a JSON document as a string array (the format, the settings, the fitness's fingerprint, the logbook, the
generator states, the counters). It is read with ``allow_pickle=False``: loading a checkpoint never runs code from
the file. What the state means is :class:`.genetic.GeneticSearch`'s; this module writes, reads and checks the file."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import CheckpointError
from ..files import atomic_path
from .fitness import CachedFitness
from .result import population_arrays

CHECKPOINT_FORMAT = "patchmix-search-checkpoint-2"


def fitness_fingerprint(fitness: CachedFitness) -> str:
    """A sha256 of what the fitness scores with (its table and draws, or what ``fingerprint()`` gives): a
    checkpoint resumes only on the fitness it was written for."""
    h = hashlib.sha256()
    if hasattr(fitness, "fingerprint"):  # ExactFitness: f_T's weights and the draws
        h.update(fitness.fingerprint())
        return h.hexdigest()
    h.update(fitness.table.double().cpu().numpy().tobytes())
    h.update(fitness.draws.numpy().tobytes())
    h.update(f"{fitness.objective}|{fitness.image_weight}|{fitness.grid_size}".encode())
    return h.hexdigest()


def write_checkpoint(path, meta: dict, population: list, best) -> None:
    """Write ``population`` (scored individuals), the hall of fame's ``best`` and ``meta`` (JSON-serialisable: the
    search's settings, ``fingerprint``, state) to ``path``, atomically."""
    arrays = {
        **population_arrays(population),
        "hof_pairs": best.pairs, "hof_masks": best.masks, "hof_value": np.float64(best.fitness.values[0]),
        "meta": np.array(json.dumps({"format": CHECKPOINT_FORMAT, **meta})),  # a unicode array: no pickle to read it
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # a file object: numpy would append ".npz" to a path


def read_checkpoint(path, config: dict, fingerprint: str | None) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of the checkpoint at ``path``: ``pairs (I, N)``, ``masks (I, N, P, P)``, ``values (I,)``,
    ``hof_pairs``, ``hof_masks``, ``hof_value``, and the JSON document. :class:`~patchmix.errors.CheckpointError`
    for a file that is unreadable, not a search checkpoint, or written with settings other than ``config`` or for
    a fitness other than ``fingerprint``'s."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a checkpoint must not run code
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"search: cannot read checkpoint {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"search: {path} is not a patchmix search checkpoint (format {CHECKPOINT_FORMAT})")
    if meta["config"] != config:
        raise CheckpointError(f"search: checkpoint {path} was written with other settings {meta['config']}; "
                              f"resume needs the same ones (got {config})")
    if meta["fingerprint"] != fingerprint:
        raise CheckpointError(f"search: checkpoint {path} was written for another fitness (cache, draws or "
                              f"objective)")
    return arrays, meta


__all__ = ["CHECKPOINT_FORMAT", "fitness_fingerprint", "read_checkpoint", "write_checkpoint"]
