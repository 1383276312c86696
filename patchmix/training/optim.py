"""The optimizer (SGD with momentum, the paper's), the float16 gradient scaler, and the learning-rate
schedule as a pure function of the step (so a resumed run continues it exactly)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config
from .runtime import Runtime


def build_optimizer(cfg: Config, net: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                           nesterov=t.nesterov and t.momentum > 0)


def build_scaler(rt: Runtime) -> torch.amp.GradScaler | None:
    """A gradient scaler for float16 autocast (CUDA without bfloat16); None elsewhere. Note: the scaler's
    ``step`` reads its inf/NaN flag back from the device every step (torch's design); bfloat16 needs none."""
    if rt.device.type != "cuda":
        return None
    return torch.amp.GradScaler("cuda", enabled=rt.amp and not torch.cuda.is_bf16_supported())


def lr_at(cfg: Config, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step`` of ``total``: linear warm-up over ``train.warmup_epochs``,
    then ``train.schedule`` (cosine annealing to 0, x0.1 steps at 50% and 75%, or constant)."""
    t = cfg.train
    warm = t.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "step":
        frac = step / max(total, 1)
        return t.lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    progress = (step - warm) / max(total - warm, 1)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["build_optimizer", "build_scaler", "lr_at", "set_lr"]
