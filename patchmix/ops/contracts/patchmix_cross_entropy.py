"""Contract of ``patchmix::patchmix_cross_entropy`` and its backward companion.

Semantics (paper Eq. 3-5), for sample ``n`` with ``K`` classes and a ``P x P`` grid:

* image term ``L_O = CE(image_logits[n], t)``, soft target ``t = (1 - eps) * (lam * onehot(a) + (1 - lam) *
  onehot(b)) + eps / K`` (``a = target_a[n]``, ``b = target_b[n]``, ``eps = label_smoothing``);
* patch term ``L_P = sum_p CE(patch_logits[n, p], label_p)``, patch ``p = r * P + c`` row-major, ``label_p = a``
  where ``mask[n, r, c]`` else ``b``, smoothed the same way;
* ``L_T[n] = image_weight * w[n, 0] * L_O + patch_weight * w[n, 1] * L_P / P**2`` with the per-sample term
  weights ``w = term_weights (N, 2)``, finite and ``>= 0`` (all ones when ``None``): a batch that mixes methods
  per sample sets ``w[n, 1] = 0`` for its samples without a grid (no patch term, and their patch logits get a
  zero gradient) and scales their image term as their method trains it;
* then ``mean`` (default), ``sum`` or ``none`` over ``N``.

The op returns ``(loss, grad_image, grad_patch)``: the gradients of ``loss.sum()`` w.r.t. the logits, computed in
the same pass; ``patchmix_cross_entropy_backward`` scales them in place by the incoming gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import errors
from ._common import Range, check_ranges

OP = "patchmix_cross_entropy"
SCHEMA = (
    "(Tensor? image_logits, Tensor? patch_logits, Tensor target_a, Tensor target_b, Tensor lam, Tensor? mask, "
    "Tensor? term_weights, float image_weight, float patch_weight, float label_smoothing, str reduction, "
    "bool compute_grad) -> (Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = "(Tensor(a!) grad_image, Tensor(b!) grad_patch, Tensor grad_loss) -> ()"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
ERROR_TARGET_A = errors.code(OP, "target_a")
ERROR_TARGET_B = errors.code(OP, "target_b")
ERROR_LAM = errors.code(OP, "lam")
ERROR_TERM_WEIGHTS = errors.code(OP, "term_weights")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 logits, else float32 (the loss's dtype, and the kernels' accumulation type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def patch_strides(t: Tensor, P: int) -> tuple[int, int, int, int]:
    """``(n, k, r, c)`` strides of patch logits; for ``(N, P*P, K)`` patch ``p = r * P + c`` sits at ``p * stride(1)``."""
    if t.dim() == 3:
        return t.stride(0), t.stride(2), t.stride(1) * P, t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def leading_logits(image_logits: Tensor | None, patch_logits: Tensor | None) -> Tensor:
    """The logits that fix the loss's ``N``, dtype and device: ``image_logits``, else ``patch_logits``; both None
    is a ``ValueError`` (:func:`check_args` raises it first)."""
    if image_logits is not None:
        return image_logits
    if patch_logits is not None:
        return patch_logits
    raise ValueError(f"{OP}: image_logits and patch_logits are both None; give at least one")


def check_args(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    term_weights: Tensor | None = None,
    image_weight: float = 0.5,
    patch_weight: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[int, int, int]:
    """Shape, dtype, device and argument checks (no tensor data is read). Returns ``(N, K, P)``.

    Raises ``TypeError`` for non-tensors and ``ValueError`` naming the offending argument otherwise.
    """
    name = OP
    for arg, t in (("image_logits", image_logits), ("patch_logits", patch_logits), ("mask", mask),
                   ("term_weights", term_weights)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor or None, got {type(t).__name__}")
    for arg, t in (("target_a", target_a), ("target_b", target_b), ("lam", lam)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    ref = leading_logits(image_logits, patch_logits)
    K: int | None = None
    P: int | None = None
    if image_logits is not None:
        if image_logits.dim() != 2:
            raise ValueError(f"{name}: image_logits must have shape (N, K), got {tuple(image_logits.shape)}")
        if image_logits.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"{name}: image_logits has dtype {image_logits.dtype}; expected one of float32, float16, bfloat16, float64"
            )
        K = image_logits.shape[1]
    N = ref.shape[0]
    if patch_logits is not None:
        if patch_logits.dim() == 3:
            Kp, PP = patch_logits.shape[2], patch_logits.shape[1]
        elif patch_logits.dim() == 4 and patch_logits.shape[2] == patch_logits.shape[3]:
            Kp, PP = patch_logits.shape[1], patch_logits.shape[2] * patch_logits.shape[3]
        else:
            raise ValueError(
                f"{name}: patch_logits must have shape (N, P*P, K) or (N, K, P, P), got {tuple(patch_logits.shape)}"
            )
        if patch_logits.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"{name}: patch_logits has dtype {patch_logits.dtype}; expected one of float32, float16, bfloat16, float64"
            )
        if image_logits is not None:
            if patch_logits.dtype != image_logits.dtype:
                raise ValueError(
                    f"{name}: patch_logits has dtype {patch_logits.dtype} but image_logits has dtype {image_logits.dtype}"
                )
            if patch_logits.shape[0] != N:
                raise ValueError(
                    f"{name}: patch_logits holds N = {patch_logits.shape[0]} samples but image_logits holds N = {N}"
                )
            if Kp != K:
                raise ValueError(f"{name}: patch_logits has K = {Kp} classes but image_logits has K = {K}")
        K = Kp
        if mask is None:
            raise ValueError(f"{name}: patch_logits needs mask, a bool (N, P, P) tensor; got None")
    assert K is not None  # set by whichever of the logits is given
    if K < 1:
        raise ValueError(f"{name}: the logits have K = {K} classes; need at least one")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"{name}: mask must be a bool tensor, got dtype {mask.dtype}")
        if mask.dim() != 3 or mask.shape[1] != mask.shape[2] or mask.shape[0] != N:
            raise ValueError(f"{name}: mask must have shape (N, P, P) with N = {N}, got {tuple(mask.shape)}")
        P = mask.shape[1]
        if patch_logits is not None and P * P != PP:
            raise ValueError(
                f"{name}: patch_logits has {PP} patches (shape {tuple(patch_logits.shape)}) but mask has "
                f"P*P = {P * P} cells (shape {tuple(mask.shape)})"
            )
    for arg, t in (("target_a", target_a), ("target_b", target_b)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name}: {arg} must be int64 class indices, got dtype {t.dtype}")
        if t.dim() != 1 or t.shape[0] != N:
            raise ValueError(f"{name}: {arg} must have shape (N,) = ({N},), got {tuple(t.shape)}")
    if not lam.is_floating_point():
        raise ValueError(f"{name}: lam must be a floating tensor, got dtype {lam.dtype}")
    if lam.dim() != 1 or lam.shape[0] != N:
        raise ValueError(f"{name}: lam must have shape (N,) = ({N},), got {tuple(lam.shape)}")
    if term_weights is not None:
        if not term_weights.is_floating_point():
            raise ValueError(f"{name}: term_weights must be a floating tensor, got dtype {term_weights.dtype}")
        if tuple(term_weights.shape) != (N, 2):
            raise ValueError(f"{name}: term_weights must have shape (N, 2) = ({N}, 2), got {tuple(term_weights.shape)}")
    for arg, t in (("patch_logits", patch_logits), ("target_a", target_a), ("target_b", target_b), ("lam", lam),
                   ("mask", mask), ("term_weights", term_weights)):
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{name}: {arg} is on {t.device} but the logits are on {ref.device}; move them to one device"
            )
    for arg, w in (("image_weight", image_weight), ("patch_weight", patch_weight)):
        if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{name}: {arg} must be a finite number >= 0, got {w!r}")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return N, K, P if P is not None else 1


def check_data(target_a: Tensor, target_b: Tensor, lam: Tensor, num_classes: int,
               term_weights: Tensor | None = None) -> None:
    """Host check (CPU tensors and the reference): labels in ``[0, K)``, ``lam`` in ``[0, 1]``, term weights
    finite and ``>= 0``."""
    what = f"for K = {num_classes} classes"
    ranges = [
        Range("target_a", target_a, 0, num_classes - 1, what),
        Range("target_b", target_b, 0, num_classes - 1, what),
        Range("lam", lam, 0.0, 1.0),
    ]
    if term_weights is not None:
        ranges.append(Range("term_weights", term_weights, 0.0, torch.finfo(torch.float64).max))
    check_ranges(OP, ranges)


def check_backward_args(grad_image: Tensor, grad_patch: Tensor, grad_loss: Tensor) -> None:
    """``grad_loss`` is ``()`` (or ``(N,)`` for ``reduction="none"``, one per sample of the gradients)."""
    if grad_loss.dim() > 1:
        raise ValueError(f"{OP}_backward: grad_loss must be a scalar or (N,), got {tuple(grad_loss.shape)}")
    for name, g in (("grad_image", grad_image), ("grad_patch", grad_patch)):
        if g.numel() and grad_loss.dim() == 1 and g.shape[0] != grad_loss.shape[0]:
            raise ValueError(f"{OP}_backward: {name} holds {g.shape[0]} samples but grad_loss {grad_loss.shape[0]}")


def scale_gradients(grad_image: Tensor, grad_patch: Tensor, grad_loss: Tensor) -> None:
    """The backward's semantics in PyTorch ops: ``grad *= grad_loss`` in place (per sample for a ``(N,)``
    ``grad_loss``), formed in float32 at least (a loss scale such as GradScaler's 65536 is not a finite float16,
    and scaling a float16 gradient after rounding it loses the small entries)."""
    for g in (grad_image, grad_patch):
        if not g.numel():
            continue
        wide = torch.promote_types(g.dtype, torch.float32)
        s = grad_loss.to(wide)
        if grad_loss.dim() == 1:
            s = s.reshape((-1,) + (1,) * (g.dim() - 1))
        g.copy_(g.to(wide) * s)
