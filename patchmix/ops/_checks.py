"""Data checks shared by the ops: every index, label and weight tensor lies in its range.

The kernels read memory through these values, so they are checked before any kernel runs: an index out of
range is a ``ValueError`` naming the argument and the value, never an out-of-bounds read.

* ``value_ranges`` reads ``(min, max, has NaN)`` of several tensors with one host sync. On CUDA that is one
  launch of a small Triton kernel (``patchmix._kernels.value_ranges``) and one 72-byte copy, instead of a
  reduction, a stack and conversions per tensor (each a launch; on CUDA the launches, not the bytes, are the
  cost at training batch sizes).
* While a CUDA graph is being captured (``torch.compile(mode="reduce-overhead")``, ``torch.cuda.graph``) the
  host may not read the device, so ``check_ranges`` queues one device-side assert per tensor instead
  (``torch._assert_async``, ahead of the kernel on the same stream): bad data in a replayed graph stops the
  process with ``device-side assert triggered``, never reads out of bounds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _registry


class Range(NamedTuple):
    """``name`` must hold values in ``[lo, hi]`` (inclusive). ``what`` says what bounds it (``"for K = 10
    classes"``): indices are reported as "out of range <what> (expected lo <= name < hi + 1)", floating
    tensors as "outside [lo, hi]"."""

    name: str
    tensor: Tensor
    lo: float
    hi: float
    what: str = ""

    def why(self) -> str:
        if self.tensor.is_floating_point():
            return f"outside [{self.lo:g}, {self.hi:g}]"
        return f"out of range {self.what} (expected {self.lo} <= {self.name} < {self.hi + 1})"


def capturing(t: Tensor) -> bool:
    """True while ``t``'s device stream is being captured into a CUDA graph (no host reads allowed)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def value_ranges(tensors: list[Tensor]) -> list[tuple[float, float, bool]]:
    """``(min, max, has_nan)`` of each tensor (at most three on CUDA, one device), read with one host sync.

    Empty tensors give ``(inf, -inf, False)``; a tensor holding NaN gives ``(nan, nan, True)``.
    """
    if tensors[0].is_cuda and _registry.HAS_TRITON and len(tensors) <= 3:
        from patchmix._kernels.value_ranges import value_ranges_cuda

        return value_ranges_cuda(tensors)
    stats = []
    for t in tensors:  # aminmax propagates NaN: one reduction per tensor
        if t.numel() == 0:
            stats.append(torch.tensor([math.inf, -math.inf], dtype=torch.float64, device=t.device))
        else:
            stats.append(torch.stack(torch.aminmax(t)).double())
    return [(lo, hi, math.isnan(lo) or math.isnan(hi)) for lo, hi in torch.stack(stats).tolist()]


def check_ranges(op: str, ranges: list[Range]) -> None:
    """Raise ``ValueError("<op>: <name> holds <value>, <Range.why()>")`` for the first tensor with a value outside its
    ``[lo, hi]`` (NaN counts as outside). One host sync for all; device-side asserts during graph capture."""
    ranges = [r for r in ranges if r.tensor.numel()]
    if not ranges:
        return
    if capturing(ranges[0].tensor):
        for r in ranges:
            ok = ((r.tensor >= r.lo) & (r.tensor <= r.hi)).all()
            torch._assert_async(ok, f"{op}: {r.name} holds a value {r.why()} (checked on the device: CUDA graph)")
        return
    for r, (lo, hi, has_nan) in zip(ranges, value_ranges([r.tensor for r in ranges]), strict=True):
        if has_nan or lo < r.lo or hi > r.hi:
            bad = math.nan if has_nan else (lo if lo < r.lo else hi)
            if not r.tensor.is_floating_point():
                bad = int(bad)
            raise ValueError(f"{op}: {r.name} holds {bad}, {r.why()}")
