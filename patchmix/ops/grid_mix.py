"""``patchmix::grid_mix``: compose two images per output sample on a ``P x P`` grid, with the mixing weight.

Semantics (``contracts.grid_mix``): ``out[n, :, h, w] = x[index_a[n], :, h, w]`` where the cell
``(floor(h * P / H), floor(w * P / W))`` of ``mask[n]`` is True, else ``x[index_b[n], :, h, w]``; ``lam[n]`` is
the exact fraction of the ``H * W`` pixels taken from ``x[index_a[n]]``.

Three ops, one name family:

* ``grid_mix(x, mask, index_a, index_b) -> (mixed, lam)``, differentiable w.r.t. floating ``x``;
* ``grid_mix_out(x, mask, index_a, index_b, out) -> lam`` writes into a preallocated (possibly pinned) buffer;
* ``grid_mix_backward(grad, mask, index_a, index_b, batch) -> grad_x``, the gradient (a gather, deterministic),
  itself differentiable (its adjoint is ``grid_mix``).

Kernels: ``<op>_cpu`` (``csrc/grid_mix.cpp``), ``<op>_cuda`` (``kernels/grid_mix.py``, Triton, one launch
each), ``<op>_reference`` (below, PyTorch ops). Data checks: CPU tensors raise ``ValueError`` at once; on
CUDA the kernels check and clamp the indices and report through ``patchmix.ops.check_errors``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import below_autograd, define_op
from .contracts import _common
from .contracts.grid_mix import (
    BACKWARD_SCHEMA,
    OUT_SCHEMA,
    SCHEMA,
    check_args,
    check_backward_args,
    check_index_ranges,
    check_out,
    output_memory_format,
)

# --------------------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------------------


def cell_index(size: int, grid_size: int, device=None) -> Tensor:
    """Cell of each pixel along one axis: ``floor(i * P / size)`` for ``i in range(size)``, int64 ``(size,)``."""
    return torch.arange(size, device=device) * grid_size // size


def upsample_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """Nearest-neighbour upsampling of ``mask (N, P, P)`` to ``(N, height, width)`` with the exact integer rule."""
    P = mask.shape[-1]
    rows = cell_index(height, P, mask.device)
    cols = cell_index(width, P, mask.device)
    return mask[:, rows][:, :, cols]


def grid_mix_reference(x: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch ``grid_mix``: ``x (B, C, H, W)``, ``mask (N, P, P)`` -> ``mixed (N, C, H, W)``, ``lam (N,)``."""
    check_args(x, mask, index_a, index_b)
    check_index_ranges(x.shape[0], index_a, index_b)
    if index_a is None:
        index_a = torch.arange(mask.shape[0], device=x.device)
    return grid_mix_compose(x, mask, index_a, index_b)


def grid_mix_compose(x: Tensor, mask: Tensor, index_a: Tensor, index_b: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's arithmetic without its checks (what the benchmarks hand to ``torch.compile``)."""
    H, W = x.shape[2], x.shape[3]
    full = upsample_mask(mask, H, W)  # (N, H, W)
    mixed = torch.where(full[:, None], x[index_a], x[index_b]).contiguous(memory_format=output_memory_format(x))
    lam = (full.sum((1, 2), dtype=torch.float64) / (H * W)).to(torch.float32)
    return mixed, lam


def grid_mix_out_reference(x: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor, out: Tensor) -> Tensor:
    """Pure-PyTorch ``grid_mix_out``: writes ``mixed`` into ``out``, returns ``lam``."""
    check_out(x, mask, out)
    mixed, lam = grid_mix_reference(x, mask, index_a, index_b)
    out.copy_(mixed)
    return lam


def grid_mix_backward_reference(grad: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor,
                                batch: int) -> Tensor:
    """Gradient of ``mixed`` w.r.t. ``x``: ``grad (N, C, H, W)`` scattered (summed) into ``(batch, C, H, W)``."""
    check_backward_args(grad, mask, index_a, index_b, batch)
    check_index_ranges(batch, index_a, index_b)
    N, _, H, W = grad.shape
    if index_a is None:
        index_a = torch.arange(N, device=grad.device)
    full = upsample_mask(mask, H, W)[:, None]
    zero = grad.new_zeros(())
    grad_x = grad.new_zeros((batch,) + tuple(grad.shape[1:])).contiguous(memory_format=output_memory_format(grad))
    grad_x.index_add_(0, index_a, torch.where(full, grad, zero))  # in place: keeps the memory format
    return grad_x.index_add_(0, index_b, torch.where(full, zero, grad))


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

grid_mix_op = define_op("grid_mix", SCHEMA, grid_mix_reference, "grid_mix_cuda")
grid_mix_out_op = define_op("grid_mix_out", OUT_SCHEMA, grid_mix_out_reference, "grid_mix_out_cuda",
                            kernel_module="grid_mix")
grid_mix_backward_op = define_op("grid_mix_backward", BACKWARD_SCHEMA, grid_mix_backward_reference,
                                 "grid_mix_backward_cuda", kernel_module="grid_mix")


@torch.library.register_fake("patchmix::grid_mix")
def _grid_mix_fake(x, mask, index_a, index_b):
    N = mask.shape[0]
    _, C, H, W = x.shape
    mixed = torch.empty((N, C, H, W), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return mixed, torch.empty((N,), dtype=torch.float32, device=x.device)


@torch.library.register_fake("patchmix::grid_mix_out")
def _grid_mix_out_fake(x, mask, index_a, index_b, out):
    return torch.empty((mask.shape[0],), dtype=torch.float32, device=x.device)


@torch.library.register_fake("patchmix::grid_mix_backward")
def _grid_mix_backward_fake(grad, mask, index_a, index_b, batch):
    _, C, H, W = grad.shape
    return torch.empty((batch, C, H, W), dtype=grad.dtype, device=grad.device,
                       memory_format=output_memory_format(grad))


def _setup_context(ctx, inputs, output):
    x, mask, index_a, index_b = inputs
    ctx.batch = x.shape[0]
    ctx.x_format = output_memory_format(x)
    ctx.has_index_a = index_a is not None
    ctx.save_for_backward(mask, index_a if index_a is not None else index_b, index_b)


def _backward(ctx, grad_mixed, grad_lam):
    mask, index_a, index_b = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad = grad_mixed.contiguous(memory_format=ctx.x_format)  # e.g. the stride-0 ones of .sum()
        grad_x = grid_mix_backward_op(grad, mask, index_a if ctx.has_index_a else None, index_b, ctx.batch)
    return grad_x, None, None, None


torch.library.register_autograd("patchmix::grid_mix", _backward, setup_context=_setup_context)


def _backward_setup_context(ctx, inputs, output):
    _, mask, index_a, index_b, _ = inputs
    ctx.has_index_a = index_a is not None
    ctx.save_for_backward(mask, index_a if index_a is not None else index_b, index_b)


def _backward_backward(ctx, grad_grad_x):
    """The adjoint of the gather is the composition: ``grid_mix`` of the incoming gradient."""
    mask, index_a, index_b = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = grid_mix_op(grad_grad_x, mask, index_a if ctx.has_index_a else None, index_b)[0]
    return grad, None, None, None, None


torch.library.register_autograd("patchmix::grid_mix_backward", _backward_backward,
                                setup_context=_backward_setup_context)


def grid_mix(x: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor, *,
             out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Compose pairs of images on a ``P x P`` grid in one pass.

    Args:
        x: images ``(B, C, H, W)``, float32/float16/bfloat16/uint8 (float64 too, for gradcheck),
            contiguous or channels_last.
        mask: bool ``(N, P, P)``; True cells come from ``x[index_a[n]]``, False cells from ``x[index_b[n]]``.
        index_a: int64 ``(N,)`` into ``x``'s first dimension, or ``None`` for ``arange(B)`` (then ``N == B``).
        index_b: int64 ``(N,)`` into ``x``'s first dimension.
        out: optional preallocated ``(N, C, H, W)`` output (``x``'s dtype, device and memory format; it may be
            pinned), written in place and returned; not differentiable.

    Returns:
        ``mixed (N, C, H, W)`` in ``x``'s dtype and memory format, and ``lam (N,)`` float32, the exact
        fraction of pixels taken from ``x[index_a]``. Differentiable w.r.t. floating ``x`` (without ``out``).

    Bad indices: on the CPU a ``ValueError`` naming the argument; on CUDA the kernel clamps them (no
    out-of-bounds read) and ``patchmix.ops.check_errors()`` raises the ``ValueError`` (no host sync here).
    """
    check_args(x, mask, index_a, index_b)
    eager = not torch.compiler.is_compiling()
    if _common.host_checks(x):
        # host check on the CPU (free), in Python: an exception thrown inside patchmix._C was once seen to
        # crash a process on a CUDA build of torch 2.11, so the C++ kernel's own check is a second line
        check_index_ranges(x.shape[0], index_a, index_b)
    if out is None:
        if eager and not (x.requires_grad and torch.is_grad_enabled()):
            return below_autograd(grid_mix_op.default, x, mask, index_a, index_b)
        return grid_mix_op(x, mask, index_a, index_b)
    check_out(x, mask, out)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("grid_mix: out= is not differentiable and x requires grad; call grid_mix without out")
    return out, grid_mix_out_op(x, mask, index_a, index_b, out)
