"""Host-side data checks shared by the contracts (CPU tensors, and the pure-PyTorch references).

``check_ranges`` raises ``ValueError("<op>: <name> holds <value>, <why>")`` for the first tensor with a value
outside its ``[lo, hi]`` (NaN counts as outside). On the CPU it asks the extension's ``check_range`` (one
C++ pass, no temporaries, about a microsecond) or, without the extension, ``torch.aminmax``. On CUDA only
the references call it (the Triton kernels check in the kernel, see ``patchmix.ops.errors``): one host read
per tensor, or ``torch._assert_async`` while a CUDA graph is being captured.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _extension


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


def _first_outside(t: Tensor, lo: float, hi: float) -> float | None:
    """A value of ``t`` outside ``[lo, hi]`` (NaN included), or None."""
    if t.device.type == "cpu" and _extension.C is not None:
        return _extension.C.check_range(t, float(lo), float(hi))
    lo_t, hi_t = torch.aminmax(t)  # propagates NaN
    lo_v, hi_v = torch.stack([lo_t, hi_t]).double().tolist()
    if math.isnan(lo_v) or math.isnan(hi_v):
        return math.nan
    if lo_v < lo:
        return lo_v
    return hi_v if hi_v > hi else None


def host_checks(t: Tensor) -> bool:
    """Whether an op wrapper checks data on the host before the kernel runs: for eager calls on CPU tensors (a
    host read is free there). CUDA kernels check in the kernel; traced calls cannot read data."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def capturing(t: Tensor) -> bool:
    """True while ``t``'s device stream is being captured into a CUDA graph (no host reads allowed)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_ranges(op: str, ranges: list[Range]) -> None:
    """Raise ``ValueError`` naming the first tensor with a value outside its range (see the module docstring)."""
    for r in ranges:
        if not r.tensor.numel():
            continue
        if capturing(r.tensor):
            ok = ((r.tensor >= r.lo) & (r.tensor <= r.hi)).all()
            torch._assert_async(ok, f"{op}: {r.name} holds a value {r.why()} (checked on the device: CUDA graph)")
            continue
        bad = _first_outside(r.tensor, r.lo, r.hi)
        if bad is not None:
            if not r.tensor.is_floating_point() and not math.isnan(bad):
                bad = int(bad)
            raise ValueError(f"{op}: {r.name} holds {bad}, {r.why()}")
