"""``f_T`` run on composed validation images: the per-cell scores that the exact fitness averages and that the
interaction-aware fitness is fitted on.

A composition ``r`` is a validation pair ``(a_r, b_r)`` with a ``P x P`` mask: ``patchmix.ops.grid_mix`` takes
cell ``n`` from ``a_r`` where ``mask_r[n]`` is True, else from ``b_r``. The model (``f_T``, eval mode, no grad)
returns ``(image_logits (R, K), patch_logits (R, K, P, P) or (R, P*P, K))``; cell ``n`` is scored against its
source's class (``class_a_r`` or ``class_b_r``): ``objective="logprob"`` -> ``log_softmax(patch_logits)[class]``,
``"accuracy"`` -> ``1[argmax == class]``. The image-level term scores the image logits against the soft label with
the exact pixel ``lam``: ``lam * log_softmax[c_a] + (1 - lam) * log_softmax[c_b]``.

Speed (docs/search.md, "What the search costs"): the passes run under ``torch.inference_mode``; with
``precision="auto"`` under bfloat16 autocast where the device computes bfloat16 natively (a CPU with AVX512-BF16
or AMX, a CUDA device that supports it), and in the channels_last memory format where that helps (under the
autocast, and on CUDA; measured slower for float32 on the CPU). The scores themselves are float64 from the logits.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from ..choices import OBJECTIVES, check_choice
from ..ops import grid_mix


def split_outputs(out, grid_size: int | None, who: str = "CachedLogits.from_model") -> Tensor:
    """``(image_logits, patch_logits)`` -> patch logits as ``(N, P*P, K)`` (a view when possible)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(
            f"{who}: the model must return (image_logits (N, K), patch_logits (N, K, P, P) or "
            f"(N, P*P, K)), got {type(out).__name__}"
        )
    image_logits, patch = out
    if patch.dim() == 4:  # (N, K, P, P), the head's natural layout
        if patch.shape[2] != patch.shape[3]:
            raise ValueError(f"{who}: patch logits (N, K, P, P) must be square, got {tuple(patch.shape)}")
        patch = patch.permute(0, 2, 3, 1).reshape(patch.shape[0], -1, patch.shape[1])
    elif patch.dim() != 3:
        raise ValueError(f"{who}: patch logits must be (N, K, P, P) or (N, P*P, K), got {tuple(patch.shape)}")
    P = math.isqrt(patch.shape[1])
    if P * P != patch.shape[1]:
        raise ValueError(f"{who}: {patch.shape[1]} patches is not a square grid P*P")
    if grid_size is not None and P != grid_size:
        raise ValueError(f"{who}: the model has a {P}x{P} grid, expected grid_size = {grid_size}")
    if image_logits.shape[-1] != patch.shape[-1]:
        raise ValueError(f"{who}: image logits have {image_logits.shape[-1]} classes, patch logits {patch.shape[-1]}")
    return patch


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device``, else the device of the model's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


#: ``precision`` of :func:`composed_scores`: auto (bfloat16 where the device computes it natively) | float32 | bfloat16.
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bfloat16(device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CPU with AVX512-BF16 or AMX, or a CUDA device that supports
    it (elsewhere bfloat16 is emulated and slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast_dtype(precision: str, device) -> torch.dtype | None:
    """The autocast dtype of the forward passes for ``precision`` on ``device`` (None: float32, no autocast)."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "float32" or (precision == "auto" and not native_bfloat16(device)):
        return None
    return torch.bfloat16


def forward_context(device, dtype: torch.dtype | None):
    """``inference_mode`` plus, for ``dtype``, autocast on ``device``'s type."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if dtype is not None:
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=dtype))
    return stack


def as_model_input(x: Tensor) -> Tensor:
    """A composed batch as the model reads it: float images in ``[0, 1]`` (uint8 images are divided by 255)."""
    return x if x.is_floating_point() else x.float().div_(255.0)


def composed_scores(model: nn.Module, images: Tensor, index_a: Tensor, index_b: Tensor, masks: Tensor,
                    class_a: Tensor, class_b: Tensor, *, objective: str = "logprob", image_term: bool = False,
                    batch_size: int = 256, device=None, precision: str = "float32",
                    progress=None) -> tuple[Tensor, Tensor | None]:
    """Per-cell scores of ``model`` on ``R`` compositions.

    Args:
        model: ``f_T``, returns ``(image_logits, patch_logits)``; run in eval mode (its mode is restored).
        images: ``(V, C, H, W)`` validation images, float in ``[0, 1]`` or uint8, on any device (composed there,
            then moved to the model's device).
        index_a, index_b: int64 ``(R,)`` indices into ``images``; masks: bool ``(R, P, P)``, True cells from ``a``.
        class_a, class_b: int64 ``(R,)`` the classes the cells are scored against.
        objective: ``logprob`` | ``accuracy``.
        image_term: also return the image-level term ``(R,)``.
        batch_size: compositions per forward pass.
        precision: see :data:`PRECISIONS` (module docstring).
        progress: a tqdm-like bar, advanced by the compositions scored (None: none).

    Returns:
        ``scores (R, P*P)`` float64 on the CPU (row-major cells), and the image term ``(R,)`` float64 or None.
    """
    check_choice("objective", objective, OBJECTIVES)
    if batch_size < 1:
        raise ValueError(f"composed_scores: batch_size must be >= 1, got {batch_size}")
    R, P = masks.shape[0], masks.shape[-1]
    device = model_device(model, device)
    scores = torch.empty(R, P * P, dtype=torch.float64)
    image = torch.empty(R, dtype=torch.float64) if image_term else None
    dtype = autocast_dtype(precision, device)
    channels_last = dtype is not None or device.type == "cuda"
    was_training = model.training
    model.eval()
    try:
        with forward_context(device, dtype):
            for s in range(0, R, batch_size):
                sl = slice(s, s + batch_size)
                _score_batch(model, images, index_a[sl], index_b[sl], masks[sl], class_a[sl], class_b[sl], P,
                             objective, device, channels_last, scores[sl], None if image is None else image[sl])
                if progress is not None:
                    progress.update(masks[sl].shape[0])
    finally:
        model.train(was_training)
    return scores, image


def _score_batch(model, images, index_a, index_b, masks, class_a, class_b, P, objective, device, channels_last,
                 scores, image) -> None:
    """One forward pass of :func:`composed_scores`: writes the batch's cell scores (and image term) in place."""
    src = images.device
    m = masks.to(src)
    x, lam = grid_mix(images, m, index_a.to(src), index_b.to(src))
    x = as_model_input(x.to(device))
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    image_logits, patch = model(x)
    patch = split_outputs((image_logits, patch), P, "composed_scores").double()
    ca, cb = class_a.to(patch.device), class_b.to(patch.device)
    target = torch.where(m.to(patch.device).reshape(-1, P * P), ca[:, None], cb[:, None])
    if objective == "logprob":
        sc = torch.log_softmax(patch, -1).gather(-1, target[..., None])[..., 0]
    else:
        sc = (patch.argmax(-1) == target).double()
    scores.copy_(sc)
    if image is not None:
        lp = torch.log_softmax(image_logits.double(), -1)
        lam64 = lam.to(lp.device, torch.float64)
        image.copy_(lam64 * lp.gather(1, ca[:, None])[:, 0] + (1 - lam64) * lp.gather(1, cb[:, None])[:, 0])


__all__ = ["PRECISIONS", "as_model_input", "autocast_dtype", "composed_scores", "forward_context", "model_device",
           "native_bfloat16", "split_outputs"]
