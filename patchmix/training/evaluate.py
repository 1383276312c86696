"""Evaluation of a trained model's image head: top-1 and cross-entropy (:func:`evaluate`) and top-1 under
the FGSM white-box attack (:func:`fgsm_evaluate`, paper Table 4).

Both shard the split over the ranks and sum the counts; the sums stay on the device until the end (one
host read per call, not one per batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as data_mod
from .model import image_logits
from .runtime import Runtime, autocast


def _batches(split: data_mod.Split, batch_size: int, rt: Runtime, workers: int):
    order = torch.arange(len(split))[rt.rank::rt.world]
    for x, y in data_mod.batches(split, batch_size, order, workers=workers):
        yield data_mod.to_float(x, rt.device, rt.channels_last), y.to(rt.device, non_blocking=True)


def _with_count(sums: torch.Tensor, n: int) -> torch.Tensor:
    """``sums`` with the host-side count ``n`` appended (for the one all-reduce at the end)."""
    return torch.cat([sums.cpu(), torch.tensor([float(n)], dtype=torch.float64)])


@torch.no_grad()
def evaluate(net: nn.Module, split: data_mod.Split, batch_size: int, rt: Runtime, workers: int = 0) -> dict:
    """Top-1 accuracy and mean cross-entropy of the image head on ``split`` (sharded over ranks, summed).

    Returns ``{"acc", "loss", "n"}``.
    """
    was_training = net.training
    net.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)  # correct, loss sum
    n = 0  # known on the host: never read back from the device
    for x, y in _batches(split, batch_size, rt, workers):
        with autocast(rt):
            logits = image_logits(net(x)).float()
        sums += torch.stack([(logits.argmax(1) == y).sum().double(),
                             F.cross_entropy(logits, y, reduction="sum").double()])
        n += y.numel()
    sums = rt.all_reduce_sum(_with_count(sums, n))  # the one host read
    net.train(was_training)
    n = max(float(sums[2]), 1.0)
    return {"acc": float(sums[0]) / n, "loss": float(sums[1]) / n, "n": int(sums[2])}


def fgsm_evaluate(net: nn.Module, split: data_mod.Split, epsilons, batch_size: int, rt: Runtime,
                  workers: int = 0) -> dict[str, float]:
    """Top-1 accuracy under the FGSM white-box attack (paper Table 4): ``x + eps * sign(grad_x CE)``,
    clipped to ``[0, 1]``, per epsilon (pixel units); ``"0"`` is the clean accuracy."""
    was_training = net.training
    net.eval()
    eps = [float(e) for e in epsilons]
    sums = torch.zeros(len(eps) + 1, dtype=torch.float64, device=rt.device)  # correct: clean, per eps
    n = 0
    for x, y in _batches(split, batch_size, rt, workers):
        x.requires_grad_(True)
        logits = image_logits(net(x)).float()
        grad, = torch.autograd.grad(F.cross_entropy(logits, y), x)
        with torch.no_grad():
            correct = [(logits.argmax(1) == y).sum()]
            for e in eps:
                adv = (x + e * grad.sign()).clamp_(0.0, 1.0)
                correct.append((image_logits(net(adv)).argmax(1) == y).sum())
            sums += torch.stack(correct).double()
        n += y.numel()
    sums = rt.all_reduce_sum(_with_count(sums, n))  # the one host read
    net.train(was_training)
    n = max(float(sums[-1]), 1.0)
    out = {"0": float(sums[0]) / n}
    out.update({f"{e:g}": float(sums[i + 1]) / n for i, e in enumerate(eps)})
    return out


__all__ = ["evaluate", "fgsm_evaluate"]
