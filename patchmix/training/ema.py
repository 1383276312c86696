"""Model EMA with timm's ``ModelEmaV3`` semantics: an exponential moving average of the whole state dict (floating
parameters and buffers lerped, integer buffers such as BatchNorm's ``num_batches_tracked`` copied), updated after
every optimizer step with a decay that may warm up.

Why not ``torch.optim.swa_utils.AveragedModel`` with an EMA average function: its ``update_parameters`` reads its
``n_averaged`` counter on the host (``bool(self.n_averaged == 0)``, ``if self.n_averaged > 0``), a device sync per
step on CUDA (and an error on the ``meta`` device; ``tests/test_train.py`` shows it), and it averages integer
buffers instead of copying them. Here the step count lives on the host, so an update is one
``torch._foreach_lerp_`` launch and never waits for the device.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    """``ModelEma(model, decay)``; ``update(model, step)`` after optimizer step ``step`` (counted from 1 over the
    whole training, as timm's ``num_updates``); ``forward`` runs the averaged copy (kept in eval mode).

    Decay at step ``s`` (timm's ``get_decay``): with ``s' = s - update_after_step - 1``, 0 while ``s' <= 0`` (the
    first update copies the model); else ``decay``, or with ``warmup`` ``1 - (1 + s' / warmup_gamma) **
    -warmup_power`` clamped to ``[min_decay, decay]``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False, warmup_gamma: float = 1.0,
                 warmup_power: float = 2 / 3, min_decay: float = 0.0, update_after_step: int = 0):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ModelEma: decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.warmup_gamma, self.warmup_power = float(decay), bool(warmup), warmup_gamma, warmup_power
        self.min_decay, self.update_after_step = float(min_decay), int(update_after_step)

    def get_decay(self, step: int) -> float:
        step = max(0, step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if not self.warmup:
            return self.decay
        decay = 1 - (1 + step / self.warmup_gamma) ** -self.warmup_power
        return max(min(decay, self.decay), self.min_decay)

    def _tensors(self, model: nn.Module) -> tuple[list, list, list]:
        """(EMA floats, model floats, integer (EMA, model) pairs) of the two state dicts, built once per model and
        placement: ``state_dict()`` walks every module, twice a step, and its tensors share storage
        with the parameters and buffers (a move to another device is seen through the first parameter)."""
        key = (id(model), *(next(m.parameters(), torch.empty(0)).data_ptr() for m in (model, self.module)))
        if getattr(self, "_key", None) != key:
            floats, model_floats, ints = [], [], []
            for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
                if ema_v.is_floating_point():
                    floats.append(ema_v)
                    model_floats.append(model_v)
                else:
                    ints.append((ema_v, model_v))
            self._key, self._cached = key, (floats, model_floats, ints)
        return self._cached

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.get_decay(step)
        ema_floats, model_floats, ints = self._tensors(model)
        for ema_v, model_v in ints:
            ema_v.copy_(model_v)
        if ema_floats:
            torch._foreach_lerp_(ema_floats, model_floats, 1.0 - decay)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup}"


__all__ = ["ModelEma"]
