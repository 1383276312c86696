"""Triton kernel for ``patchmix::population_fitness`` on CUDA devices (also runs under ``TRITON_INTERPRET=1``).

One program per individual. Patch term: ``BLOCK_N`` slots x ``BLOCK_PP`` cells per step, one table gather per
active cell. Image term (``HAS_IMAGE``): per slot and draw, a ``(BLOCK_PP, BLOCK_K)`` tile of source patch
logits is summed over cells and reduced by a log-sum-exp; inactive slots are masked, not branched over, so
every loop-carried value keeps one type. Accumulation is in the table's dtype (float32 or float64).
Scalar int arguments are never ``.to()``-cast: Triton specialises ints equal to 1 as constexprs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from patchmix.ops.population_fitness import check_population_fitness_args, check_population_fitness_ranges


@triton.jit
def _population_fitness_kernel(
    table_ptr, pairs_ptr, masks_ptr, logits_ptr, draws_ptr, classes_ptr, out_ptr,
    N, PP, S, K, image_weight_ptr,
    HAS_IMAGE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_PP: tl.constexpr, BLOCK_K: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    cells = tl.arange(0, BLOCK_PP)
    cell_ok = cells < PP
    acc = tl.zeros((BLOCK_N,), dtype=ACC)
    cnt = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for n0 in range(0, N, BLOCK_N):
        slots = n0 + tl.arange(0, BLOCK_N)
        slot_ok = slots < N
        q = tl.load(pairs_ptr + i * N + slots, mask=slot_ok, other=-1)
        act = q >= 0
        ok = act[:, None] & cell_ok[None, :]
        m = tl.load(masks_ptr + (i * N + slots)[:, None] * PP + cells[None, :], mask=ok, other=0)
        side = (m != 0).to(tl.int64)
        v = tl.load(table_ptr + (q[:, None] * PP + cells[None, :]) * 2 + side, mask=ok, other=0.0)
        acc += tl.sum(v.to(ACC), axis=1) / PP
        cnt += act.to(tl.int32)
    total = tl.sum(acc, axis=0)
    if HAS_IMAGE:
        kk = tl.arange(0, BLOCK_K)
        k_ok = kk < K
        img_acc = tl.zeros((BLOCK_K,), dtype=ACC)
        for n in range(0, N):
            q = tl.load(pairs_ptr + i * N + n)
            w = (q >= 0).to(ACC)
            qs = tl.maximum(q, 0)
            mrow = tl.load(masks_ptr + (i * N + n) * PP + cells, mask=cell_ok, other=0) != 0
            lam = tl.sum(tl.where(mrow & cell_ok, 1.0, 0.0).to(ACC), axis=0) / PP
            ci = tl.load(classes_ptr + qs * 2)
            cj = tl.load(classes_ptr + qs * 2 + 1)
            for s in range(0, S):
                a = tl.load(draws_ptr + (qs * S + s) * 2)
                b = tl.load(draws_ptr + (qs * S + s) * 2 + 1)
                src = tl.where(mrow, a, b)
                tile_ok = cell_ok[:, None] & k_ok[None, :]
                z = tl.load(logits_ptr + (src[:, None] * PP + cells[:, None]) * K + kk[None, :], mask=tile_ok, other=0.0)
                u = tl.sum(z.to(ACC), axis=0) / PP
                u_m = tl.where(k_ok, u, float("-inf"))
                mx = tl.max(u_m, axis=0)
                lse = mx + tl.log(tl.sum(tl.where(k_ok, tl.exp(u_m - mx), 0.0), axis=0))
                contrib = lam * tl.where(kk == ci, u - lse, 0.0) + (1.0 - lam) * tl.where(kk == cj, u - lse, 0.0)
                img_acc += tl.where(k_ok, contrib, 0.0) * w / S
        total += tl.sum(img_acc, axis=0) * tl.load(image_weight_ptr)
    count = tl.sum(cnt, axis=0)
    tl.store(out_ptr + i, total / count.to(ACC))


def population_fitness_cuda(
    table: torch.Tensor,
    pairs: torch.Tensor,
    masks: torch.Tensor,
    logits: torch.Tensor | None,
    draws: torch.Tensor | None,
    pair_classes: torch.Tensor | None,
    image_weight: float,
) -> torch.Tensor:
    """Host launcher: same contract as ``patchmix.ops.population_fitness`` (checks, then one kernel launch)."""
    check_population_fitness_args(table, pairs, masks, logits, draws, pair_classes, image_weight)
    check_population_fitness_ranges(table, pairs, logits, draws, pair_classes, image_weight)  # before any read
    n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
    PP = P * P
    out = torch.empty((n_ind,), dtype=table.dtype, device=table.device)
    if n_ind == 0:
        return out
    has_image = float(image_weight) != 0.0
    if has_image:
        lg, dr, cl = logits.contiguous(), draws.contiguous(), pair_classes.contiguous()
        S, K = dr.shape[1], lg.shape[2]
    else:  # unused pointers: any valid tensor on the device
        lg, dr, cl = table, pairs, pairs
        S, K = 1, 1
    acc = tl.float64 if table.dtype == torch.float64 else tl.float32
    # image_weight travels as a tensor in the table's dtype: a Python float argument is rounded to float32,
    # and reciprocals like 1/PP are avoided for the same reason (float64 tables must match the reference
    # to 1e-12; measured on an H200, float32 scalars gave 7e-9 relative error).
    weight = torch.full((1,), float(image_weight), dtype=table.dtype, device=table.device) if has_image else table
    block_pp = triton.next_power_of_2(PP)
    block_n = max(1, min(triton.next_power_of_2(max(N, 1)), max(1, 2048 // block_pp)))
    _population_fitness_kernel[(n_ind,)](
        table.contiguous(), pairs.contiguous(), masks.contiguous().view(torch.uint8), lg, dr, cl, out,
        N, PP, S, K, weight,
        HAS_IMAGE=has_image, ACC=acc,
        BLOCK_N=block_n, BLOCK_PP=block_pp, BLOCK_K=triton.next_power_of_2(K),
        num_warps=4,
    )
    return out
