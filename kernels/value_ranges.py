"""Triton kernel behind ``patchmix.ops._checks.value_ranges`` on CUDA: ``(min, max, NaN count)`` of up to
three tensors in one launch, so that an op's data checks cost one launch and one host read."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _range_of(ptr, n, BLOCK: tl.constexpr):
    lo = tl.full([BLOCK], float("inf"), tl.float64)
    hi = tl.full([BLOCK], float("-inf"), tl.float64)
    nans = tl.zeros([BLOCK], tl.int32)
    for start in tl.range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n
        x = tl.load(ptr + offs, mask=ok, other=0).to(tl.float64)
        nans += (ok & (x != x)).to(tl.int32)
        lo = tl.where(ok & (x < lo), x, lo)  # a NaN compares false: left out here, counted above
        hi = tl.where(ok & (x > hi), x, hi)
    return tl.min(lo, 0), tl.max(hi, 0), tl.sum(nans, 0)


@triton.jit
def _value_ranges_kernel(a_ptr, b_ptr, c_ptr, na, nb, nc, out_ptr, BLOCK: tl.constexpr):
    # program k reduces tensor k (one program each: the tensors are batch-sized, a loop of a few iterations)
    pid = tl.program_id(0)
    if pid == 0:
        lo, hi, nans = _range_of(a_ptr, na, BLOCK)
    elif pid == 1:
        lo, hi, nans = _range_of(b_ptr, nb, BLOCK)
    else:
        lo, hi, nans = _range_of(c_ptr, nc, BLOCK)
    tl.store(out_ptr + 3 * pid, lo)
    tl.store(out_ptr + 3 * pid + 1, hi)
    tl.store(out_ptr + 3 * pid + 2, nans.to(tl.float64))


def value_ranges_cuda(tensors: list[torch.Tensor]) -> list[tuple[float, float, bool]]:
    """``(min, max, has_nan)`` per tensor (one to three, any shape, one device): one launch, one host read.
    Same results as the PyTorch path of ``value_ranges``: ``(nan, nan, True)`` for a tensor holding NaN."""
    flat = [t.reshape(-1) for t in tensors]
    out = torch.empty((3 * len(flat),), dtype=torch.float64, device=flat[0].device)
    ptrs = flat + [flat[0]] * (3 - len(flat))
    sizes = [t.numel() for t in flat] + [0] * (3 - len(flat))
    _value_ranges_kernel[(len(flat),)](*ptrs, *sizes, out, BLOCK=1024)
    vals = out.tolist()
    nan = float("nan")
    return [(nan, nan, True) if vals[3 * k + 2] else (vals[3 * k], vals[3 * k + 1], False) for k in range(len(flat))]
