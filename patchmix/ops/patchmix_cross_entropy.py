"""``patchmix::patchmix_cross_entropy``: the image + per-patch cross-entropy of PatchMix, fused with its gradient.

Semantics: ``contracts.patchmix_cross_entropy`` (paper Eq. 3-5, with optional per-sample term weights).

The op returns ``(loss, grad_image, grad_patch)``: each target mixes at most two classes, so one pass over a
row (max, sum of exponentials, two gathered logits) gives the loss *and* the gradient ``coef * (softmax -
target)``, already scaled for the reduction. No one-hot, soft-target or log-softmax tensor is built. The
autograd backward hands the saved gradients out, after ``patchmix::patchmix_cross_entropy_backward`` has
scaled them in place by the incoming gradient; that op decides on the device, so nothing moves when the
incoming gradient is 1 (``loss.backward()``) and the host never reads it. A second backward through a retained
graph recomputes the gradients from the logits (saved for the backward, no copy) and leaves the first result
alone. Double backward (``create_graph=True``, e.g. a gradient penalty) recomputes the gradient from the logits
with differentiable PyTorch ops (:func:`_differentiable_grads`), so autograd differentiates through it; the fused
first-order path is unchanged (docs/ops.md gives the costs).

Kernels: ``patchmix_cross_entropy_cpu`` (``csrc/patchmix_cross_entropy.cpp``), ``patchmix_cross_entropy_cuda``
(``kernels/patchmix_cross_entropy.py``, Triton, one launch), ``patchmix_cross_entropy_reference`` (below, the
registered fallback, PyTorch ops). ``patchmix_cross_entropy_eager`` is the plain, autograd-differentiated
PyTorch formulation (``F.cross_entropy``) that tests and benchmarks compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._registry import define_op
from .contracts import _common
from .contracts.patchmix_cross_entropy import (
    BACKWARD_SCHEMA,
    REDUCTIONS,
    SCHEMA,
    accumulation_dtype,
    check_args,
    check_backward_args,
    check_data,
    leading_logits,
    scale_gradients,
)

__all__ = ["REDUCTIONS", "patchmix_cross_entropy", "patchmix_cross_entropy_eager", "patchmix_cross_entropy_reference"]


def _patch_rows(patch_logits: Tensor) -> Tensor:
    """``(N, P*P, K)`` view of either patch layout (no copy)."""
    return patch_logits if patch_logits.dim() == 3 else patch_logits.flatten(2).transpose(1, 2)


def _grad_like(logits: Tensor, rows_grad: Tensor) -> Tensor:
    """``rows_grad`` (row view of the gradient) written into ``empty_like(logits)`` in the logits' dtype/layout."""
    if logits.dim() == 4:  # (N, P*P, K) rows -> (N, K, P, P)
        rows_grad = rows_grad.transpose(1, 2).reshape(logits.shape)
    return torch.empty_like(logits).copy_(rows_grad)


def _term_weights(term_weights: Tensor | None, N: int, acc: torch.dtype, device) -> tuple[Tensor, Tensor]:
    if term_weights is None:
        one = torch.ones((N,), dtype=acc, device=device)
        return one, one
    w = term_weights.to(acc)
    return w[:, 0], w[:, 1]


# --------------------------------------------------------------------------------------------------
# eager baseline and reference
# --------------------------------------------------------------------------------------------------


def patchmix_cross_entropy_eager(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    *,
    term_weights: Tensor | None = None,
    image_weight: float = 0.5,
    patch_weight: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """The loss written the plain PyTorch way (``F.cross_entropy``, soft target and one-hot tensors), differentiable
    by autograd. Same arguments and result as :func:`patchmix_cross_entropy`; float16/bfloat16 logits are upcast
    to float32 like the kernels do. Tests and benchmarks (the "eager" baseline) import it."""
    N, K, P = check_args(image_logits, patch_logits, target_a, target_b, lam, mask, term_weights, image_weight,
                         patch_weight, label_smoothing, reduction)
    check_data(target_a, target_b, lam, K, term_weights)
    ref = leading_logits(image_logits, patch_logits)
    acc = accumulation_dtype(ref.dtype)
    w_image, w_patch = _term_weights(term_weights, N, acc, ref.device)
    loss = torch.zeros(N, dtype=acc, device=ref.device)
    if image_logits is not None:
        lam_ = lam.to(acc)[:, None]
        soft = F.one_hot(target_a, K).to(acc) * lam_ + F.one_hot(target_b, K).to(acc) * (1 - lam_)
        ce = F.cross_entropy(image_logits.to(acc), soft, label_smoothing=label_smoothing, reduction="none")
        loss = loss + image_weight * w_image * ce
    if patch_logits is not None:
        assert mask is not None  # check_args: patch logits need a mask
        labels = torch.where(mask, target_a[:, None, None], target_b[:, None, None])  # (N, P, P)
        if patch_logits.dim() == 4:  # (N, K, P, P): cross_entropy's own (N, C, d1, d2) form
            ce = F.cross_entropy(patch_logits.to(acc), labels, label_smoothing=label_smoothing, reduction="none")
        else:  # (N, P*P, K) -> (N, K, P*P)
            ce = F.cross_entropy(
                patch_logits.to(acc).transpose(1, 2), labels.flatten(1), label_smoothing=label_smoothing, reduction="none"
            )
        loss = loss + (patch_weight / (P * P)) * w_patch * ce.flatten(1).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _row_loss_and_grad(rows: Tensor, weight_a: Tensor, label_a: Tensor, label_b: Tensor, eps: float, coef: Tensor):
    """Loss ``(...,)`` and ``coef * dloss/drows`` for rows ``(..., K)`` against ``w_a * onehot(a) + (1 - w_a) *
    onehot(b)``, smoothed. Written with PyTorch ops in the accumulation dtype (materialises the target)."""
    K = rows.shape[-1]
    logp = torch.log_softmax(rows, -1)
    w = weight_a[..., None]
    target = F.one_hot(label_a, K).to(rows.dtype) * w + F.one_hot(label_b, K).to(rows.dtype) * (1 - w)
    target = target * (1 - eps) + eps / K
    loss = -(target * logp).sum(-1)
    return loss, coef[..., None] * (logp.exp() - target)


def patchmix_cross_entropy_reference(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    term_weights: Tensor | None,
    image_weight: float,
    patch_weight: float,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op's contract in PyTorch ops: ``(loss, grad_image, grad_patch)``; the registered fallback kernel.

    ``loss`` is float32 (float64 for float64 logits), ``()`` or ``(N,)`` for ``reduction="none"``. The gradients
    are those of ``loss.sum()`` (so already divided by ``N`` for ``mean``), shaped, strided and typed like the
    logits; an empty ``(0,)`` tensor stands for a missing logits tensor or ``compute_grad=False``.
    """
    N, K, P = check_args(image_logits, patch_logits, target_a, target_b, lam, mask, term_weights, image_weight,
                         patch_weight, label_smoothing, reduction)
    check_data(target_a, target_b, lam, K, term_weights)
    ref = leading_logits(image_logits, patch_logits)
    acc = accumulation_dtype(ref.dtype)
    scale = 1.0 / N if (reduction == "mean" and N > 0) else 1.0
    w_image, w_patch = _term_weights(term_weights, N, acc, ref.device)
    loss = torch.zeros(N, dtype=acc, device=ref.device)
    grad_image = grad_patch = ref.new_empty((0,))
    if image_logits is not None:
        coef = image_weight * w_image
        ce, g = _row_loss_and_grad(image_logits.to(acc), lam.to(acc), target_a, target_b, label_smoothing, coef * scale)
        loss = loss + coef * ce
        if compute_grad:
            grad_image = _grad_like(image_logits, g)
    if patch_logits is not None:
        assert mask is not None  # check_args: patch logits need a mask
        labels = torch.where(mask.flatten(1), target_a[:, None], target_b[:, None])  # (N, P*P)
        coef = (patch_weight / (P * P)) * w_patch
        ce, g = _row_loss_and_grad(
            _patch_rows(patch_logits).to(acc), torch.ones(labels.shape, dtype=acc, device=ref.device), labels, labels,
            label_smoothing, (coef * scale)[:, None].expand(labels.shape),
        )
        loss = loss + coef * ce.sum(1)
        if compute_grad:
            grad_patch = _grad_like(patch_logits, g)
    if reduction == "mean":
        loss = loss.to(torch.float64).mean().to(acc)
    elif reduction == "sum":
        loss = loss.to(torch.float64).sum().to(acc)
    return loss, grad_image, grad_patch


def _differentiable_grads(image_logits, patch_logits, target_a, target_b, lam, mask, term_weights, image_weight,
                          patch_weight, label_smoothing, reduction) -> tuple[Tensor, Tensor]:
    """The op's gradients (those of ``loss.sum()``, like the op's) as differentiable PyTorch ops of the logits: what a
    double backward differentiates. Per row ``coef * (softmax - eps / K)`` minus ``coef * (1 - eps)`` times the
    target's weights at its two classes (``scatter_add``: no one-hot tensor), in the logits' own layout (the
    softmax runs along their class dimension: no transposed copy), so that a gradient-penalty step costs about
    what eager's does, where the reference's one-hot formula costs about twice that (docs/ops.md)."""
    ref = leading_logits(image_logits, patch_logits)
    N, acc, eps = ref.shape[0], accumulation_dtype(ref.dtype), label_smoothing
    scale = 1.0 / N if (reduction == "mean" and N > 0) else 1.0
    w_image, w_patch = _term_weights(term_weights, N, acc, ref.device)

    def grad(logits, dim, coef, label_a, label_b, weight_a):
        K = logits.shape[dim]
        coef = coef.reshape(coef.shape + (1,) * (label_a.dim() - 1)).expand(label_a.shape)
        g = (torch.softmax(logits.to(acc), dim) - eps / K) * coef.unsqueeze(dim)
        hit = -(1 - eps) * coef
        g = g.scatter_add(dim, label_a.unsqueeze(dim), (hit * weight_a).unsqueeze(dim))
        if label_b is not None:
            g = g.scatter_add(dim, label_b.unsqueeze(dim), (hit * (1 - weight_a)).unsqueeze(dim))
        return g.to(logits.dtype)

    grad_image = grad_patch = ref.new_empty((0,))
    if image_logits is not None:
        grad_image = grad(image_logits, 1, image_weight * w_image * scale, target_a, target_b, lam.to(acc))
    if patch_logits is not None:
        P = mask.shape[1]
        coef = (patch_weight / (P * P)) * w_patch * scale
        if patch_logits.dim() == 4:  # (N, K, P, P): classes along dim 1
            labels = torch.where(mask, target_a[:, None, None], target_b[:, None, None])
            grad_patch = grad(patch_logits, 1, coef, labels, None, torch.ones((), dtype=acc, device=ref.device))
        else:  # (N, P*P, K)
            labels = torch.where(mask.flatten(1), target_a[:, None], target_b[:, None])
            grad_patch = grad(patch_logits, 2, coef, labels, None, torch.ones((), dtype=acc, device=ref.device))
    return grad_image, grad_patch


def patchmix_cross_entropy_backward_reference(grad_image: Tensor, grad_patch: Tensor, grad_loss: Tensor) -> None:
    """The backward op in PyTorch ops (the CPU kernel: reading ``grad_loss`` costs nothing there): scale the saved
    gradients in place, unless ``grad_loss`` is 1."""
    check_backward_args(grad_image, grad_patch, grad_loss)
    if grad_loss.device.type == "cpu" and bool((grad_loss == 1).all()):
        return
    scale_gradients(grad_image, grad_patch, grad_loss)


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

patchmix_cross_entropy_op = define_op(
    "patchmix_cross_entropy", SCHEMA, patchmix_cross_entropy_reference, "patchmix_cross_entropy_cuda"
)
patchmix_cross_entropy_backward_op = define_op(
    "patchmix_cross_entropy_backward", BACKWARD_SCHEMA, patchmix_cross_entropy_backward_reference,
    "patchmix_cross_entropy_backward_cuda", kernel_module="patchmix_cross_entropy", cpp=False,
)


@torch.library.register_fake("patchmix::patchmix_cross_entropy")
def _patchmix_cross_entropy_fake(
    image_logits, patch_logits, target_a, target_b, lam, mask, term_weights, image_weight, patch_weight,
    label_smoothing, reduction, compute_grad,
):
    ref = leading_logits(image_logits, patch_logits)
    acc = accumulation_dtype(ref.dtype)
    loss = ref.new_empty((ref.shape[0],) if reduction == "none" else (), dtype=acc)
    grad_image = torch.empty_like(image_logits) if (compute_grad and image_logits is not None) else ref.new_empty((0,))
    grad_patch = torch.empty_like(patch_logits) if (compute_grad and patch_logits is not None) else ref.new_empty((0,))
    return loss, grad_image, grad_patch


@torch.library.register_fake("patchmix::patchmix_cross_entropy_backward")
def _patchmix_cross_entropy_backward_fake(grad_image, grad_patch, grad_loss):
    return None


def _setup_context(ctx, inputs, output):
    image_logits, patch_logits = inputs[0], inputs[1]
    ctx.reduction = inputs[10]
    ctx.compute_grad = inputs[11]
    ctx.has_image = image_logits is not None
    ctx.has_patch = patch_logits is not None
    _, grad_image, grad_patch = output
    # The gradients are handed out (scaled in place) by the first plain backward, which then drops them: kept on
    # ctx, not saved, because a saved tensor that was modified in place (by that scaling, or later by whoever
    # holds the .grad it became) can no longer be unpacked, and a later backward unpacks the logits.
    ctx.grads = (grad_image, grad_patch)
    # The logits are saved (a reference, no copy): a double backward and a retained graph's later backward
    # recompute the gradient from them (the first backward scaled the saved gradients in place, and a zero incoming
    # gradient leaves nothing to recover). A plain backward releases them, so all this costs is that logits the
    # caller drops before the backward live until it (a training loop keeps its outputs anyway). The other inputs
    # are small.
    ctx.save_for_backward(image_logits, patch_logits)
    ctx.others = inputs[2:]
    # The gradient outputs get no gradient of their own: without these two lines autograd would hand the
    # backward two zero-filled tensors the size of the logits.
    ctx.mark_non_differentiable(grad_image, grad_patch)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad_image_out, _grad_patch_out):
    if grad_loss is None:
        return (None,) * 12
    need_image = ctx.has_image and ctx.needs_input_grad[0]
    need_patch = ctx.has_patch and ctx.needs_input_grad[1]
    if (need_image or need_patch) and not ctx.compute_grad:
        raise RuntimeError(
            "patchmix_cross_entropy: the op was called with compute_grad=False, so it saved no gradient; "
            "call it through patchmix.ops.patchmix_cross_entropy, which sets compute_grad from requires_grad"
        )
    if torch.is_grad_enabled():
        # create_graph=True (double backward, e.g. a gradient penalty): the gradient as differentiable PyTorch ops of
        # the logits and grad_loss (the reference's formula), so autograd can differentiate it; the computed
        # gradients stay untouched for a later plain backward
        grad_image, grad_patch = _differentiable_grads(*ctx.saved_tensors, *ctx.others[:-1])
        grad_image, grad_patch = (_rescaled(g, grad_loss) for g in (grad_image, grad_patch))
    elif type(grad_loss) is not torch.Tensor or torch.compiler.is_compiling():
        # traced (torch.compile, opcheck's AOT check): the functional form, which the compiler fuses
        grad_image, grad_patch = (_rescaled(g, grad_loss) for g in ctx.grads)
    elif ctx.grads is not None:  # the computed gradients, scaled in place on the device (nothing moves when
        grad_image, grad_patch = ctx.grads  # grad_loss is 1), handed out, and dropped here
        ctx.grads = None
        patchmix_cross_entropy_backward_op(grad_image if need_image else grad_image[:0],
                                           grad_patch if need_patch else grad_patch[:0], grad_loss)
    else:  # a retained graph's later backward: recompute, leave the first result alone
        with torch.no_grad():
            _, grad_image, grad_patch = patchmix_cross_entropy_op(*ctx.saved_tensors, *ctx.others[:-1], True)
        grad_image, grad_patch = (_rescaled(g, grad_loss) for g in (grad_image, grad_patch))
    return (grad_image if need_image else None, grad_patch if need_patch else None) + (None,) * 10


def _rescaled(g: Tensor, grad_loss: Tensor) -> Tensor:
    """``g * grad_loss`` (per sample for a ``(N,)`` ``grad_loss``), formed in float32 at least, in ``g``'s dtype."""
    if not g.numel():
        return g
    wide = torch.promote_types(g.dtype, torch.float32)
    s = grad_loss.to(wide)
    if grad_loss.dim() == 1:
        s = s.reshape((-1,) + (1,) * (g.dim() - 1))
    return (g.to(wide) * s).to(g.dtype)


torch.library.register_autograd("patchmix::patchmix_cross_entropy", _backward, setup_context=_setup_context)


def patchmix_cross_entropy(
    image_logits: Tensor | None,
    patch_logits: Tensor | None,
    target_a: Tensor,
    target_b: Tensor,
    lam: Tensor,
    mask: Tensor | None,
    *,
    term_weights: Tensor | None = None,
    image_weight: float = 0.5,
    patch_weight: float = 0.5,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """PatchMix loss ``L_T = image_weight * w[:, 0] * L_O + patch_weight * w[:, 1] * L_P / P**2`` in one fused pass.

    Args:
        image_logits: ``(N, K)`` or ``None`` (patch-only loss).
        patch_logits: ``(N, P*P, K)`` or the head's natural ``(N, K, P, P)`` (any strides, read in place), or
            ``None`` (image-only loss). Same dtype as ``image_logits``: float32, float16, bfloat16 or float64.
        target_a, target_b: int64 ``(N,)`` labels in ``[0, K)``.
        lam: floating ``(N,)`` in ``[0, 1]``, the weight of ``target_a`` in the image target.
        mask: bool ``(N, P, P)``; patch ``r * P + c`` is labelled ``target_a`` where True, else ``target_b``.
            Required with ``patch_logits``, ignored without.
        term_weights: optional floating ``(N, 2)``, finite and ``>= 0``: per-sample weights of the image and
            the patch term, multiplying ``image_weight`` and ``patch_weight`` (a batch that mixes methods per
            sample gives its samples without a grid ``term_weights[n, 1] = 0``: no patch term). ``None``: ones.
        image_weight, patch_weight: the two terms' weights (paper: 0.5, 0.5).
        label_smoothing: ``eps``; both terms use ``(1 - eps) * target + eps / K``.
        reduction: ``"mean"`` (over ``N``), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).

    Returns:
        float32 loss (float64 for float64 logits), differentiable w.r.t. both logits: the first-order gradient is
        computed in the forward pass and saved; under ``create_graph=True`` (double backward, a gradient penalty)
        the backward recomputes it with differentiable PyTorch ops instead (eager's cost, docs/ops.md).

    Bad labels, ``lam`` or term weights: on the CPU a ``ValueError`` naming the argument; on CUDA the kernel
    clamps them (no out-of-bounds read) and ``patchmix.ops.check_errors()`` raises (no host sync here).
    """
    _, K, _ = check_args(image_logits, patch_logits, target_a, target_b, lam, mask, term_weights, image_weight,
                         patch_weight, label_smoothing, reduction)
    if _common.host_checks(target_a):
        # host check on the CPU (free), in Python (see grid_mix); CUDA kernels check in the kernel
        check_data(target_a, target_b, lam, K, term_weights)
    compute_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (image_logits, patch_logits)
    )
    if patch_logits is None:
        mask = None  # ignored: the kernels never read it
    loss, _, _ = patchmix_cross_entropy_op(
        image_logits, patch_logits, target_a, target_b, lam, mask, term_weights,
        float(image_weight), float(patch_weight), float(label_smoothing), reduction, compute_grad,
    )
    return loss
