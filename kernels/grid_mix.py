"""Triton kernels for ``patchmix::grid_mix``, ``grid_mix_out`` and ``grid_mix_backward`` on CUDA devices
(they also run under ``TRITON_INTERPRET=1``).

Floor (forward): read ``N*C*H*W`` elements once and write them once, one launch, no host read: at
256x3x224x224 float32 that is 2 x 154 MB, about 72 us at the H200's measured 4.3 TB/s copy bandwidth; at
256x3x32x32 float32 2 x 3.1 MB, where launch latency and the GPU's fill (132 SMs) dominate.

Layout. A *row* is one channel's ``W`` pixels (contiguous layout, ``C*H`` rows per image) or all ``C``
channels of ``W`` pixels interleaved (channels_last, ``H`` rows per image), moved as words of 1, 2 or 4 bytes
(the widest that every cell boundary is a multiple of). A program owns ``ROWS`` consecutive output rows. The
source image is chosen per (row, cell column), never per element, so every load of a row segment has one
base address and a contiguous column range, and the shape parameters (``H``, ``W``, ``P``, row and image
lengths) are constexprs: integer divisions become multiply-shift and 16-byte alignment is provable
(``tl.multiple_of`` on the row bases, which are multiples of the row length). Four code paths, chosen by
the launcher from constexprs:

* ``GROUPS`` (every cell boundary a multiple of a vector of 2 or more words, cells longer than one chunk):
  ``(ROWS, G, VEC)`` tiles along the whole row; each vector has one source, and a warp's vectors are
  consecutive, so its accesses are contiguous runs of a row. The row's mask cells are read once, as a bit
  set (``P <= 32``). Measured on an H200 (``bench/gpu_bench.py``): 82% of a copy's bandwidth at 256x3x224x224
  float32, 81% channels_last, where the per-cell tiles below reached 28% and 32%: their warps touch 32-byte
  pieces of four rows at once.
* ``UNIFORM`` (``P`` a power of two dividing ``W``, cells a multiple of the vector): one ``(ROWS, P, CHUNK)``
  tile per step covers every cell column of the rows, so each thread issues all its 16-byte loads before
  its stores; a loop over ``cell width / CHUNK`` exact chunks (no masked columns, also for channels_last).
  Chosen over ``GROUPS`` where one chunk spans a cell (a step moves whole rows): 62% of a copy at 256x3x32x32
  float32, ``GROUPS`` 35%.
* ``SEGMENTS`` (any other ``P <= 32``): cell columns unrolled at compile time; each segment is split into an
  unaligned head, a 16-byte-aligned body and a tail, each copied in exact chunks (no masked columns).
* ``ELEMENTS`` (``P > 32``, cells of a few pixels): the source is chosen per word, as a plain masked copy.

uint8 at 224 (cells of 56 bytes: 8-byte vectors) reaches 83% of a copy with 8 rows a program and 2 warps, 24%
with the 32 rows and 4 warps the generic rule gave (the per-cell paths 17%).

``lam`` comes from the same launch (the first ``ceil(N / ROWS)`` programs). Indices are checked as they are
read: a bad one is clamped (never read out of bounds) and sets the op's bit in the device status word
(``patchmix.ops.errors``); nothing is read back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from patchmix.ops import errors
from patchmix.ops.contracts.grid_mix import (
    ERROR_INDEX_A,
    ERROR_INDEX_B,
    cell_starts,
    check_args,
    check_backward_args,
    check_out,
    output_memory_format,
)

from ._checks import checked_load

UNIFORM, SEGMENTS, ELEMENTS, GROUPS = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(3)  # MODE
MAX_SEGMENTS = 32  # SEGMENTS unrolls P cell columns at compile time; beyond, ELEMENTS
MAX_CHUNK = tl.constexpr(64)  # words per row per copy step in the chunked paths
STEP_WORDS = 2048  # words a program moves per copy step (8 KB): 2 to 4 16-byte vectors per thread
_ERROR_A = tl.constexpr(ERROR_INDEX_A)
_ERROR_B = tl.constexpr(ERROR_INDEX_B)


# --------------------------------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------------------------------


@triton.jit
def _rows_of(pid, total_rows, RPI: tl.constexpr, H: tl.constexpr, P: tl.constexpr, ROWS: tl.constexpr):
    """Rows ``pid * ROWS ...`` of the output: (row ids, valid, sample n, row within the image, cell row)."""
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < total_rows
    n = rows // RPI
    rin = rows % RPI
    cell_r = ((rin % H) * P) // H
    return rows, row_ok, n, rin, cell_r


@triton.jit
def _copy_part(x_ptr, out_ptr, src_base, out_base, row_ok, LO: tl.constexpr, HI: tl.constexpr, MAXC: tl.constexpr):
    """Words ``[LO, HI)`` of each row: ``out[out_base + w] = x[src_base + w]``, in exact power-of-two chunks."""
    if HI > LO:
        L: tl.constexpr = HI - LO
        CH: tl.constexpr = min(L & (-L), MAXC)
        for c in tl.range(0, L // CH):
            cols = LO + c * CH + tl.arange(0, CH)
            v = tl.load(x_ptr + src_base[:, None] + cols[None, :], mask=row_ok[:, None])
            tl.store(out_ptr + out_base[:, None] + cols[None, :], v, mask=row_ok[:, None])


@triton.jit
def _copy_segment(x_ptr, out_ptr, src_base, out_base, row_ok, Q: tl.constexpr, W: tl.constexpr, P: tl.constexpr,
                  PX_BYTES: tl.constexpr, WORD_BYTES: tl.constexpr, ALIGN: tl.constexpr, MAXC: tl.constexpr):
    """Cell column ``Q`` of each row: an unaligned head, an ``ALIGN``-word-aligned body, a tail."""
    S: tl.constexpr = ((Q * W + P - 1) // P) * PX_BYTES // WORD_BYTES
    E: tl.constexpr = (((Q + 1) * W + P - 1) // P) * PX_BYTES // WORD_BYTES
    HS: tl.constexpr = (S + ALIGN - 1) // ALIGN * ALIGN
    HE: tl.constexpr = E // ALIGN * ALIGN
    if HS < HE:
        _copy_part(x_ptr, out_ptr, src_base, out_base, row_ok, S, HS, MAXC)
        _copy_part(x_ptr, out_ptr, src_base, out_base, row_ok, HS, HE, MAXC)
        _copy_part(x_ptr, out_ptr, src_base, out_base, row_ok, HE, E, MAXC)
    else:
        _copy_part(x_ptr, out_ptr, src_base, out_base, row_ok, S, E, MAXC)


@triton.jit
def _word_cell(cols, W: tl.constexpr, P: tl.constexpr, PX_BYTES: tl.constexpr, WORD_BYTES: tl.constexpr):
    """Cell column of each word (a word never spans two cells)."""
    return ((cols * WORD_BYTES // PX_BYTES) * P) // W


@triton.jit
def _store_lam(lam_ptr, mask_ptr, pid, N, H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, ROWS: tl.constexpr):
    """``lam`` of samples ``pid * ROWS ...``: the area of the True cells over ``H * W``; cell ``r`` spans rows
    ``[ceil(r*H/P), ceil((r+1)*H/P))``, the integer rule of the copy."""
    samples = pid * ROWS + tl.arange(0, ROWS)
    s_ok = samples < N
    PP_BLOCK: tl.constexpr = triton.next_power_of_2(P * P)
    k = tl.arange(0, PP_BLOCK)
    r = k // P
    c = k % P
    rh = ((r + 1) * H + P - 1) // P - (r * H + P - 1) // P
    cw = ((c + 1) * W + P - 1) // P - (c * W + P - 1) // P
    m = tl.load(mask_ptr + samples[:, None] * (P * P) + k[None, :], mask=s_ok[:, None] & (k < P * P)[None, :], other=0)
    area = tl.sum(tl.where(m != 0, (rh * cw)[None, :], 0), axis=1)
    # div_rn: correctly rounded, as the C++ kernel's double division then float rounding (plain `/` is
    # approximate on the GPU); area and H*W are exact in float32 below 2^24
    tl.store(lam_ptr + samples, tl.math.div_rn(area.to(tl.float32), H * W * 1.0), mask=s_ok)


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _grid_mix_kernel(
    x_ptr, mask_ptr, ia_ptr, ib_ptr, out_ptr, lam_ptr, status_ptr, N, B, total_rows,
    H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, RPI: tl.constexpr, ROW_WORDS: tl.constexpr,
    PX_BYTES: tl.constexpr, WORD_BYTES: tl.constexpr, ALIGN: tl.constexpr, MODE: tl.constexpr,
    CHUNK: tl.constexpr, HAS_A: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr,
    MASK_BITS: tl.constexpr,
):
    pid = tl.program_id(0)
    rows, row_ok, n, rin, cell_r = _rows_of(pid, total_rows, RPI, H, P, ROWS)
    src_b = checked_load(ib_ptr, n, row_ok, 0, B, status_ptr, _ERROR_B)
    if HAS_A:
        src_a = checked_load(ia_ptr, n, row_ok, 0, B, status_ptr, _ERROR_A)
    else:
        src_a = n.to(tl.int64)
    in_row = rin.to(tl.int64) * ROW_WORDS
    # every row starts at a multiple of ROW_WORDS, so at a multiple of ALIGN words (the launcher checks the
    # pointers): the hint lets the compiler prove 16-byte alignment of each segment's body
    a_base = tl.multiple_of(src_a * (RPI * ROW_WORDS) + in_row, ALIGN)
    b_base = tl.multiple_of(src_b * (RPI * ROW_WORDS) + in_row, ALIGN)
    o_base = tl.multiple_of(rows.to(tl.int64) * ROW_WORDS, ALIGN)
    m_row = mask_ptr + n * (P * P) + cell_r * P
    if MODE == UNIFORM:  # (ROWS, P, CHUNK) tiles, all cell columns per step
        CW: tl.constexpr = W // P * PX_BYTES // WORD_BYTES
        q = tl.arange(0, P)
        m = tl.load(m_row[:, None] + q[None, :], mask=row_ok[:, None], other=0)
        base = tl.multiple_of(tl.where(m != 0, a_base[:, None], b_base[:, None]), [ALIGN, ALIGN]) + (q * CW)[None, :]
        obase = o_base[:, None] + (q * CW)[None, :]
        ok = row_ok[:, None, None]
        for c in tl.range(0, CW // CHUNK):
            cols = c * CHUNK + tl.arange(0, CHUNK)
            v = tl.load(x_ptr + base[:, :, None] + cols[None, None, :], mask=ok)
            tl.store(out_ptr + obase[:, :, None] + cols[None, None, :], v, mask=ok)
    elif MODE == SEGMENTS:  # cell columns unrolled, exact chunks
        for q in tl.static_range(P):
            m = tl.load(m_row + q, mask=row_ok, other=0)
            base = tl.where(m != 0, a_base, b_base)
            _copy_segment(x_ptr, out_ptr, base, o_base, row_ok, q, W, P, PX_BYTES, WORD_BYTES, ALIGN, MAX_CHUNK)
    elif MODE == GROUPS:  # (ROWS, G, VEC) tiles along the whole row: one source per vector of VEC words
        GPR: tl.constexpr = ROW_WORDS // VEC  # vectors per row (VEC divides every cell boundary, so the row too)
        g = tl.arange(0, G)
        v = tl.arange(0, VEC)
        if MASK_BITS:  # bit q of a row's word: its cell column q takes image a
            PB: tl.constexpr = triton.next_power_of_2(P)
            q = tl.arange(0, PB)
            mq = tl.load(m_row[:, None] + q[None, :], mask=row_ok[:, None] & (q < P)[None, :], other=0)
            bits = tl.sum(tl.where(mq != 0, 1 << q[None, :], 0), 1)
        for g0 in tl.range(0, GPR, G):
            grp = g0 + g
            ok = row_ok[:, None] & (grp < GPR)[None, :]
            cell = ((grp * (VEC * WORD_BYTES) // PX_BYTES) * P) // W  # constexpr divisors: multiply-shift
            if MASK_BITS:
                m = (bits[:, None] >> cell[None, :]) & 1
            else:
                m = tl.load(m_row[:, None] + cell[None, :], mask=ok, other=0)
            base = tl.multiple_of(tl.where(m != 0, a_base[:, None], b_base[:, None]), [ALIGN, ALIGN])
            cols = (grp * VEC)[None, :, None] + v[None, None, :]
            v_ok = ok[:, :, None]
            val = tl.load(x_ptr + base[:, :, None] + cols, mask=v_ok)
            tl.store(out_ptr + o_base[:, None, None] + cols, val, mask=v_ok)
    else:  # ELEMENTS: many small cells, the source per word
        for c0 in tl.range(0, ROW_WORDS, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            ok = row_ok[:, None] & (cols < ROW_WORDS)[None, :]
            m = tl.load(m_row[:, None] + _word_cell(cols, W, P, PX_BYTES, WORD_BYTES)[None, :], mask=ok, other=0)
            base = tl.where(m != 0, a_base[:, None], b_base[:, None])
            v = tl.load(x_ptr + base + cols[None, :], mask=ok)
            tl.store(out_ptr + o_base[:, None] + cols[None, :], v, mask=ok)
    if pid * ROWS < N:
        _store_lam(lam_ptr, mask_ptr, pid, N, H, W, P, ROWS)


# --------------------------------------------------------------------------------------------------
# backward: grad_x[b] gathers, in a fixed order, the taken segments of every grad[n] that read x[b]
# --------------------------------------------------------------------------------------------------


@triton.jit
def _contributors(ia_ptr, ib_ptr, b, N, HAS_A: tl.constexpr, BLOCK_N: tl.constexpr):
    """How many samples read image ``b`` (through index_a or index_b), and the first two (``N`` if none)."""
    count = tl.zeros((), tl.int32)
    h0 = tl.zeros((), tl.int32) + N
    h1 = tl.zeros((), tl.int32) + N
    for n0 in tl.range(0, N, BLOCK_N):
        idx = n0 + tl.arange(0, BLOCK_N)
        ok = idx < N
        ib = tl.load(ib_ptr + idx, mask=ok, other=-1)
        if HAS_A:
            ia = tl.load(ia_ptr + idx, mask=ok, other=-1)
        else:
            ia = idx.to(tl.int64)
        hit = ok & ((ia == b) | (ib == b))
        count += tl.sum(hit.to(tl.int32), 0)
        first = tl.min(tl.where(hit, idx, N), 0)
        second = tl.min(tl.where(hit & (idx != first), idx, N), 0)
        # the two smallest of {h0 < h1} and {first < second}
        h1 = tl.minimum(tl.maximum(h0, first), tl.minimum(h1, second))
        h0 = tl.minimum(h0, first)
    return count, h0, h1


@triton.jit
def _contribution(g_ptr, mask_ptr, ia_ptr, ib_ptr, n, b, in_row, m_off, row_ok, col_ok, cols, IMG_WORDS: tl.constexpr,
                  P: tl.constexpr, HAS_A: tl.constexpr):
    """``grad[n]`` at ``cols`` of the rows where sample ``n`` took those pixels from image ``b``, else 0.
    ``m_off``: offset of the mask cell within a sample's mask, ``(ROWS, 1)`` or ``(ROWS, CH)``."""
    if HAS_A:
        is_a = (tl.load(ia_ptr + n) == b).to(tl.int32)
    else:
        is_a = (n == b).to(tl.int32)
    is_b = (tl.load(ib_ptr + n) == b).to(tl.int32)
    m = tl.load(mask_ptr + n * (P * P) + m_off, mask=row_ok[:, None], other=0)
    # int32 select, then a tensor compare: the interpreter mis-types `tensor & scalar-bool` (Triton 3.9)
    take = row_ok[:, None] & col_ok[None, :] & (tl.where(m != 0, is_a, is_b) != 0)
    return tl.load(g_ptr + (n * IMG_WORDS + in_row)[:, None] + cols[None, :], mask=take, other=0)


@triton.jit
def _gather(g_ptr, gx_ptr, mask_ptr, ia_ptr, ib_ptr, b, N, count, h0, h1, in_row, gx_base, m_off, row_ok, col_ok, cols,
            IMG_WORDS: tl.constexpr, P: tl.constexpr, HAS_A: tl.constexpr, ACC: tl.constexpr):
    """``grad_x`` at ``cols`` of the rows: the contributions of every sample that read image ``b``, ascending."""
    acc = tl.zeros((row_ok.shape[0], cols.shape[0]), ACC)
    if count <= 2:  # the usual case (a permutation: image b is source a of one sample, source b of another)
        if count >= 1:
            acc += _contribution(g_ptr, mask_ptr, ia_ptr, ib_ptr, h0, b, in_row, m_off, row_ok, col_ok, cols, IMG_WORDS,
                                 P, HAS_A).to(ACC)
        if count >= 2:
            acc += _contribution(g_ptr, mask_ptr, ia_ptr, ib_ptr, h1, b, in_row, m_off, row_ok, col_ok, cols, IMG_WORDS,
                                 P, HAS_A).to(ACC)
    else:  # an image read by many samples: visit them all
        for n in tl.range(0, N):
            acc += _contribution(g_ptr, mask_ptr, ia_ptr, ib_ptr, n, b, in_row, m_off, row_ok, col_ok, cols, IMG_WORDS,
                                 P, HAS_A).to(ACC)
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(gx_ptr + gx_base[:, None] + cols[None, :], acc.to(gx_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gather_segment(g_ptr, gx_ptr, mask_ptr, ia_ptr, ib_ptr, b, N, count, h0, h1, in_row, gx_base, m_off, row_ok,
                    Q: tl.constexpr, W: tl.constexpr, P: tl.constexpr, PX: tl.constexpr, IMG_WORDS: tl.constexpr,
                    HAS_A: tl.constexpr, ACC: tl.constexpr, MAXC: tl.constexpr):
    """Cell column ``Q`` of the rows, in exact power-of-two chunks."""
    S: tl.constexpr = ((Q * W + P - 1) // P) * PX
    E: tl.constexpr = (((Q + 1) * W + P - 1) // P) * PX
    L: tl.constexpr = E - S
    CH: tl.constexpr = min(L & (-L), MAXC)
    for c in tl.range(0, L // CH):
        cols = S + c * CH + tl.arange(0, CH)
        _gather(g_ptr, gx_ptr, mask_ptr, ia_ptr, ib_ptr, b, N, count, h0, h1, in_row, gx_base, m_off + Q, row_ok,
                cols < E, cols, IMG_WORDS, P, HAS_A, ACC)


@triton.jit
def _grid_mix_backward_kernel(
    g_ptr, mask_ptr, ia_ptr, ib_ptr, gx_ptr, N,
    H: tl.constexpr, W: tl.constexpr, P: tl.constexpr, RPI: tl.constexpr, ROW: tl.constexpr, PX: tl.constexpr,
    MODE: tl.constexpr, CHUNK: tl.constexpr, HAS_A: tl.constexpr, ACC: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program ``(b, j)``: rows ``j * ROWS ...`` of ``grad_x[b]`` (``ROW`` elements each, ``PX`` per pixel)."""
    b = tl.program_id(0)
    rin = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    row_ok = rin < RPI
    cell_r = ((rin % H) * P) // H
    in_row = rin.to(tl.int64) * ROW
    gx_base = b.to(tl.int64) * (RPI * ROW) + in_row
    count, h0, h1 = _contributors(ia_ptr, ib_ptr, b, N, HAS_A, BLOCK_N)
    m_off = (cell_r * P)[:, None]
    if MODE != ELEMENTS:  # SEGMENTS (UNIFORM shapes too: the backward has no bandwidth target)
        for q in tl.static_range(P):
            _gather_segment(g_ptr, gx_ptr, mask_ptr, ia_ptr, ib_ptr, b, N, count, h0, h1, in_row, gx_base, m_off,
                            row_ok, q, W, P, PX, RPI * ROW, HAS_A, ACC, MAX_CHUNK)
    else:  # ELEMENTS
        for c0 in tl.range(0, ROW, CHUNK):
            cols = c0 + tl.arange(0, CHUNK)
            q = tl.minimum(((cols // PX) * P) // W, P - 1)
            _gather(g_ptr, gx_ptr, mask_ptr, ia_ptr, ib_ptr, b, N, count, h0, h1, in_row, gx_base, m_off + q[None, :],
                    row_ok, cols < ROW, cols, RPI * ROW, P, HAS_A, ACC)


# --------------------------------------------------------------------------------------------------
# launch plans and host launchers
# --------------------------------------------------------------------------------------------------

_SMS: dict = {}


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device``; 132 (an H100/H200) off CUDA: the interpreter and the codegen audit plan
    launches as for the GPU this library is tuned on."""
    if device.type != "cuda":
        return 132
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device]


def _pow2_factor(v: int, cap: int) -> int:
    """The largest power of two dividing ``v``, at most ``cap``."""
    return min(v & -v, cap) if v else cap


def _pow2_floor(v: int) -> int:
    return 1 << (max(int(v), 1).bit_length() - 1)


@dataclass(frozen=True)
class Plan:
    """How one launch moves the rows: units, code path, tile, grid."""

    rows_per_image: int  # RPI
    row: int  # units per row
    px: int  # bytes (forward) or elements (backward) per pixel
    unit: int  # bytes per unit: the word size (forward) or the element size (backward)
    align: int  # units every row start and 16-byte body is a multiple of
    mode: int
    chunk: int  # units per row per step (UNIFORM: per cell column; ELEMENTS: per row)
    rows: int
    num_warps: int
    programs: int
    groups: int = 1  # GROUPS: vectors per row per step (G)
    vec: int = 1  # GROUPS: units per vector (VEC), one source each
    mask_bits: bool = False  # GROUPS: a row's mask cells as one bit set (P <= 32)


def _rows_and_warps(total_rows: int, step_units: int, vec: int, device, per_image: int | None = None):
    """``ROWS`` (a power of two) so that a step moves about ``STEP_WORDS`` units and the grid keeps at least
    4 programs per multiprocessor (the fill of the GPU at 256x3x32x32); warps so that each thread holds 2 or
    more vectors."""
    rows = _pow2_floor(max(1, STEP_WORDS // max(step_units, 1)))
    rows = min(rows, _pow2_floor(max(1, total_rows // (4 * _sm_count(device)))))
    if per_image is not None:
        rows = min(rows, triton.next_power_of_2(per_image))
    warps = max(1, min(4, _pow2_floor(rows * step_units // (32 * vec * 2))))
    return rows, warps


def _segment_chunk(W: int, P: int, px: int, unit: int, align: int) -> int:
    """The smallest body chunk of the SEGMENTS path (what sizes its tile)."""
    chunks = []
    for s, e in zip(cell_starts(W, P)[:-1], cell_starts(W, P)[1:], strict=True):
        lo, hi = s * px // unit, e * px // unit
        hs, he = -(-lo // align) * align, hi // align * align
        length = he - hs if hs < he else hi - lo
        chunks.append(_pow2_factor(length, int(MAX_CHUNK)))
    return min(chunks)


def _groups_per_step(per_row: int) -> int:
    """``G``: the largest power of two <= 64 whose steps cover a row's ``per_row`` vectors with at most 1/8 masked."""
    g = 64
    while g > 1 and triton.cdiv(per_row, g) * g * 7 > per_row * 8:
        g //= 2
    return g


def forward_plan(x_shape, P: int, element_size: int, channels_last: bool, pointers: list[int], N: int,
                 device, groups: bool = True, mask_bits: bool = True) -> Plan:
    """The forward's plan for images of ``x_shape`` (contiguous or channels_last), a ``P x P`` grid, ``N`` outputs.
    ``groups=False``: the per-cell-column paths only (UNIFORM, SEGMENTS); ``mask_bits=False``: GROUPS reads one mask
    byte per vector instead of each row's cells once as a bit set (both kept for the device comparison in
    ``bench/gpu_bench.py``; on an H200 the bit set gave 82% / 81% of a copy at 224 float32 / channels_last,
    against 81% / 78%)."""
    _, C, H, W = x_shape
    rpi = H if channels_last else C * H
    px = C * element_size if channels_last else element_size
    bounds = [s * px for s in cell_starts(W, P)]
    unit = 4  # the widest word that no cell boundary splits (uint8 moves 4 bytes per word, not 1)
    while unit > 1 and any(b % unit for b in bounds):
        unit //= 2
    row = bounds[-1] // unit
    vec = 16 // unit
    ptr_align = min([_pow2_factor(p, 16) for p in pointers] or [16])
    align = max(1, min(vec, _pow2_factor(row, vec), ptr_align // unit))
    cw = (W // P) * px // unit
    vec_fit = align  # the widest vector (in units) that no cell boundary splits
    while vec_fit > 1 and any((b // unit) % vec_fit for b in bounds):
        vec_fit //= 2
    uniform = P & (P - 1) == 0 and W % P == 0 and cw % align == 0
    # UNIFORM moves whole rows per step when its chunk spans a cell (256x3x32x32 float32: 61% of a copy on an
    # H200, GROUPS 35%); with longer cells a warp's accesses break into 32-byte pieces of 4 rows (224 float32:
    # 28%), where GROUPS, whose warps move contiguous runs of a row, reaches 81%
    if groups and vec_fit >= 2 and not (uniform and _pow2_factor(cw, int(MAX_CHUNK)) == cw):
        g = _groups_per_step(row // vec_fit)
        rows, _ = _rows_and_warps(N * rpi, g * vec_fit, vec_fit, device)
        # at most 8 rows a program and 4 vectors a thread: on an H200 (bench/gpu_bench.py --sweep) uint8 at 224
        # moved at 83% of a copy with 8 rows and 2 warps, 24% with 32 rows and 4 warps; float32 (8 rows, 4 warps)
        # at 82%
        rows = min(rows, 8)
        warps = max(1, min(4, _pow2_floor(rows * g // 128)))
        programs = max(triton.cdiv(N * rpi, rows), triton.cdiv(N, rows))
        return Plan(rpi, row, px, unit, align, GROUPS.value, 1, rows, warps, programs, g, vec_fit,
                    mask_bits and P <= 32)
    if uniform:
        mode, chunk = UNIFORM.value, _pow2_factor(cw, int(MAX_CHUNK))
        step = P * chunk
    elif P <= MAX_SEGMENTS:
        mode, chunk = SEGMENTS.value, 1
        step = _segment_chunk(W, P, px, unit, align)
    else:
        mode, chunk = ELEMENTS.value, min(triton.next_power_of_2(row), 256)
        step = chunk
    total_rows = N * rpi
    rows, warps = _rows_and_warps(total_rows, step, vec, device)
    programs = max(triton.cdiv(total_rows, rows), triton.cdiv(N, rows))
    return Plan(rpi, row, px, unit, align, mode, chunk, rows, warps, programs)


def backward_plan(shape, P: int, element_size: int, channels_last: bool, batch: int, device) -> Plan:
    """The backward's plan (units are elements: the kernel adds)."""
    _, C, H, W = shape
    rpi = H if channels_last else C * H
    px = C if channels_last else 1
    row = W * px
    vec = max(1, 16 // element_size)
    if P <= MAX_SEGMENTS:
        mode, chunk = SEGMENTS.value, 1
        step = _segment_chunk(W, P, px, 1, 1)
    else:
        mode, chunk = ELEMENTS.value, min(triton.next_power_of_2(row), 256)
        step = chunk
    rows, warps = _rows_and_warps(batch * rpi, step, vec, device, per_image=rpi)
    return Plan(rpi, row, px, element_size, 1, mode, chunk, rows, warps, batch * triton.cdiv(rpi, rows))


_WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _words(t: torch.Tensor, unit: int) -> torch.Tensor:
    """``t``'s memory as a flat tensor of ``unit``-byte words (no copy)."""
    return t.as_strided((t.numel(),), (1,)).view(torch.uint8).view(_WORD[unit])


def _compose_into(x, mask, index_a, index_b, out):
    """One launch: ``out`` (x's memory format) and the returned ``lam``; shared by ``grid_mix_cuda`` and
    ``grid_mix_out_cuda``."""
    B, C, H, W = x.shape
    N, P = mask.shape[0], mask.shape[1]
    lam = torch.empty((N,), dtype=torch.float32, device=x.device)
    if N == 0:
        return lam
    errors.poll(x.device)
    copy_rows = N > 0 and B > 0 and C > 0  # else only lam (B == 0: every index is out of range; say so)
    if B == 0:
        errors.status(x.device).bitwise_or_(ERROR_INDEX_B)
    fmt = output_memory_format(x)
    xc = x.contiguous(memory_format=fmt)
    plan = forward_plan(x.shape, P, x.element_size(), fmt == torch.channels_last,
                        [xc.data_ptr(), out.data_ptr()], N, x.device)
    _grid_mix_kernel[(plan.programs,)](
        _words(xc, plan.unit), mask.contiguous().view(torch.uint8),
        (index_a if index_a is not None else index_b).contiguous(), index_b.contiguous(),
        _words(out, plan.unit), lam, errors.status(x.device),
        N, max(B, 1), N * plan.rows_per_image if copy_rows else 0,
        H=H, W=W, P=P, RPI=max(plan.rows_per_image, 1), ROW_WORDS=max(plan.row, 1), PX_BYTES=plan.px,
        WORD_BYTES=plan.unit, ALIGN=plan.align, MODE=plan.mode, CHUNK=plan.chunk, HAS_A=index_a is not None,
        ROWS=plan.rows, G=plan.groups, VEC=plan.vec, MASK_BITS=plan.mask_bits, num_warps=plan.num_warps,
    )
    errors.launched(x.device)
    return lam


def grid_mix_cuda(x: torch.Tensor, mask: torch.Tensor, index_a: torch.Tensor | None, index_b: torch.Tensor):
    """Host launcher of ``patchmix::grid_mix``: argument checks (no data read), then one launch."""
    check_args(x, mask, index_a, index_b)
    _, C, H, W = x.shape
    out = torch.empty((mask.shape[0], C, H, W), dtype=x.dtype, device=x.device,
                      memory_format=output_memory_format(x))
    return out, _compose_into(x, mask, index_a, index_b, out)


def grid_mix_out_cuda(x, mask, index_a, index_b, out):
    """Host launcher of ``patchmix::grid_mix_out``: writes ``out`` in place, returns ``lam``; one launch."""
    check_args(x, mask, index_a, index_b)
    check_out(x, mask, out)
    return _compose_into(x, mask, index_a, index_b, out)


def grid_mix_backward_cuda(grad, mask, index_a, index_b, batch: int):
    """Host launcher of ``patchmix::grid_mix_backward``: ``grad_x (batch, C, H, W)``, one launch."""
    check_backward_args(grad, mask, index_a, index_b, batch)
    N, P = mask.shape[0], mask.shape[1]
    _, C, H, W = grad.shape
    fmt = output_memory_format(grad)
    gc = grad.contiguous(memory_format=fmt)
    grad_x = torch.empty((batch, C, H, W), dtype=grad.dtype, device=grad.device, memory_format=fmt)
    if grad_x.numel() == 0:
        return grad_x
    if N == 0:
        return grad_x.zero_()
    plan = backward_plan(grad.shape, P, grad.element_size(), fmt == torch.channels_last, batch, grad.device)
    acc = tl.float64 if grad.dtype == torch.float64 else tl.float32
    flat = (gc.numel(),), (1,)
    _grid_mix_backward_kernel[(batch, triton.cdiv(plan.rows_per_image, plan.rows))](
        gc.as_strided(*flat), mask.contiguous().view(torch.uint8),
        (index_a if index_a is not None else index_b).contiguous(), index_b.contiguous(),
        grad_x.as_strided((grad_x.numel(),), (1,)), N,
        H=H, W=W, P=P, RPI=plan.rows_per_image, ROW=plan.row, PX=plan.px, MODE=plan.mode, CHUNK=plan.chunk,
        HAS_A=index_a is not None, ACC=acc, ROWS=plan.rows, BLOCK_N=min(triton.next_power_of_2(N), 1024),
        num_warps=plan.num_warps,
    )
    return grad_x
