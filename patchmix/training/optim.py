"""The optimizer (SGD with momentum, the paper's) over parameter groups with their own learning-rate multipliers
(``train.lr_mult``) and without frozen parts (``train.freeze``), the float16 gradient scaler, and the learning-rate
schedule as a pure function of the step (so a resumed run continues it exactly)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..config import Config, parse_lr_mult
from ..errors import ConfigError
from .runtime import Runtime

#: ``train.lr_mult`` names for a model's classifiers (wsolevaluation calls ResNet's ``fc`` the classifier).
LR_MULT_ALIASES = {"classifier": ("head.fc", "head.patch_fc"), "classifiers": ("head.fc", "head.patch_fc"),
                   "fc": ("head.fc",), "patch_fc": ("head.patch_fc",)}


def _prefixes(pattern: str, names: list[str]) -> tuple[str, ...]:
    """The parameter-name prefixes ``pattern`` stands for: an alias, else the pattern itself and, for a
    :class:`~patchmix.models.PatchModel`, the pattern under ``backbone.`` (``layer4`` is ``backbone.layer4``)."""
    if pattern in LR_MULT_ALIASES:
        return LR_MULT_ALIASES[pattern]
    return (pattern, f"backbone.{pattern}") if any(n.startswith("backbone.") for n in names) else (pattern,)


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def param_groups(model: nn.Module, lr: float, lr_mult: Mapping[str, float] | str | tuple | None = None,
                 freeze: str | tuple[str, ...] | None = None) -> list[dict]:
    """The optimizer's parameter groups of ``model``: one per learning-rate multiplier, the frozen parts left out.

    Args:
        model: a :class:`~patchmix.models.PatchModel`, a module wrapping one as ``.model`` (patchmix's
            ``NormalizedModel``), or any module (then the patterns match its own parameter names).
        lr: the base learning rate; a group's ``lr`` is ``lr * lr_mult``.
        lr_mult: ``{pattern: multiplier}`` or the config's form (``"layer4:10,classifier:10"``). A pattern is a
            module path (``layer4``, ``backbone.layer4``, ``head.fc``, ``layer4.2.conv3``) or ``classifier`` (the
            image and patch classifiers; ``fc``, ``patch_fc`` each one). A parameter takes the multiplier of the
            longest pattern that covers it, else 1. A pattern that covers no parameter is a
            :class:`~patchmix.errors.ConfigError`.
        freeze: parts to freeze first (``"backbone"``; :meth:`~patchmix.models.PatchModel.freeze`, in place).

    Returns ``[{"params": [...], "lr": lr * m, "lr_mult": m, "names": [...]}, ...]`` (multiplier 1 first), the
    parameters that do not require gradients left out (so they get no update and no weight decay).
    """
    from ..models import PatchModel

    inner = model if isinstance(model, PatchModel) else getattr(model, "model", model)
    if freeze not in (None, "none", ()):
        if not isinstance(inner, PatchModel):
            raise ConfigError(f"train.freeze needs a patchmix PatchModel, got {type(inner).__name__}")
        try:
            inner.freeze(freeze)
        except ValueError as exc:
            raise ConfigError(f"train.freeze: {exc}", key="train.freeze") from None
    mult = parse_lr_mult(lr_mult) if not isinstance(lr_mult, Mapping) else dict(lr_mult)
    named = list(inner.named_parameters())
    names = [n for n, _ in named]
    rules = sorted(((pre, m) for pat, m in mult.items() for pre in _prefixes(pat, names)), key=lambda r: -len(r[0]))
    for pat in mult:
        if not any(_matches(n, pre) for pre in _prefixes(pat, names) for n in names):
            tops = sorted({".".join(n.split(".")[:2]) if n.startswith(("backbone.", "head.")) else n.split(".")[0]
                           for n in names})
            raise ConfigError(f"train.lr_mult: {pat!r} names no parameter of the model (its parts: "
                              f"{', '.join(tops[:12])}{', ...' if len(tops) > 12 else ''}; or 'classifier')",
                              key="train.lr_mult")
    groups: dict[float, dict] = {1.0: {"params": [], "lr": lr, "lr_mult": 1.0, "names": []}}
    for n, p in named:
        if not p.requires_grad:
            continue
        m = next((m for pre, m in rules if _matches(n, pre)), 1.0)
        g = groups.setdefault(float(m), {"params": [], "lr": lr * m, "lr_mult": float(m), "names": []})
        g["params"].append(p)
        g["names"].append(n)
    return [g for g in groups.values() if g["params"]]


def build_optimizer(cfg: Config, net: nn.Module) -> torch.optim.Optimizer:
    """SGD over :func:`param_groups` of ``net`` with ``train.lr_mult`` and ``train.freeze``."""
    t = cfg.train
    groups = param_groups(net, t.lr, t.lr_mult, t.freeze)
    if not groups:
        raise ConfigError("train.freeze: nothing is left to train", key="train.freeze")
    for g in groups:
        del g["names"]  # the optimizer's state dict keeps only plain numbers per group
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                           nesterov=t.nesterov and t.momentum > 0)


def build_scaler(rt: Runtime) -> torch.amp.GradScaler | None:
    """A gradient scaler for float16 autocast (CUDA without bfloat16); None elsewhere. Note: the scaler's
    ``step`` reads its inf/NaN flag back from the device every step (torch's design); bfloat16 needs none."""
    if rt.device.type != "cuda":
        return None
    return torch.amp.GradScaler("cuda", enabled=rt.amp and not torch.cuda.is_bf16_supported())


def lr_at(cfg: Config, step: int, total: int, steps_per_epoch: int) -> float:
    """The base learning rate of global step ``step`` of ``total``: linear warm-up over ``train.warmup_epochs``,
    then ``train.schedule`` (cosine annealing to 0; x0.1 steps at 50% and 75%, or every ``train.lr_step_epochs``
    epochs; or constant). Each parameter group runs at this times its ``lr_mult``."""
    t = cfg.train
    warm = t.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "step":
        if t.lr_step_epochs:  # wsolevaluation's adjust_learning_rate: x0.1 at every multiple of the period
            return t.lr * 0.1 ** (step // max(steps_per_epoch, 1) // t.lr_step_epochs)
        frac = step / max(total, 1)
        return t.lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    progress = (step - warm) / max(total - warm, 1)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times the group's ``lr_mult`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


__all__ = ["LR_MULT_ALIASES", "build_optimizer", "build_scaler", "lr_at", "param_groups", "set_lr"]
