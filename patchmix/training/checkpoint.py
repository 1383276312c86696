"""Training checkpoints: written after every epoch and on Ctrl-C mid-epoch, read back to resume, to evaluate
(``patchmix eval``) and to seed the search (``patchmix search --model-checkpoint``).

A checkpoint holds only tensors and plain containers (dicts, lists, numbers, strings): the model's and the
optimizer's state dicts, the generator states of an interrupted epoch, the history, the resolved config.
It is read with ``torch.load(weights_only=True)``, which refuses any other object: a file that would run
code when unpickled is rejected with a :class:`~patchmix.errors.CheckpointError`, and nothing in it runs.

Format (``"format": "patchmix-train-v1"``)::

    {"format", "method", "seed", "epoch", "step",      # resume at epoch `epoch`, step `step` of it
     "model", "optimizer", "scaler",                   # state dicts (scaler: float16 AMP only, else None)
     "ema",                                            # the model EMA's state dict (train.ema_decay), else None
     "history": [{"epoch", "lr", "train_loss", ...}],  # one record per finished epoch
     "mid": {"ranks": [{"torch", "sums"}, ...]} | None,   # an interrupted epoch (global generator, partial sums)
     "complete": bool, "result": {...} | None,         # the finished training's result record
     "config": {...}, "world": int}
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .. import data as data_mod
from ..config import Config
from ..errors import CheckpointError
from ..files import torch_save
from ..models.weights import TRAIN_CHECKPOINT_FORMAT, torch_load
from .model import NormalizedModel, build_model
from .runtime import Runtime

CHECKPOINT_FORMAT = TRAIN_CHECKPOINT_FORMAT


def load_checkpoint(path: str) -> dict:
    """A training checkpoint written by :func:`patchmix.training.train_model`, read safely
    (:func:`patchmix.models.weights.torch_load`) and checked."""
    ckpt = torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a patchmix training checkpoint")
    return ckpt


def checkpoint_config(ckpt: dict, name: str = "the checkpoint") -> Config:
    """The resolved configuration a checkpoint was trained with; :class:`~patchmix.errors.CheckpointError`
    when it holds none patchmix can read."""
    try:
        return Config().override(ckpt["config"])
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {name}: its settings cannot be read ({exc})") from None


def check_fits(ckpt: dict, name: str, ds: data_mod.Dataset, grid_size: int | None = None) -> None:
    """Refuse (:class:`~patchmix.errors.CheckpointError`, naming ``name`` and the mismatch) a checkpoint whose
    model does not fit the dataset ``ds`` (its image channels, its number of classes) or, when given, the grid
    size ``grid_size`` of the command that uses it."""
    state = ckpt.get("model") or {}
    problem = None
    trained_p = checkpoint_config(ckpt, name).model.grid_size
    mean, fc = state.get("mean"), state.get("model.head.fc.weight")
    if grid_size is not None and trained_p != grid_size:
        problem = f"it was trained with grid size {trained_p}, the command's is {grid_size} (--grid-size)"
    elif mean is not None and mean.numel() != ds.channels:
        problem = f"it was trained on {mean.numel()}-channel images, the data has {ds.channels} channel(s)"
    elif fc is not None and fc.shape[0] != ds.num_classes:
        problem = f"it was trained on {fc.shape[0]} classes, the data has {ds.num_classes}"
    if problem:
        raise CheckpointError(f"checkpoint {name} does not fit {ds.describe()}: {problem}")


def load_model_state(net: NormalizedModel, state: dict, name: str) -> None:
    """``net.load_state_dict(state)``, a mismatch as a :class:`~patchmix.errors.CheckpointError` naming the file
    and the first tensor that differs."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(f"checkpoint {name} holds another model than its settings build for this data "
                              f"({len(missing)} tensors missing, {len(unexpected)} unexpected, e.g. {first}); "
                              f"model.name=auto picks the model by the dataset: evaluate it on the data it was "
                              f"trained on")
    if shapes:
        k = shapes[0]
        raise CheckpointError(f"checkpoint {name} does not fit this data: {k} has shape {tuple(state[k].shape)} "
                              f"in the checkpoint, {tuple(expected[k].shape)} here")
    net.load_state_dict(state)


def model_from_checkpoint(checkpoint: str | dict, ds: data_mod.Dataset | None = None, *,
                          grid_size: int | None = None, name: str | None = None
                          ) -> tuple[NormalizedModel, Config, dict]:
    """Rebuild the trained model of a checkpoint (a path, or a dict from :func:`load_checkpoint`, then ``name``
    is its path for messages) with its config; loads the dataset from that config when ``ds`` is not given.
    The checkpoint is checked against ``ds`` and ``grid_size`` first (:func:`check_fits`). Returns
    ``(model, config, ckpt)``."""
    if isinstance(checkpoint, (str, os.PathLike)):
        name = name or os.fspath(checkpoint)
        ckpt = load_checkpoint(checkpoint)
    else:
        ckpt, name = checkpoint, name or "(in memory)"
    cfg = checkpoint_config(ckpt, name)
    if ds is None:
        ds = data_mod.from_config(cfg)
    check_fits(ckpt, name, ds, grid_size)
    net = build_model(cfg, ds)
    load_model_state(net, ckpt["model"], name)
    return net, cfg, ckpt


@dataclasses.dataclass
class TrainState:
    """Where a training stands: the next ``epoch`` and ``step`` of it, the finished epochs' ``history``, and
    for an interrupted epoch ``mid`` (every rank's stream states and partial sums)."""

    epoch: int = 0
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    mid: dict | None = None
    complete: bool = False
    result: dict | None = None


class CheckpointSaver:
    """Saves and restores one training's checkpoint at ``path`` (rank 0 writes; every rank reads)."""

    def __init__(self, path: str | None, rt: Runtime, *, method: str, seed: int, cfg: Config):
        self.path, self.rt, self.method, self.seed, self.cfg = path, rt, method, seed, cfg

    def save(self, net, optimizer, scaler, state: TrainState, ema=None) -> None:
        """Write ``state`` with the model, optimizer and EMA (rank 0 only; atomically)."""
        if not (self.path and self.rt.is_main):
            return
        torch_save({"format": CHECKPOINT_FORMAT, "method": self.method, "seed": self.seed,
                    "epoch": state.epoch, "step": state.step,
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "ema": ema.module.state_dict() if ema is not None else None,
                    "history": state.history, "mid": state.mid, "complete": state.complete, "result": state.result,
                    "config": self.cfg.to_dict(), "world": self.rt.world}, self.path)

    def restore(self, net, optimizer, scaler, ema=None) -> TrainState | None:
        """Load the checkpoint into ``net`` (and, unless the training is complete, ``optimizer``, ``scaler`` and
        ``ema``); None when there is none. Every rank reads it once rank 0 has finished writing."""
        if not self.path:
            return None
        self.rt.barrier()
        if not os.path.isfile(self.path):
            return None
        ckpt = load_checkpoint(self.path)
        if ckpt["method"] != self.method or ckpt["seed"] != self.seed:
            raise CheckpointError(f"{self.path} holds method {ckpt['method']} seed {ckpt['seed']}, "
                                  f"not {self.method} seed {self.seed}")
        load_model_state(net, ckpt["model"], self.path)
        state = TrainState(ckpt["epoch"], ckpt["step"], ckpt["history"], ckpt.get("mid"), bool(ckpt.get("complete")),
                           ckpt.get("result"))
        if not state.complete:
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None:
                if ckpt.get("ema") is None:
                    raise CheckpointError(f"{self.path} holds no model EMA, but train.ema_decay asks for one")
                ema.module.load_state_dict(ckpt["ema"])
        return state

    def mid_of_rank(self, mid: dict) -> dict[str, Any]:
        """This rank's part of an interrupted epoch's state (a DDP run resumes with as many processes)."""
        ranks = mid.get("ranks", [mid])
        if len(ranks) != self.rt.world:
            raise CheckpointError(f"{self.path} was interrupted mid-epoch with {len(ranks)} process(es); resume it "
                                  f"with the same number, not {self.rt.world}")
        return ranks[self.rt.rank]


__all__ = ["CHECKPOINT_FORMAT", "CheckpointSaver", "TrainState", "check_fits", "checkpoint_config", "load_checkpoint",
           "load_model_state", "model_from_checkpoint"]
