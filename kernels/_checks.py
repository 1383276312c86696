"""Device-side data checks shared by the Triton kernels: a value a kernel reads memory through is clamped into
range (never read out of bounds) and, if it was out of range, sets its ``(op, argument)`` bit in the device
status word with one atomic OR per program (``patchmix.ops.errors``; ``check_errors()`` raises it)."""

import triton
import triton.language as tl


@triton.jit
def report(bad, status_ptr, CODE: tl.constexpr):
    """Set ``CODE`` in the status word if any element of ``bad`` is set (one masked atomic per program)."""
    tl.atomic_or(status_ptr, CODE, mask=tl.max(bad.to(tl.int32)) > 0)


@triton.jit
def checked_load(ptr, offs, ok, lo, hi, status_ptr, CODE: tl.constexpr):
    """``ptr[offs]`` where ``ok``, clamped to ``lo`` when outside ``[lo, hi)`` (and reported)."""
    v = tl.load(ptr + offs, mask=ok, other=lo)
    bad = ok & ((v < lo) | (v >= hi))
    report(bad, status_ptr, CODE)
    return tl.where(bad, lo, v)
