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
import pickle
import re
from typing import Any

import torch

from .. import data as data_mod
from ..config import Config
from ..errors import CheckpointError
from ..files import torch_save
from .model import NormalizedModel, build_model
from .runtime import Runtime

CHECKPOINT_FORMAT = "patchmix-train-v1"


def load_checkpoint(path: str) -> dict:
    """A training checkpoint written by :func:`patchmix.training.train_model`, read safely and checked."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: the file is not ours
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" (it names {found.group(1)})" if found else ""
        raise CheckpointError(f"cannot read checkpoint {path}: it holds objects other than tensors and plain "
                              f"containers{what}, and patchmix never unpickles those") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a patchmix training checkpoint")
    return ckpt


def model_from_checkpoint(checkpoint: str | dict, ds: data_mod.Dataset | None = None
                          ) -> tuple[NormalizedModel, Config, dict]:
    """Rebuild the trained model of a checkpoint (a path, or a dict from :func:`load_checkpoint`) with its
    config; loads the dataset from that config when ``ds`` is not given. Returns ``(model, config, ckpt)``."""
    ckpt = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    cfg = Config().override(ckpt["config"])
    if ds is None:
        ds = data_mod.from_config(cfg)
    net = build_model(cfg, ds)
    net.load_state_dict(ckpt["model"])
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
        net.load_state_dict(ckpt["model"])
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


__all__ = ["CHECKPOINT_FORMAT", "CheckpointSaver", "TrainState", "load_checkpoint", "model_from_checkpoint"]
