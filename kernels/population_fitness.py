"""Triton kernels for ``patchmix::population_fitness`` on CUDA devices (they also run under ``TRITON_INTERPRET=1``).

Floor: the patch term reads ``I*N*P*P`` table entries (one gather per cell), ``I*N*P^4`` with the interaction
table (``Q*2*P^4`` distinct values: 20.7 MB at CIFAR-100 scale, float64); the image term reads ``I*N*S*P*P*K``
cached logits (cache-resident: ``V*P*P*K`` distinct values) and does one log-sum-exp per
(individual, slot, draw). Two launches, no host read:

* ``_population_fitness_kernel``, grid ``(I, N / SLOTS)``: the scores of ``SLOTS`` slots of one individual
  (parallel over individuals and slots). Patch term: a ``(SLOTS, P*P)`` gather; with the interaction table
  (``HAS_PAIRWISE``, ``(Q, P*P, 2, P*P)``) ``ROWS`` cells at a time as a ``(SLOTS, ROWS, P*P)`` tile, each
  cell's row gathered by its side, times ``[x_m != x_n]`` off the diagonal, summed (``SLOTS`` and ``ROWS`` keep
  the tile within ``TILE_BYTES``). Image term (``HAS_IMAGE``, one slot per program): ``DRAWS`` draws at a time
  as a ``(DRAWS, P*P, K)`` tile of source patch logits, summed over cells, then a log-sum-exp per draw
  (parallel over draws).
* ``_population_fitness_reduce_kernel``: per individual, the mean over its active slots in a fixed order
  (deterministic: no atomics), NaN without one.

Indices are checked as they are read: out of range, a pair id, draw or class is clamped (never read out of
bounds) and sets the op's bit in the device status word (``patchmix.ops.errors``). ``image_weight`` is a
``tl.float64`` parameter (a Python float argument is rounded to float32 on the GPU: measured on an H200,
7e-9 relative error against a float64 table). Accumulation in the table's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from patchmix.ops import errors
from patchmix.ops.contracts.population_fitness import (
    ERROR_DRAWS,
    ERROR_PAIR_CLASSES,
    ERROR_PAIRS,
    check_args,
    is_pairwise,
)

from ._checks import checked_load

_ERR_PAIRS = tl.constexpr(ERROR_PAIRS)
_ERR_DRAWS = tl.constexpr(ERROR_DRAWS)
_ERR_CLASSES = tl.constexpr(ERROR_PAIR_CLASSES)
TILE_BYTES = 16384  # the (DRAWS, P*P, K) and (SLOTS, ROWS, P*P) tiles: 4096 float32 or 2048 float64 values (128 threads)


@triton.jit
def _population_fitness_kernel(
    table_ptr, pairs_ptr, masks_ptr, logits_ptr, draws_ptr, classes_ptr, scores_ptr, status_ptr,
    N, Q, S, V, K, image_weight: tl.float64,
    HAS_IMAGE: tl.constexpr, HAS_PAIRWISE: tl.constexpr, ACC: tl.constexpr, PP: tl.constexpr, SLOTS: tl.constexpr,
    PP_BLOCK: tl.constexpr, ROWS: tl.constexpr, DRAWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * SLOTS + tl.arange(0, SLOTS)
    slot_ok = slots < N
    q = checked_load(pairs_ptr, i * N + slots, slot_ok, -1, Q, status_ptr, _ERR_PAIRS)
    act = slot_ok & (q >= 0)
    qs = tl.maximum(q, 0)
    cells = tl.arange(0, PP_BLOCK)
    ok = act[:, None] & (cells < PP)[None, :]
    m = tl.load(masks_ptr + (i * N + slots)[:, None] * PP + cells[None, :], mask=ok, other=0)
    side = (m != 0).to(tl.int64)
    if HAS_PAIRWISE:  # table (Q, PP, 2, PP): ROWS cells' rows at a time, a (SLOTS, ROWS, PP_BLOCK) tile
        score = tl.zeros([SLOTS], ACC)
        for n0 in tl.range(0, PP, ROWS):
            rows = n0 + tl.arange(0, ROWS)
            row_ok = act[:, None] & (rows < PP)[None, :]  # (SLOTS, ROWS)
            row_side = (tl.load(masks_ptr + (i * N + slots)[:, None] * PP + rows[None, :], mask=row_ok,
                                other=0) != 0).to(tl.int64)
            row_base = ((qs[:, None] * PP + rows[None, :]) * 2 + row_side) * PP  # (SLOTS, ROWS)
            t = tl.load(table_ptr + row_base[:, :, None] + cells[None, None, :],
                        mask=row_ok[:, :, None] & ok[:, None, :], other=0.0).to(ACC)
            # row n counts at column n (the base score) and, times [x_m != x_n], at the other columns m (a
            # product, as on the CPU: an inf or NaN in a used row makes the slot NaN everywhere)
            w = ((row_side[:, :, None] != side[:, None, :]) | (rows[None, :, None] == cells[None, None, :])).to(ACC)
            score += tl.sum(tl.sum(t * w, axis=2), axis=1)
        score = score / PP
    else:  # table (Q, PP, 2): one entry per cell
        t = tl.load(table_ptr + (qs[:, None] * PP + cells[None, :]) * 2 + side, mask=ok, other=0.0).to(ACC)
        score = tl.sum(t, axis=1) / PP
    if HAS_IMAGE:  # SLOTS == 1: this program's one slot, its draws in blocks of DRAWS
        lam = tl.sum((ok & (m != 0)).to(ACC), axis=1) / PP  # (1,)
        ci = checked_load(classes_ptr, qs * 2, act, 0, K, status_ptr, _ERR_CLASSES)
        cj = checked_load(classes_ptr, qs * 2 + 1, act, 0, K, status_ptr, _ERR_CLASSES)
        kk = tl.arange(0, BLOCK_K)
        from_a = (m != 0)[:, None, :, None]  # (1, 1, PP_BLOCK, 1)
        cell_ok = (cells < PP)[None, :, None]
        img = tl.zeros([1], ACC)
        for s0 in tl.range(0, S, DRAWS):
            d = s0 + tl.arange(0, DRAWS)
            d_ok = act[:, None] & (d < S)[None, :]  # (1, DRAWS)
            a = checked_load(draws_ptr, (qs[:, None] * S + d[None, :]) * 2, d_ok, 0, V, status_ptr, _ERR_DRAWS)
            b = checked_load(draws_ptr, (qs[:, None] * S + d[None, :]) * 2 + 1, d_ok, 0, V, status_ptr, _ERR_DRAWS)
            src = tl.where(from_a, a[:, :, None, None], b[:, :, None, None])  # (1, DRAWS, PP_BLOCK, 1)
            tile_ok = d_ok[:, :, None, None] & cell_ok[None, :, :, :] & (kk < K)[None, None, None, :]
            z = tl.load(logits_ptr + (src * PP + cells[None, None, :, None]) * K + kk[None, None, None, :],
                        mask=tile_ok, other=0.0).to(ACC)
            u = tl.sum(z, axis=2) / PP  # (1, DRAWS, BLOCK_K)
            u_m = tl.where((kk < K)[None, None, :], u, float("-inf"))
            mx = tl.max(u_m, axis=2)
            lse = mx + tl.log(tl.sum(tl.exp(u_m - mx[:, :, None]), axis=2))
            u_i = tl.sum(tl.where(kk[None, None, :] == ci[:, None, None], u, 0.0), axis=2)
            u_j = tl.sum(tl.where(kk[None, None, :] == cj[:, None, None], u, 0.0), axis=2)
            contrib = lam[:, None] * (u_i - lse) + (1.0 - lam[:, None]) * (u_j - lse)
            img += tl.sum(tl.where(d_ok, contrib, 0.0), axis=1)
        score += tl.full([], image_weight, ACC) * img / S
    tl.store(scores_ptr + i * N + slots, tl.where(act, score, 0.0), mask=slot_ok)


@triton.jit
def _population_fitness_reduce_kernel(scores_ptr, pairs_ptr, out_ptr, n_ind, N, IB: tl.constexpr, NB: tl.constexpr):
    """``out[i]`` = mean over the active slots of individual ``i`` (NaN without one), in a fixed order."""
    ind = tl.program_id(0) * IB + tl.arange(0, IB)
    i_ok = ind < n_ind
    total = tl.zeros([IB], scores_ptr.dtype.element_ty)
    count = tl.zeros([IB], tl.int32)
    for n0 in tl.range(0, N, NB):
        n = n0 + tl.arange(0, NB)
        ok = i_ok[:, None] & (n < N)[None, :]
        offs = ind[:, None].to(tl.int64) * N + n[None, :]
        total += tl.sum(tl.load(scores_ptr + offs, mask=ok, other=0.0), axis=1)
        count += tl.sum((tl.load(pairs_ptr + offs, mask=ok, other=-1) >= 0).to(tl.int32), axis=1)
    tl.store(out_ptr + ind, total / count.to(total.dtype), mask=i_ok)


def population_fitness_cuda(table, pairs, masks, logits, draws, pair_classes, image_weight: float):
    """Host launcher: argument checks (no data read), then two launches."""
    check_args(table, pairs, masks, logits, draws, pair_classes, image_weight)
    n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
    PP = P * P
    out = torch.empty((n_ind,), dtype=table.dtype, device=table.device)
    if n_ind == 0:
        return out
    if N == 0:
        return out.fill_(float("nan"))
    errors.poll(table.device)
    has_image = float(image_weight) != 0.0
    if has_image:
        lg, dr, cl = logits.contiguous(), draws.contiguous(), pair_classes.contiguous()
        S, V, K = dr.shape[1], lg.shape[0], lg.shape[2]
    else:  # unused pointers: any valid tensor on the device
        lg, dr, cl = table, pairs, pairs
        S, V, K = 1, 1, 1
    acc = tl.float64 if table.dtype == torch.float64 else tl.float32
    pairwise = is_pairwise(table)
    pp_block = triton.next_power_of_2(PP)
    block_k = triton.next_power_of_2(K)
    tile = TILE_BYTES // table.element_size()
    # a slot reads PP_BLOCK values, or PP_BLOCK^2 with the interaction table (P = 4: 8 float64 slots a program;
    # P = 8: one slot in blocks of ROWS = 32 rows)
    slot_values = pp_block * pp_block if pairwise else pp_block
    slots = 1 if has_image else min(triton.next_power_of_2(N), max(1, tile // slot_values))
    rows = min(pp_block, max(1, tile // (slots * pp_block)))
    draws_block = max(1, min(triton.next_power_of_2(S), tile // (pp_block * block_k)))
    scores = torch.empty((n_ind, N), dtype=table.dtype, device=table.device)
    pc = pairs.contiguous()
    _population_fitness_kernel[(n_ind, triton.cdiv(N, slots))](
        table.contiguous(), pc, masks.contiguous().view(torch.uint8), lg, dr, cl, scores, errors.status(table.device),
        N, table.shape[0], S, V, K, float(image_weight),
        HAS_IMAGE=has_image, HAS_PAIRWISE=pairwise, ACC=acc, PP=PP, SLOTS=slots, PP_BLOCK=pp_block, ROWS=rows,
        DRAWS=draws_block, BLOCK_K=block_k, num_warps=4,
    )
    ib = 4
    _population_fitness_reduce_kernel[(triton.cdiv(n_ind, ib),)](
        scores, pc, out, n_ind, N, IB=ib, NB=min(triton.next_power_of_2(N), 256), num_warps=4,
    )
    errors.launched(table.device)
    return out
