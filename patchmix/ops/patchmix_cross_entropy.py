"""``patchmix::patchmix_cross_entropy``: the image + per-patch cross-entropy of PatchMix, fused with its gradient.

Semantics (``shared/DESIGN.md`` section 1, paper Eq. 3-5), for sample ``n`` with ``K`` classes and a ``P x P`` grid:

* image term ``L_O = CE(image_logits[n], t)``, soft target ``t = (1 - eps) * (lam * onehot(a) + (1 - lam) *
  onehot(b)) + eps / K`` (``a = target_a[n]``, ``b = target_b[n]``, ``eps = label_smoothing``);
* patch term ``L_P = sum_p CE(patch_logits[n, p], label_p)``, patch ``p = r * P + c`` row-major, ``label_p = a``
  where ``mask[n, r, c]`` else ``b``, smoothed the same way;
* ``L_T = image_weight * L_O + patch_weight * L_P / P**2``, then ``mean`` (default), ``sum`` or ``none`` over ``N``.

The op returns ``(loss, grad_image, grad_patch)``: each target mixes at most two classes, so one pass over a
row (max, sum of exponentials, two gathered logits) gives the loss *and* the gradient ``coef * (softmax -
target)``, already scaled for the reduction. No one-hot, soft-target or log-softmax tensor is built. The
autograd backward only multiplies the saved gradients by the incoming gradient (and returns them untouched
when that is the scalar 1, the ``loss.backward()`` case, on CPU tensors).

Kernels: ``patchmix_cross_entropy_cpu`` (``csrc/patchmix_cross_entropy.cpp``), ``patchmix_cross_entropy_cuda``
(``kernels/patchmix_cross_entropy.py``, Triton), ``patchmix_cross_entropy_fused_reference`` (below, the fallback,
PyTorch ops). ``patchmix_cross_entropy_reference`` is the plain, autograd-differentiated PyTorch formulation
(``F.cross_entropy``) that tests and benchmarks compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import Range, check_ranges
from ._registry import define_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")

SCHEMA = (
    "(Tensor? image_logits, Tensor? patch_logits, Tensor target_a, Tensor target_b, Tensor lam, Tensor? mask, "
    "float image_weight, float patch_weight, float label_smoothing, str reduction, bool compute_grad) "
    "-> (Tensor, Tensor, Tensor)"
)


# --------------------------------------------------------------------------------------------------
# checks shared by the public wrapper, the reference and the Triton launcher
# --------------------------------------------------------------------------------------------------


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 logits, else float32 (the loss's dtype, and the kernels' accumulation type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_patchmix_cross_entropy_args(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    image_weight: float = 0.5,
    patch_weight: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[int, int, int]:
    """Shape, dtype, device and argument checks (no tensor data is read). Returns ``(N, K, P)``.

    Raises ``TypeError`` for non-tensors and ``ValueError`` naming the offending argument otherwise.
    """
    name = "patchmix_cross_entropy"
    for arg, t in (("image_logits", image_logits), ("patch_logits", patch_logits), ("mask", mask)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor or None, got {type(t).__name__}")
    for arg, t in (("target_a", target_a), ("target_b", target_b), ("lam", lam)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if image_logits is None and patch_logits is None:
        raise ValueError(f"{name}: image_logits and patch_logits are both None; give at least one")
    ref = image_logits if image_logits is not None else patch_logits
    K = P = None
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
    for arg, t in (("patch_logits", patch_logits), ("target_a", target_a), ("target_b", target_b), ("lam", lam), ("mask", mask)):
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


def check_patchmix_cross_entropy_data(target_a: Tensor, target_b: Tensor, lam: Tensor, num_classes: int) -> None:
    """Data checks: labels in ``[0, K)``, ``lam`` in ``[0, 1]``. Reads the tensors (one sync on CUDA, see
    ``_checks``); the kernels call it before they read any logit, so a bad label is an error, never an
    out-of-bounds read."""
    what = f"for K = {num_classes} classes"
    check_ranges("patchmix_cross_entropy", [
        Range("target_a", target_a, 0, num_classes - 1, what),
        Range("target_b", target_b, 0, num_classes - 1, what),
        Range("lam", lam, 0.0, 1.0),
    ])


def _patch_rows(patch_logits: Tensor) -> Tensor:
    """``(N, P*P, K)`` view of either patch layout (no copy)."""
    return patch_logits if patch_logits.dim() == 3 else patch_logits.flatten(2).transpose(1, 2)


def _grad_like(logits: Tensor, rows_grad: Tensor) -> Tensor:
    """``rows_grad`` (row view of the gradient) written into ``empty_like(logits)`` in the logits' dtype/layout."""
    if logits.dim() == 4:  # (N, P*P, K) rows -> (N, K, P, P)
        rows_grad = rows_grad.transpose(1, 2).reshape(logits.shape)
    return torch.empty_like(logits).copy_(rows_grad)


# --------------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------------


def patchmix_cross_entropy_reference(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    *,
    image_weight: float = 0.5,
    patch_weight: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """The loss written the plain PyTorch way (``F.cross_entropy``, soft target and one-hot tensors), differentiable
    by autograd. Same arguments and result as :func:`patchmix_cross_entropy`; float16/bfloat16 logits are upcast
    to float32 like the kernels do. Tests and benchmarks (the "eager" baseline) import it."""
    N, K, P = check_patchmix_cross_entropy_args(
        image_logits, patch_logits, target_a, target_b, lam, mask, image_weight, patch_weight, label_smoothing, reduction
    )
    check_patchmix_cross_entropy_data(target_a, target_b, lam, K)
    ref = image_logits if image_logits is not None else patch_logits
    acc = accumulation_dtype(ref.dtype)
    loss = torch.zeros(N, dtype=acc, device=ref.device)
    if image_logits is not None:
        lam_ = lam.to(acc)[:, None]
        soft = F.one_hot(target_a, K).to(acc) * lam_ + F.one_hot(target_b, K).to(acc) * (1 - lam_)
        ce = F.cross_entropy(image_logits.to(acc), soft, label_smoothing=label_smoothing, reduction="none")
        loss = loss + image_weight * ce
    if patch_logits is not None:
        labels = torch.where(mask, target_a[:, None, None], target_b[:, None, None])  # (N, P, P)
        if patch_logits.dim() == 4:  # (N, K, P, P): cross_entropy's own (N, C, d1, d2) form
            ce = F.cross_entropy(patch_logits.to(acc), labels, label_smoothing=label_smoothing, reduction="none")
        else:  # (N, P*P, K) -> (N, K, P*P)
            ce = F.cross_entropy(
                patch_logits.to(acc).transpose(1, 2), labels.flatten(1), label_smoothing=label_smoothing, reduction="none"
            )
        loss = loss + (patch_weight / (P * P)) * ce.flatten(1).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _row_loss_and_grad(rows: Tensor, weight_a: Tensor, label_a: Tensor, label_b: Tensor, eps: float, coef: float):
    """Loss ``(...,)`` and ``coef * dloss/drows`` for rows ``(..., K)`` against ``w_a * onehot(a) + (1 - w_a) *
    onehot(b)``, smoothed. Written with PyTorch ops in the accumulation dtype (materialises the target)."""
    K = rows.shape[-1]
    logp = torch.log_softmax(rows, -1)
    w = weight_a[..., None]
    target = F.one_hot(label_a, K).to(rows.dtype) * w + F.one_hot(label_b, K).to(rows.dtype) * (1 - w)
    target = target * (1 - eps) + eps / K
    loss = -(target * logp).sum(-1)
    return loss, coef * (logp.exp() - target)


def patchmix_cross_entropy_fused_reference(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    image_weight: float,
    patch_weight: float,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op's contract in PyTorch ops: ``(loss, grad_image, grad_patch)``; the fallback kernel.

    ``loss`` is float32 (float64 for float64 logits), ``()`` or ``(N,)`` for ``reduction="none"``. The gradients
    are those of ``loss.sum()`` (so already divided by ``N`` for ``mean``), shaped, strided and typed like the
    logits; an empty ``(0,)`` tensor stands for a missing logits tensor or ``compute_grad=False``.
    """
    N, K, P = check_patchmix_cross_entropy_args(
        image_logits, patch_logits, target_a, target_b, lam, mask, image_weight, patch_weight, label_smoothing, reduction
    )
    check_patchmix_cross_entropy_data(target_a, target_b, lam, K)
    ref = image_logits if image_logits is not None else patch_logits
    acc = accumulation_dtype(ref.dtype)
    scale = 1.0 / N if (reduction == "mean" and N > 0) else 1.0
    loss = torch.zeros(N, dtype=acc, device=ref.device)
    grad_image = grad_patch = ref.new_empty((0,))
    if image_logits is not None:
        ce, g = _row_loss_and_grad(
            image_logits.to(acc), lam.to(acc), target_a, target_b, label_smoothing, image_weight * scale
        )
        loss = loss + image_weight * ce
        if compute_grad:
            grad_image = _grad_like(image_logits, g)
    if patch_logits is not None:
        labels = torch.where(mask.flatten(1), target_a[:, None], target_b[:, None])  # (N, P*P)
        coef = patch_weight / (P * P)
        ce, g = _row_loss_and_grad(
            _patch_rows(patch_logits).to(acc), torch.ones(labels.shape, dtype=acc, device=ref.device), labels, labels,
            label_smoothing, coef * scale,
        )
        loss = loss + coef * ce.sum(1)
        if compute_grad:
            grad_patch = _grad_like(patch_logits, g)
    if reduction == "mean":
        loss = loss.to(torch.float64).mean().to(acc)
    elif reduction == "sum":
        loss = loss.to(torch.float64).sum().to(acc)
    return loss, grad_image, grad_patch


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

patchmix_cross_entropy_op = define_op(
    "patchmix_cross_entropy", SCHEMA, patchmix_cross_entropy_fused_reference, "patchmix_cross_entropy_cuda"
)


@torch.library.register_fake("patchmix::patchmix_cross_entropy")
def _patchmix_cross_entropy_fake(
    image_logits, patch_logits, target_a, target_b, lam, mask, image_weight, patch_weight, label_smoothing,
    reduction, compute_grad,
):
    ref = image_logits if image_logits is not None else patch_logits
    acc = accumulation_dtype(ref.dtype)
    loss = ref.new_empty((ref.shape[0],) if reduction == "none" else (), dtype=acc)
    grad_image = torch.empty_like(image_logits) if (compute_grad and image_logits is not None) else ref.new_empty((0,))
    grad_patch = torch.empty_like(patch_logits) if (compute_grad and patch_logits is not None) else ref.new_empty((0,))
    return loss, grad_image, grad_patch


def _setup_context(ctx, inputs, output):
    image_logits, patch_logits = inputs[0], inputs[1]
    ctx.reduction = inputs[9]
    ctx.compute_grad = inputs[10]
    ctx.has_image = image_logits is not None
    ctx.has_patch = patch_logits is not None
    _, grad_image, grad_patch = output
    ctx.save_for_backward(grad_image, grad_patch)
    # The gradient outputs get no gradient of their own: without these two lines autograd would hand the
    # backward two zero-filled tensors the size of the logits (a 10 ms memset at N=256, K=1000, P=4).
    ctx.mark_non_differentiable(grad_image, grad_patch)
    ctx.set_materialize_grads(False)


def _is_unit_cpu_scalar(g: Tensor) -> bool:
    """True for a real (not traced) CPU scalar equal to 1 that needs no gradient of its own: reading it costs
    nothing and saves a full pass."""
    if g.device.type != "cpu" or g.dim() != 0 or g.requires_grad or torch.compiler.is_compiling():
        return False
    if isinstance(g, torch._subclasses.FakeTensor) or type(g) is not torch.Tensor:
        return False
    return bool(g == 1)


def _scale(saved: Tensor, grad_loss: Tensor, reduction: str) -> Tensor:
    # The product is formed in float32 (at least): a loss scale such as GradScaler's 65536 is not a finite
    # float16, and scaling a float16 gradient after rounding it loses the small entries (measured: 0.46%
    # relative error at scale 32768 against 0.014% when multiplied in float32).
    wide = torch.promote_types(saved.dtype, torch.float32)
    if reduction == "none":  # per-sample incoming gradient, broadcast over the sample's logits
        g = grad_loss.to(wide).reshape((-1,) + (1,) * (saved.dim() - 1))
        return (saved.to(wide) * g).to(saved.dtype)
    if _is_unit_cpu_scalar(grad_loss):
        # loss.backward(): the saved gradient is the answer. Returning it (not saved * 1) saves one read and
        # one write of the logits; autograd hands it to .grad without a copy once this graph is freed.
        return saved
    if saved.dtype == wide:
        return saved * grad_loss.to(wide)
    return (saved.to(wide) * grad_loss.to(wide)).to(saved.dtype)


def _backward(ctx, grad_loss, _grad_image_out, _grad_patch_out):
    grad_image, grad_patch = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 11
    need_image = ctx.has_image and ctx.needs_input_grad[0]
    need_patch = ctx.has_patch and ctx.needs_input_grad[1]
    if (need_image or need_patch) and not ctx.compute_grad:
        raise RuntimeError(
            "patchmix_cross_entropy: the op was called with compute_grad=False, so it saved no gradient; "
            "call it through patchmix.ops.patchmix_cross_entropy, which sets compute_grad from requires_grad"
        )
    out_image = _scale(grad_image, grad_loss, ctx.reduction) if need_image else None
    out_patch = _scale(grad_patch, grad_loss, ctx.reduction) if need_patch else None
    return (out_image, out_patch) + (None,) * 9


torch.library.register_autograd("patchmix::patchmix_cross_entropy", _backward, setup_context=_setup_context)


def patchmix_cross_entropy(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    *,
    image_weight: float = 0.5,
    patch_weight: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """PatchMix loss ``L_T = image_weight * L_O + patch_weight * L_P / P**2`` in one fused pass.

    Args:
        image_logits: ``(N, K)`` or ``None`` (patch-only loss).
        patch_logits: ``(N, P*P, K)`` or the head's natural ``(N, K, P, P)`` (any strides, read in place), or
            ``None`` (image-only loss). Same dtype as ``image_logits``: float32, float16, bfloat16 or float64.
        target_a, target_b: int64 ``(N,)`` labels in ``[0, K)``.
        lam: floating ``(N,)`` in ``[0, 1]``, the weight of ``target_a`` in the image target.
        mask: bool ``(N, P, P)``; patch ``r * P + c`` is labelled ``target_a`` where True, else ``target_b``.
            Required with ``patch_logits``, ignored without.
        image_weight, patch_weight: the two terms' weights (paper: 0.5, 0.5).
        label_smoothing: ``eps``; both terms use ``(1 - eps) * target + eps / K``.
        reduction: ``"mean"`` (over ``N``), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).

    Returns:
        float32 loss (float64 for float64 logits), differentiable w.r.t. both logits (first order only: the
        gradient is computed in the forward pass and saved; it has no graph of its own).
    """
    _, K, _ = check_patchmix_cross_entropy_args(
        image_logits, patch_logits, target_a, target_b, lam, mask, image_weight, patch_weight, label_smoothing, reduction
    )
    if not torch.compiler.is_compiling() and target_a.device.type == "cpu":
        # CPU tensors: check the data here as well, so an error never has to cross from C++ (on torch 2.11,
        # CUDA build, an exception thrown inside patchmix._C was seen to crash the process). Free on the CPU;
        # CUDA tensors are checked by the Triton launcher, which raises in Python.
        check_patchmix_cross_entropy_data(target_a, target_b, lam, K)
    compute_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (image_logits, patch_logits)
    )
    if patch_logits is None:
        mask = None  # ignored: the kernels never read it
    loss, _, _ = patchmix_cross_entropy_op(
        image_logits, patch_logits, target_a, target_b, lam, mask,
        float(image_weight), float(patch_weight), float(label_smoothing), reduction, compute_grad,
    )
    return loss
