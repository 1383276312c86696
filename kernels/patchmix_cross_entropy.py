"""Triton kernel for ``patchmix::patchmix_cross_entropy`` on CUDA devices (also runs under ``TRITON_INTERPRET=1``).

One kernel, launched once for the image rows (``N`` rows of ``K`` logits) and once for the patch rows
(``N * P * P`` rows; row ``n * P*P + r * P + c`` reads ``patch_logits`` through its strides, so both the
``(N, P*P, K)`` and the head's natural ``(N, K, P, P)`` layouts are read in place). A program owns ``ROWS`` rows,
as a ``(ROWS, BLOCK_K)`` tile when classes are contiguous, or as a ``(BLOCK_K, ROWS)`` tile (``ROWS_INNER``) for
the natural layout, where one sample's ``P*P`` patches of a class are contiguous (coalesced accesses either way):

* pass 1 streams the row in ``BLOCK_K`` chunks with an online max / sum of exponentials (and the sum of
  ``x - max`` for label smoothing, re-based when the max moves), plus two gathered logits;
* pass 2 (``COMPUTE_GRAD``) streams it again and writes ``coef * (softmax - target)`` in the logits' dtype.

The row's loss, times ``coef`` (the term's weight, divided by ``N`` for ``mean``, the same factor as the
gradient's), goes to a small ``(N, 1 + P*P)`` buffer that the host sums (per sample for ``none``, all at once
in float64 otherwise), so the reduction is deterministic (no atomics). Scalars that may equal 1 (``P``, strides) are specialised to
constexpr by Triton, so the kernel never calls ``.to()`` on an argument, only on tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from patchmix.ops.patchmix_cross_entropy import (
    accumulation_dtype,
    check_patchmix_cross_entropy_args,
    check_patchmix_cross_entropy_data,
)


@triton.jit
def _patchmix_cross_entropy_kernel(
    x_ptr, g_ptr, ta_ptr, tb_ptr, lam_ptr, mask_ptr, loss_ptr,
    n_rows, K, P, PP,
    sxn, sxk, sxr, sxc, sgn, sgk, sgr, sgc,
    loss_stride, loss_offset,
    coef, eps, eps_over_k, inv_k,
    IS_PATCH: tl.constexpr, COMPUTE_GRAD: tl.constexpr, ACC: tl.constexpr, ROWS_INNER: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    row_ok = rows < n_rows
    if IS_PATCH:
        n = rows // PP
        p = rows % PP
        r = p // P
        c = p % P
        from_a = tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0  # mask (N, P, P) contiguous: index = row
        la = tl.where(from_a, tl.load(ta_ptr + n, mask=row_ok, other=0), tl.load(tb_ptr + n, mask=row_ok, other=0))
        lb = la
        wa = tl.full([ROWS], 1.0, ACC)
        wb = tl.zeros([ROWS], ACC)
        x_off = n * sxn + r * sxr + c * sxc
        g_off = n * sgn + r * sgr + c * sgc
        loss_off = n * loss_stride + loss_offset + p
    else:
        n = rows
        la = tl.load(ta_ptr + n, mask=row_ok, other=0)
        lb = tl.load(tb_ptr + n, mask=row_ok, other=0)
        wa = tl.load(lam_ptr + n, mask=row_ok, other=0).to(ACC)
        wb = 1.0 - wa
        x_off = n * sxn
        g_off = n * sgn
        loss_off = n * loss_stride + loss_offset

    # pass 1: online max (m), reference point m_ref (0 while the max is still -inf, so that exp(-inf - m_ref)
    # is 0, not NaN), s = sum exp(x - m_ref), sd = sum (x - m_ref)
    m = tl.full([ROWS], float("-inf"), ACC)
    m_ref = tl.zeros([ROWS], ACC)
    s = tl.zeros([ROWS], ACC)
    sd = tl.zeros([ROWS], ACC)
    for k0 in tl.range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        if ROWS_INNER:  # (BLOCK_K, ROWS) tile: the patches of one class are the contiguous, fast axis
            ok = (cols < K)[:, None] & row_ok[None, :]
            x = tl.load(x_ptr + x_off[None, :] + cols.to(tl.int64)[:, None] * sxk, mask=ok, other=float("-inf"))
            x = x.to(ACC)
            m_new = tl.maximum(m, tl.max(x, 0))
            ref_new = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m_ref - ref_new) + tl.sum(tl.exp(x - ref_new[None, :]), 0)
            sd = sd - k0 * (ref_new - m_ref) + tl.sum(tl.where(ok, x - ref_new[None, :], 0.0), 0)
        else:  # (ROWS, BLOCK_K) tile: classes contiguous
            ok = row_ok[:, None] & (cols < K)[None, :]
            x = tl.load(x_ptr + x_off[:, None] + cols.to(tl.int64)[None, :] * sxk, mask=ok, other=float("-inf"))
            x = x.to(ACC)
            m_new = tl.maximum(m, tl.max(x, 1))
            ref_new = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m_ref - ref_new) + tl.sum(tl.exp(x - ref_new[:, None]), 1)
            sd = sd - k0 * (ref_new - m_ref) + tl.sum(tl.where(ok, x - ref_new[:, None], 0.0), 1)
        m = m_new
        m_ref = ref_new
    log_s = tl.log(tl.where(row_ok, s, 1.0))  # rows past the end: no log(0) warnings under the interpreter
    xa = tl.load(x_ptr + x_off + la * sxk, mask=row_ok, other=0).to(ACC)
    xb = tl.load(x_ptr + x_off + lb * sxk, mask=row_ok, other=0).to(ACC)
    ce = tl.where(wa != 0, wa * (log_s - (xa - m_ref)), 0.0) + tl.where(wb != 0, wb * (log_s - (xb - m_ref)), 0.0)
    ce = ce * (1.0 - eps)
    ce += tl.where(eps != 0, eps * (log_s - sd * inv_k), 0.0)
    tl.store(loss_ptr + loss_off, coef * ce, mask=row_ok)

    if COMPUTE_GRAD:
        lse = m_ref + log_s
        ta_w = (1.0 - eps) * wa
        tb_w = (1.0 - eps) * wb
        for k0 in tl.range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            if ROWS_INNER:
                ok = (cols < K)[:, None] & row_ok[None, :]
                cols64 = cols.to(tl.int64)[:, None]
                x = tl.load(x_ptr + x_off[None, :] + cols64 * sxk, mask=ok, other=0).to(ACC)
                target = eps_over_k + tl.where(cols64 == la[None, :], ta_w[None, :], 0.0)
                target += tl.where(cols64 == lb[None, :], tb_w[None, :], 0.0)
                grad = coef * (tl.exp(x - lse[None, :]) - target)
                tl.store(g_ptr + g_off[None, :] + cols64 * sgk, grad.to(g_ptr.dtype.element_ty), mask=ok)
            else:
                ok = row_ok[:, None] & (cols < K)[None, :]
                cols64 = cols.to(tl.int64)[None, :]
                x = tl.load(x_ptr + x_off[:, None] + cols64 * sxk, mask=ok, other=0).to(ACC)
                target = eps_over_k + tl.where(cols64 == la[:, None], ta_w[:, None], 0.0)
                target += tl.where(cols64 == lb[:, None], tb_w[:, None], 0.0)
                grad = coef * (tl.exp(x - lse[:, None]) - target)
                tl.store(g_ptr + g_off[:, None] + cols64 * sgk, grad.to(g_ptr.dtype.element_ty), mask=ok)


def _patch_strides(t: torch.Tensor, P: int) -> tuple[int, int, int, int]:
    """(n, k, r, c) strides; for ``(N, P*P, K)`` patch ``p = r * P + c`` sits at ``p * stride(1)``."""
    if t.dim() == 3:
        return t.stride(0), t.stride(2), t.stride(1) * P, t.stride(1)
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _launch_config(K: int, rows_inner: bool = False, PP: int = 1) -> tuple[int, int]:
    """(ROWS, BLOCK_K): about 4096 elements per tile; with ROWS_INNER, ROWS covers one sample's patches."""
    if rows_inner:
        rows = min(triton.next_power_of_2(PP), 64)
        return rows, max(16, min(triton.next_power_of_2(max(K, 1)), 4096 // rows))
    block_k = min(triton.next_power_of_2(max(K, 1)), 1024)
    rows = max(1, min(64, 4096 // block_k))
    return rows, block_k


def patchmix_cross_entropy_cuda(
    image_logits, patch_logits, target_a, target_b, lam, mask,
    image_weight: float, patch_weight: float, label_smoothing: float, reduction: str, compute_grad: bool,
):
    """Host launcher: same contract as the op (checks, then at most two launches of one kernel)."""
    N, K, P = check_patchmix_cross_entropy_args(
        image_logits, patch_logits, target_a, target_b, lam, mask, image_weight, patch_weight, label_smoothing, reduction
    )
    check_patchmix_cross_entropy_data(target_a, target_b, lam, K)  # before any logit is read
    ref = image_logits if image_logits is not None else patch_logits
    acc = accumulation_dtype(ref.dtype)
    acc_tl = tl.float64 if acc == torch.float64 else tl.float32
    PP = P * P if patch_logits is not None else 0
    scale = 1.0 / N if (reduction == "mean" and N > 0) else 1.0
    # every entry is written by a launch below, except column 0 without image logits
    alloc = torch.empty if image_logits is not None else torch.zeros
    row_loss = alloc((N, 1 + PP), dtype=acc, device=ref.device)
    grad_image = torch.empty_like(image_logits) if (compute_grad and image_logits is not None) else ref.new_empty((0,))
    grad_patch = torch.empty_like(patch_logits) if (compute_grad and patch_logits is not None) else ref.new_empty((0,))
    ta, tb = target_a.contiguous(), target_b.contiguous()
    lam_c = lam.to(acc).contiguous()
    eps = float(label_smoothing)
    common = dict(eps=eps, eps_over_k=eps / K, inv_k=1.0 / K, COMPUTE_GRAD=compute_grad, ACC=acc_tl, num_warps=4)
    if N > 0 and image_logits is not None:
        rows, block_k = _launch_config(K)
        g = grad_image if compute_grad else image_logits  # never written when not computing gradients
        _patchmix_cross_entropy_kernel[(triton.cdiv(N, rows),)](
            image_logits, g, ta, tb, lam_c, ta, row_loss,
            N, K, 1, 1,
            image_logits.stride(0), image_logits.stride(1), 0, 0, g.stride(0), g.stride(1), 0, 0,
            1 + PP, 0, float(image_weight) * scale,
            IS_PATCH=False, ROWS_INNER=False, ROWS=rows, BLOCK_K=block_k, **common,
        )
    if N > 0 and patch_logits is not None:
        g = grad_patch if compute_grad else patch_logits
        mask_u8 = mask.contiguous().view(torch.uint8)
        coef = float(patch_weight) / PP
        strides = _patch_strides(patch_logits, P)
        # the head's natural (N, K, P, P): a sample's patches are contiguous per class, so they become the tile's
        # fast axis (coalesced loads and stores) instead of the strided class axis
        rows_inner = strides[1] != 1 and strides[3] == 1 and strides[2] == P
        rows, block_k = _launch_config(K, rows_inner, PP)
        _patchmix_cross_entropy_kernel[(triton.cdiv(N * PP, rows),)](
            patch_logits, g, ta, tb, lam_c, mask_u8, row_loss,
            N * PP, K, P, PP,
            *strides, *_patch_strides(g, P),
            1 + PP, 1, coef * scale,
            IS_PATCH=True, ROWS_INNER=rows_inner, ROWS=rows, BLOCK_K=block_k, **common,
        )
    # the rows already carry the 1/N of "mean": the reduction is one float64 sum (two launches, where a
    # per-sample sum, a cast and a mean took four)
    if reduction == "none":
        return row_loss.sum(1), grad_image, grad_patch
    return row_loss.sum(dtype=torch.float64).to(acc), grad_image, grad_patch
