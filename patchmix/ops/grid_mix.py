"""``patchmix::grid_mix``: compose two images per output sample on a ``P x P`` grid, with the mixing weight.

Semantics (``shared/DESIGN.md`` section 1): pixel row ``h`` belongs to cell row ``floor(h * P / H)`` and
column ``w`` to ``floor(w * P / W)``; ``out[n, :, h, w] = x[index_a[n], :, h, w]`` where that cell of
``mask[n]`` is True, else ``x[index_b[n], :, h, w]``; ``lam[n]`` is the exact fraction of the ``H * W``
pixels taken from ``x[index_a[n]]`` (cells differ by one pixel when ``P`` does not divide ``H`` or ``W``).

Kernels: ``grid_mix_cpu`` (``csrc/grid_mix.cpp``), ``grid_mix_cuda`` (``kernels/grid_mix.py``, Triton),
``grid_mix_reference`` (below). The backward pass is a scatter-add written with PyTorch ops, so it runs on
every device and is itself differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import Range, check_ranges
from ._registry import define_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.float64)

SCHEMA = "(Tensor x, Tensor mask, Tensor? index_a, Tensor index_b) -> (Tensor, Tensor)"


# --------------------------------------------------------------------------------------------------
# checks shared by the public wrapper, the reference and the Triton launcher
# --------------------------------------------------------------------------------------------------


def output_memory_format(x: Tensor) -> torch.memory_format:
    """channels_last when ``x`` is channels_last and not also plain contiguous, else contiguous.

    The C++ kernel applies the same rule, so every backend and the fake kernel agree on strides.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def check_grid_mix_args(x: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor) -> None:
    """Shape, dtype and device checks (no data is read). Raises ``TypeError``/``ValueError``."""
    for name, t in (("x", x), ("mask", mask), ("index_b", index_b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"grid_mix: {name} must be a torch.Tensor, got {type(t).__name__}")
    if index_a is not None and not isinstance(index_a, Tensor):
        raise TypeError(f"grid_mix: index_a must be a torch.Tensor or None, got {type(index_a).__name__}")
    if x.dim() != 4:
        raise ValueError(f"grid_mix: x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"grid_mix: x has dtype {x.dtype}; expected one of float32, float16, bfloat16, uint8 (or float64)"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"grid_mix: mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.dim() != 3 or mask.shape[1] != mask.shape[2]:
        raise ValueError(f"grid_mix: mask must have shape (N, P, P), got {tuple(mask.shape)}")
    B, _, H, W = x.shape
    N, P = mask.shape[0], mask.shape[1]
    if P < 1 or P > min(H, W):
        raise ValueError(
            f"grid_mix: grid size P = {P} (from mask shape {tuple(mask.shape)}) must satisfy "
            f"1 <= P <= min(H, W) = {min(H, W)} for x of shape {tuple(x.shape)}"
        )
    for name, idx in (("index_a", index_a), ("index_b", index_b)):
        if idx is None:
            continue
        if idx.dtype != torch.int64:
            raise ValueError(f"grid_mix: {name} must be int64, got dtype {idx.dtype}")
        if idx.dim() != 1 or idx.shape[0] != N:
            raise ValueError(
                f"grid_mix: {name} must have shape (N,) = ({N},) to match mask, got {tuple(idx.shape)}"
            )
    if index_a is None and N != B:
        raise ValueError(
            f"grid_mix: index_a is None (meaning arange(B)), so mask must hold B = {B} masks, got N = {N}"
        )
    for name, t in (("mask", mask), ("index_a", index_a), ("index_b", index_b)):
        if t is not None and t.device != x.device:
            raise ValueError(f"grid_mix: {name} is on {t.device} but x is on {x.device}; move them to one device")


def check_index_ranges(batch: int, index_a: Tensor | None, index_b: Tensor) -> None:
    """Data check: every entry of ``index_a`` (if given) and ``index_b`` lies in ``[0, batch)``.

    One host read for both (see ``_checks``; on CUDA each sync also serialises the launch overhead, which
    dominates at small shapes); device-side asserts while a CUDA graph is captured.
    """
    what = f"for x with batch size B = {batch}"
    check_ranges("grid_mix", [
        Range(name, t, 0, batch - 1, what) for name, t in (("index_b", index_b), ("index_a", index_a)) if t is not None
    ])


# --------------------------------------------------------------------------------------------------
# reference
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
    check_grid_mix_args(x, mask, index_a, index_b)
    B, _, H, W = x.shape
    N = mask.shape[0]
    check_index_ranges(B, index_a, index_b)
    if index_a is None:
        index_a = torch.arange(N, device=x.device)
    return grid_mix_compose(x, mask, index_a, index_b)


def grid_mix_compose(x: Tensor, mask: Tensor, index_a: Tensor, index_b: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's arithmetic without its checks (what the benchmarks hand to ``torch.compile``)."""
    H, W = x.shape[2], x.shape[3]
    full = upsample_mask(mask, H, W)  # (N, H, W)
    mixed = torch.where(full[:, None], x[index_a], x[index_b]).contiguous(memory_format=output_memory_format(x))
    lam = (full.sum((1, 2), dtype=torch.float64) / (H * W)).to(torch.float32)
    return mixed, lam


def grid_mix_backward_reference(grad: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor, batch: int) -> Tensor:
    """Gradient of ``mixed`` w.r.t. ``x``: ``grad (N, C, H, W)`` scattered (summed) into ``(batch, C, H, W)``."""
    N, _, H, W = grad.shape
    if index_a is None:
        index_a = torch.arange(N, device=grad.device)
    full = upsample_mask(mask, H, W)[:, None]
    zero = grad.new_zeros(())
    grad_x = grad.new_zeros((batch,) + tuple(grad.shape[1:])).contiguous(memory_format=output_memory_format(grad))
    grad_x = grad_x.index_add(0, index_a, torch.where(full, grad, zero))
    return grad_x.index_add(0, index_b, torch.where(full, zero, grad))


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

grid_mix_op = define_op("grid_mix", SCHEMA, grid_mix_reference, "grid_mix_cuda")


@torch.library.register_fake("patchmix::grid_mix")
def _grid_mix_fake(x, mask, index_a, index_b):
    N = mask.shape[0]
    _, C, H, W = x.shape
    mixed = torch.empty((N, C, H, W), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return mixed, torch.empty((N,), dtype=torch.float32, device=x.device)


def _grid_mix_setup_context(ctx, inputs, output):
    x, mask, index_a, index_b = inputs
    ctx.batch = x.shape[0]
    ctx.has_index_a = index_a is not None
    ctx.save_for_backward(mask, index_a if index_a is not None else index_b, index_b)


def _grid_mix_backward(ctx, grad_mixed, grad_lam):
    mask, index_a, index_b = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = grid_mix_backward_reference(
            grad_mixed, mask, index_a if ctx.has_index_a else None, index_b, ctx.batch
        )
    return grad_x, None, None, None


torch.library.register_autograd(
    "patchmix::grid_mix", _grid_mix_backward, setup_context=_grid_mix_setup_context
)


def grid_mix(x: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor) -> tuple[Tensor, Tensor]:
    """Compose pairs of images on a ``P x P`` grid in one pass.

    Args:
        x: images ``(B, C, H, W)``, float32/float16/bfloat16/uint8 (float64 too, for gradcheck),
            contiguous or channels_last.
        mask: bool ``(N, P, P)``; True cells come from ``x[index_a[n]]``, False cells from ``x[index_b[n]]``.
        index_a: int64 ``(N,)`` into ``x``'s first dimension, or ``None`` for ``arange(B)`` (then ``N == B``).
        index_b: int64 ``(N,)`` into ``x``'s first dimension.

    Returns:
        ``mixed (N, C, H, W)`` in ``x``'s dtype and memory format, and ``lam (N,)`` float32, the exact
        fraction of pixels taken from ``x[index_a]``. Differentiable w.r.t. floating ``x``.
    """
    check_grid_mix_args(x, mask, index_a, index_b)
    if not torch.compiler.is_compiling() and x.device.type == "cpu":
        # CPU tensors: check the data here as well, so an error never has to cross from C++ (on torch 2.11,
        # CUDA build, an exception thrown inside patchmix._C was seen to crash the process). Free on the CPU;
        # CUDA tensors are checked by the Triton launcher, which raises in Python.
        check_index_ranges(x.shape[0], index_a, index_b)
    return grid_mix_op(x, mask, index_a, index_b)
