"""Contract of ``patchmix::grid_mix`` (and its ``_out`` and ``_backward`` companions).

Semantics: pixel row ``h`` belongs to cell row ``floor(h * P / H)`` and column ``w`` to ``floor(w * P / W)``
(nearest-neighbour upsampling of the ``P x P`` mask; cells differ by at most one pixel when ``P`` does not
divide ``H`` or ``W``); ``out[n, :, h, w] = x[index_a[n], :, h, w]`` where that cell of ``mask[n]`` is True,
else ``x[index_b[n], :, h, w]``; ``lam[n]`` is the exact fraction of the ``H * W`` pixels taken from
``x[index_a[n]]``. ``index_a = None`` means ``arange(B)`` (then ``N == B``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import errors
from ._common import Range, check_ranges

OP = "grid_mix"
SCHEMA = "(Tensor x, Tensor mask, Tensor? index_a, Tensor index_b) -> (Tensor, Tensor)"
OUT_SCHEMA = "(Tensor x, Tensor mask, Tensor? index_a, Tensor index_b, Tensor(a!) out) -> Tensor"
BACKWARD_SCHEMA = "(Tensor grad, Tensor mask, Tensor? index_a, Tensor index_b, int batch) -> Tensor"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.float64)
ERROR_INDEX_A = errors.code(OP, "index_a")
ERROR_INDEX_B = errors.code(OP, "index_b")


def output_memory_format(x: Tensor) -> torch.memory_format:
    """channels_last when ``x`` is channels_last and not also plain contiguous, else contiguous.

    Every backend and the fake kernels apply this rule, so they agree on the output's strides.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def cell_starts(size: int, grid_size: int) -> list[int]:
    """First pixel of each cell along one axis, plus ``size``: ``ceil(r * size / P)`` for ``r = 0 .. P``."""
    return [(r * size + grid_size - 1) // grid_size for r in range(grid_size + 1)]


def check_args(x: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor, *, batch: int | None = None) -> None:
    """Shape, dtype and device checks (no data is read). Raises ``TypeError``/``ValueError``. ``batch``: the
    number of source images when ``x`` is not the images themselves (the backward's ``grad``)."""
    for name, arg in (("x", x), ("mask", mask), ("index_b", index_b)):
        if not isinstance(arg, Tensor):
            raise TypeError(f"grid_mix: {name} must be a torch.Tensor, got {type(arg).__name__}")
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
    B = B if batch is None else batch
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


def check_out(x: Tensor, mask: Tensor, out: Tensor) -> None:
    """``out`` must be a ``(N, C, H, W)`` tensor of ``x``'s dtype and device, dense in ``x``'s memory format
    (``output_memory_format``), and must not overlap ``x`` (it may be pinned)."""
    if not isinstance(out, Tensor):
        raise TypeError(f"grid_mix: out must be a torch.Tensor, got {type(out).__name__}")
    want = (mask.shape[0],) + tuple(x.shape[1:])
    if tuple(out.shape) != want:
        raise ValueError(f"grid_mix: out must have shape (N, C, H, W) = {want}, got {tuple(out.shape)}")
    if out.dtype != x.dtype:
        raise ValueError(f"grid_mix: out has dtype {out.dtype} but x has dtype {x.dtype}")
    if out.device != x.device:
        raise ValueError(f"grid_mix: out is on {out.device} but x is on {x.device}")
    fmt = output_memory_format(x)
    if not out.is_contiguous(memory_format=fmt):
        name = "channels_last" if fmt == torch.channels_last else "contiguous"
        raise ValueError(f"grid_mix: out must be {name} like x (the kernels copy rows in x's layout)")
    if out.numel() and x.numel() and x.device.type != "meta" and not torch.compiler.is_compiling():
        # out is dense: its bytes are [ptr, ptr + numel * size); so are x's when x is dense, else (a rare strided
        # view) its whole storage counts
        if x.is_contiguous(memory_format=fmt):
            x_lo, x_hi = x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()
        else:
            x_lo = x.untyped_storage().data_ptr()
            x_hi = x_lo + x.untyped_storage().nbytes()
        out_lo = out.data_ptr()
        if out_lo < x_hi and x_lo < out_lo + out.numel() * out.element_size():
            raise ValueError("grid_mix: out overlaps x; give a separate buffer")


def check_index_ranges(batch: int, index_a: Tensor | None, index_b: Tensor) -> None:
    """Host check (CPU tensors and the reference): every entry of ``index_a``/``index_b`` lies in ``[0, batch)``."""
    what = f"for x with batch size B = {batch}"
    check_ranges(OP, [
        Range(name, t, 0, batch - 1, what) for name, t in (("index_b", index_b), ("index_a", index_a)) if t is not None
    ])



def check_backward_args(grad: Tensor, mask: Tensor, index_a: Tensor | None, index_b: Tensor, batch: int) -> None:
    """Checks of ``grid_mix_backward``: ``grad (N, C, H, W)`` floating, ``batch`` images (no data is read)."""
    if not isinstance(grad, Tensor) or grad.dim() != 4 or not grad.is_floating_point():
        raise ValueError(f"grid_mix_backward: grad must be a floating (N, C, H, W) tensor, got {getattr(grad, 'shape', grad)}")
    if not isinstance(batch, int) or batch < 0:
        raise ValueError(f"grid_mix_backward: batch must be an int >= 0, got {batch!r}")
    check_args(grad, mask, index_a, index_b, batch=batch)
    if grad.shape[0] != mask.shape[0]:
        raise ValueError(f"grid_mix_backward: grad holds {grad.shape[0]} samples but mask holds N = {mask.shape[0]}")
