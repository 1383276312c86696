"""Triton kernels for ``patchmix::patchmix_cross_entropy`` and ``patchmix_cross_entropy_backward`` on CUDA
devices (they also run under ``TRITON_INTERPRET=1``).

Floor: read the image and patch logits once and write their gradient once (a training step needs the
gradient: it is computed in the forward pass), one launch forward, no host read; the backward moves no bytes
when the incoming gradient is 1 (``loss.backward()``). At N = 256, P = 4, K = 1000 that is 2 x 17.4 MB.

Forward, one launch. Program ``i`` owns samples ``i * SPB ...``: it reads their labels, ``lam`` and term
weights (checked in the kernel: a bad value is clamped, never read out of bounds, and sets the op's bit in
the device status word, see ``patchmix.ops.errors``), then their image rows and their ``P*P`` patch rows. A
block of rows is one tile: with ``SINGLE`` (a row of ``K`` fits, ``K <= 8192``) each row is read once into
registers, reduced (max, sum of exponentials, the two target logits, the sum for label smoothing) and its
gradient ``coef * (softmax - target)`` written from the same registers; beyond, an online two-pass loop over
``BLOCK_K`` chunks (the logits are read twice). Patch rows are read through the logits' strides, so both the
``(N, P*P, K)`` and the head's natural ``(N, K, P, P)`` layouts are read in place; when the patches of a sample
are dense the patch index is the fast axis of the natural layout and the loads are coalesced.

Reduction without float atomics: each program writes the float64 sum of its samples' losses to
``partials[i]``, then increments an integer counter (``atomic_add``, acquire-release); the program that sees
the count ``programs - 1`` sums every partial in a fixed order, writes the loss and resets the counter. The
result does not depend on the order the programs run in.

Scalars (``image_weight``, ``patch_weight``, ``label_smoothing``) are ``tl.float64`` parameters and enter the
arithmetic through ``tl.full`` in the accumulation type, so float64 logits get float64 coefficients (a plain
Python float argument is rounded to float32 on the GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from patchmix.ops import errors
from patchmix.ops.contracts.patchmix_cross_entropy import (
    ERROR_LAM,
    ERROR_TARGET_A,
    ERROR_TARGET_B,
    ERROR_TERM_WEIGHTS,
    accumulation_dtype,
    check_args,
    check_backward_args,
    patch_strides,
    scale_gradients,
)

from ._checks import checked_load, report

MAX_SINGLE_K = 8192  # a row of K logits in registers (beyond: the online two-pass loop)
TILE = 4096  # elements a program holds per step (4 warps: 32 per thread)
BLOCK_PARTIALS = tl.constexpr(1024)
_ERR_A = tl.constexpr(ERROR_TARGET_A)
_ERR_B = tl.constexpr(ERROR_TARGET_B)
_ERR_LAM = tl.constexpr(ERROR_LAM)
_ERR_TW = tl.constexpr(ERROR_TERM_WEIGHTS)


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _ce_rows(x_ptr, g_ptr, x_off, g_off, sxk, sgk, la, lb, wa, coef, row_ok, K, eps, inv_k,
             COMPUTE_GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE: tl.constexpr):
    """Cross-entropy ``(R,)`` of rows ``x[x_off + k * sxk]`` against ``wa`` on class ``la`` and ``1 - wa`` on ``lb``,
    smoothed by ``eps``; with ``COMPUTE_GRAD`` writes ``coef * (softmax - target)`` to ``g[g_off + k * sgk]``."""
    wb = 1.0 - wa
    if SINGLE:  # one read, everything from registers
        cols = tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (cols < K)[None, :]
        x = tl.load(x_ptr + x_off[:, None] + cols[None, :] * sxk, mask=ok, other=float("-inf")).to(ACC)
        m = tl.max(x, 1)
        m_ref = tl.where(m == float("-inf"), 0.0, m)  # rows past the end (all -inf): exp(-inf - 0) = 0, not NaN
        e = tl.exp(x - m_ref[:, None])
        s = tl.sum(e, 1)
        sd = tl.sum(tl.where(ok, x - m_ref[:, None], 0.0), 1)
        xa = tl.sum(tl.where(cols[None, :] == la[:, None], x, 0.0), 1)
        xb = tl.sum(tl.where(cols[None, :] == lb[:, None], x, 0.0), 1)
    else:  # online max and sums over BLOCK_K chunks (m_ref re-based when the max moves)
        m_ref = tl.zeros(row_ok.shape, ACC)
        m = tl.full(row_ok.shape, float("-inf"), ACC)
        s = tl.zeros(row_ok.shape, ACC)
        sd = tl.zeros(row_ok.shape, ACC)
        for k0 in tl.range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            ok = row_ok[:, None] & (cols < K)[None, :]
            x = tl.load(x_ptr + x_off[:, None] + cols[None, :] * sxk, mask=ok, other=float("-inf")).to(ACC)
            m_new = tl.maximum(m, tl.max(x, 1))
            ref_new = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m_ref - ref_new) + tl.sum(tl.exp(x - ref_new[:, None]), 1)
            sd = sd - k0 * (ref_new - m_ref) + tl.sum(tl.where(ok, x - ref_new[:, None], 0.0), 1)
            m = m_new
            m_ref = ref_new
        xa = tl.load(x_ptr + x_off + la * sxk, mask=row_ok, other=0).to(ACC)
        xb = tl.load(x_ptr + x_off + lb * sxk, mask=row_ok, other=0).to(ACC)
    log_s = tl.log(tl.where(row_ok, s, 1.0))
    xa = tl.where(row_ok, xa, 0.0)  # rows past the end: finite (their -inf logits would give inf * 0 below)
    xb = tl.where(row_ok, xb, 0.0)
    ce = tl.where(wa != 0, wa * (log_s - (xa - m_ref)), 0.0) + tl.where(wb != 0, wb * (log_s - (xb - m_ref)), 0.0)
    ce = ce * (1.0 - eps) + tl.where(eps != 0, eps * (log_s - sd * inv_k), 0.0)
    if COMPUTE_GRAD:
        ta_w = ((1.0 - eps) * wa)[:, None]
        tb_w = ((1.0 - eps) * wb)[:, None]
        if SINGLE:
            p = e * (1.0 / tl.where(row_ok, s, 1.0))[:, None]
            target = eps * inv_k + tl.where(cols[None, :] == la[:, None], ta_w, 0.0)
            target += tl.where(cols[None, :] == lb[:, None], tb_w, 0.0)
            grad = coef[:, None] * (p - target)
            tl.store(g_ptr + g_off[:, None] + cols[None, :] * sgk, grad.to(g_ptr.dtype.element_ty), mask=ok)
        else:
            lse = m_ref + log_s
            for k0 in tl.range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                ok = row_ok[:, None] & (cols < K)[None, :]
                x = tl.load(x_ptr + x_off[:, None] + cols[None, :] * sxk, mask=ok, other=0).to(ACC)
                target = eps * inv_k + tl.where(cols[None, :] == la[:, None], ta_w, 0.0)
                target += tl.where(cols[None, :] == lb[:, None], tb_w, 0.0)
                grad = coef[:, None] * (tl.exp(x - lse[:, None]) - target)
                tl.store(g_ptr + g_off[:, None] + cols[None, :] * sgk, grad.to(g_ptr.dtype.element_ty), mask=ok)
    return ce


@triton.jit
def _labels(ta_ptr, tb_ptr, n, ok, K, status_ptr):
    """``target_a[n]``, ``target_b[n]``, checked against ``[0, K)``."""
    return (checked_load(ta_ptr, n, ok, 0, K, status_ptr, _ERR_A),
            checked_load(tb_ptr, n, ok, 0, K, status_ptr, _ERR_B))


@triton.jit
def _term_weight(tw_ptr, n, ok, which, status_ptr, HAS_TW: tl.constexpr, ACC: tl.constexpr):
    """``term_weights[n, which]`` (1 without term weights); not finite or negative: reported."""
    if HAS_TW:
        w = tl.load(tw_ptr + n * 2 + which, mask=ok, other=0).to(ACC)
        report(ok & ~((w >= 0) & (w < float("inf"))), status_ptr, _ERR_TW)
    else:
        w = tl.full(n.shape, 1.0, ACC)
    return w


@triton.jit
def _patchmix_cross_entropy_kernel(
    img_ptr, gimg_ptr, pat_ptr, gpat_ptr, ta_ptr, tb_ptr, lam_ptr, mask_ptr, tw_ptr,
    loss_ptr, partial_ptr, counter_ptr, status_ptr,
    N, K, s_in, s_ik, s_gin, s_gik, s_pn, s_pk, s_pr, s_pc, s_gpn, s_gpk, s_gpr, s_gpc,
    image_weight: tl.float64, patch_weight: tl.float64, label_smoothing: tl.float64,
    HAS_IMAGE: tl.constexpr, HAS_PATCH: tl.constexpr, HAS_TW: tl.constexpr, P: tl.constexpr,
    DENSE_PATCHES: tl.constexpr, ROW_ALIGN: tl.constexpr,
    SPB: tl.constexpr, PPB: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, REDUCTION: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    samples = pid * SPB + tl.arange(0, SPB)
    s_ok = samples < N
    eps = tl.full([], label_smoothing, ACC)
    inv_k = tl.full([], 1.0, ACC) / K
    # gradient scale of "mean": 1/N (the loss itself is divided once, in float64, by the last program)
    scale = tl.full([], 1.0, ACC) / N if REDUCTION == 2 else tl.full([], 1.0, ACC)
    a, b = _labels(ta_ptr, tb_ptr, samples, s_ok, K, status_ptr)
    lam = tl.load(lam_ptr + samples, mask=s_ok, other=0).to(ACC)
    report(s_ok & ~((lam >= 0) & (lam <= 1)), status_ptr, _ERR_LAM)
    loss = tl.zeros([SPB], ACC)
    if HAS_IMAGE:
        w = tl.full([], image_weight, ACC) * _term_weight(tw_ptr, samples, s_ok, 0, status_ptr, HAS_TW, ACC)
        # rows start at multiples of ROW_ALIGN elements (the launcher checks strides and pointers): with classes
        # contiguous the loads of a row can be vectors
        x_row = tl.multiple_of(samples.to(tl.int64) * s_in, ROW_ALIGN)
        g_row = tl.multiple_of(samples.to(tl.int64) * s_gin, ROW_ALIGN)
        ce = _ce_rows(img_ptr, gimg_ptr, x_row, g_row, s_ik, s_gik,
                      a, b, lam, w * scale, s_ok, K, eps, inv_k, COMPUTE_GRAD, ACC, BLOCK_K, SINGLE)
        loss += w * ce
    if HAS_PATCH:
        PP: tl.constexpr = P * P
        j = tl.arange(0, SPB * PPB)
        n = pid * SPB + j // PPB
        w_row = tl.full([], patch_weight, ACC) / PP * _term_weight(tw_ptr, n, n < N, 1, status_ptr, HAS_TW, ACC)
        for p0 in tl.range(0, PP, PPB):
            p = p0 + j % PPB
            ok = (n < N) & (p < PP)
            la, lb = _labels(ta_ptr, tb_ptr, n, ok, K, status_ptr)
            m = tl.load(mask_ptr + n * PP + p, mask=ok, other=0)
            label = tl.where(m != 0, la, lb)
            n64 = n.to(tl.int64)
            if DENSE_PATCHES:  # patch p at p * s_pc (s_pr == P * s_pc): contiguous patches stay provably contiguous
                x_off = n64 * s_pn + p * s_pc
                g_off = n64 * s_gpn + p * s_gpc
            else:
                r = p // P
                c = p % P
                x_off = n64 * s_pn + r * s_pr + c * s_pc
                g_off = n64 * s_gpn + r * s_gpr + c * s_gpc
            ce_p = _ce_rows(pat_ptr, gpat_ptr, x_off, g_off, s_pk, s_gpk, label, label, tl.full([SPB * PPB], 1.0, ACC),
                            w_row * scale, ok, K, eps, inv_k, COMPUTE_GRAD, ACC, BLOCK_K, SINGLE)
            loss += tl.sum(tl.reshape(tl.where(ok, w_row * ce_p, 0.0), (SPB, PPB)), 1)
    if REDUCTION == 0:
        tl.store(loss_ptr + samples, loss, mask=s_ok)
    else:
        tl.store(partial_ptr + pid, tl.sum(tl.where(s_ok, loss, 0.0).to(tl.float64), 0))
        tl.debug_barrier()  # every thread's part of the partial is written before the release below
        done = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
        if done == tl.num_programs(0) - 1:  # the last program: a fixed-order sum of every partial
            total = tl.zeros([], tl.float64)
            for i0 in tl.range(0, tl.num_programs(0), BLOCK_PARTIALS):
                i = i0 + tl.arange(0, BLOCK_PARTIALS)
                total += tl.sum(tl.load(partial_ptr + i, mask=i < tl.num_programs(0), other=0.0, cache_modifier=".cg"), 0)
            if REDUCTION == 2:
                total = total / N
            tl.store(loss_ptr, total.to(ACC))
            tl.store(counter_ptr, 0)  # ready for the next call on this stream


# --------------------------------------------------------------------------------------------------
# backward: scale the saved gradients in place by the incoming gradient, on the device
# --------------------------------------------------------------------------------------------------


@triton.jit
def _scale_block(g_ptr, offs, gl_ptr, PER: tl.constexpr, PER_SAMPLE: tl.constexpr, numel, ACC: tl.constexpr):
    ok = offs < numel
    if PER_SAMPLE:  # reduction="none": sample offs // PER, scaled by grad_loss[sample] unless it is 1
        g = tl.load(gl_ptr + offs // PER, mask=ok, other=1.0).to(ACC)
        upd = ok & (g != 1.0)
        x = tl.load(g_ptr + offs, mask=upd, other=0.0).to(ACC)
        tl.store(g_ptr + offs, (x * g).to(g_ptr.dtype.element_ty), mask=upd)
    else:
        g = tl.load(gl_ptr).to(ACC)
        if g != 1.0:  # loss.backward(): nothing to move
            x = tl.load(g_ptr + offs, mask=ok, other=0.0).to(ACC)
            tl.store(g_ptr + offs, (x * g).to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _patchmix_cross_entropy_backward_kernel(
    g1_ptr, n1, g2_ptr, n2, gl_ptr,
    PER1: tl.constexpr, PER2: tl.constexpr, PER_SAMPLE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Blocks ``[0, cdiv(n1, BLOCK))`` scale ``g1`` (the image gradient), the rest ``g2`` (the patch gradient); a
    program visits every ``num_programs``-th block (a fixed grid: with an incoming gradient of 1 the launch is
    a few hundred programs that read one scalar and stop)."""
    first = tl.cdiv(n1, BLOCK)
    for blk in tl.range(tl.program_id(0), first + tl.cdiv(n2, BLOCK), tl.num_programs(0)):
        start = tl.zeros([], tl.int64) + blk  # 64-bit offsets (the interpreter's loop index is a Python int)
        if blk < first:
            _scale_block(g1_ptr, start * BLOCK + tl.arange(0, BLOCK), gl_ptr, PER1, PER_SAMPLE, n1, ACC)
        else:
            _scale_block(g2_ptr, (start - first) * BLOCK + tl.arange(0, BLOCK), gl_ptr, PER2, PER_SAMPLE, n2, ACC)


# --------------------------------------------------------------------------------------------------
# host launchers
# --------------------------------------------------------------------------------------------------

_COUNTERS: dict = {}
_SMS: dict = {}


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` (132, an H100/H200, off CUDA)."""
    if device.type != "cuda":
        return 132
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device]


def _counter(device: torch.device) -> torch.Tensor:
    """The zeroed int32 counter of the last-program reduction, one per (device, stream): the last program of each
    launch resets it, so it is allocated (and zeroed) once, not per call."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    key = (device, stream)
    if key not in _COUNTERS:
        _COUNTERS[key] = errors.persistent_zeros(device)
    return _COUNTERS[key]


def launch_config(N: int, K: int, PP: int, interleaved: bool = False) -> dict:
    """Samples per program, patch rows per step, ``BLOCK_K``, single pass or online, warps. ``interleaved``: the
    patch rows interleave in memory (the head's ``(N, K, P, P)`` layout, classes ``P*P`` elements apart)."""
    single = K <= MAX_SINGLE_K
    block_k = triton.next_power_of_2(max(K, 1)) if single else 1024
    pp_block = triton.next_power_of_2(PP)
    ppb = max(1, min(pp_block, TILE // block_k))
    if interleaved and ppb < pp_block and pp_block <= TILE // 256:
        # interleaved rows are read whole only by a tile that holds all of them: a tile of a few reads pieces of
        # every 64-byte run. All 16 rows, online over BLOCK_K = 512 in a tile of twice the usual size (8 warps):
        # on an H200 at K = 1000 the forward kernel took 15.4 us, against 23.7 for the single pass over 4 rows
        # at a time and 19.4 for BLOCK_K = 256 (bench/gpu_bench.py --sweep); K <= 256 holds all 16 rows anyway
        single, block_k, ppb = False, 2 * TILE // pp_block, pp_block
    # several samples per program only while a program's rows stay small and the grid keeps >= 256 programs
    spb = 1
    while ppb == pp_block and spb * 2 * pp_block * block_k <= TILE and triton.cdiv(N, spb * 2) >= 256:
        spb *= 2
    rows = spb * ppb
    warps = max(1, min(8, triton.next_power_of_2(rows * block_k) // 512))
    return dict(SPB=spb, PPB=ppb, BLOCK_K=block_k, SINGLE=single, num_warps=warps)


def patchmix_cross_entropy_cuda(
    image_logits, patch_logits, target_a, target_b, lam, mask, term_weights,
    image_weight: float, patch_weight: float, label_smoothing: float, reduction: str, compute_grad: bool,
):
    """Host launcher: argument checks (no data read), then one launch."""
    N, K, P = check_args(image_logits, patch_logits, target_a, target_b, lam, mask, term_weights, image_weight,
                         patch_weight, label_smoothing, reduction)
    ref = image_logits if image_logits is not None else patch_logits
    acc = accumulation_dtype(ref.dtype)
    grad_image = torch.empty_like(image_logits) if (compute_grad and image_logits is not None) else ref.new_empty((0,))
    grad_patch = torch.empty_like(patch_logits) if (compute_grad and patch_logits is not None) else ref.new_empty((0,))
    if reduction == "none":
        loss = torch.empty((N,), dtype=acc, device=ref.device)
    elif N == 0:  # the mean of nothing is NaN, the sum 0 (as torch)
        return torch.full((), float("nan") if reduction == "mean" else 0.0, dtype=acc, device=ref.device), grad_image, grad_patch
    else:
        loss = torch.empty((), dtype=acc, device=ref.device)
    if N == 0:
        return loss, grad_image, grad_patch
    errors.poll(ref.device)
    PP = P * P if patch_logits is not None else 1
    ps = patch_strides(patch_logits, P) if patch_logits is not None else (0, 0, 0, 0)
    cfg = launch_config(N, K, PP, interleaved=patch_logits is not None and ps[1] != 1)
    programs = triton.cdiv(N, cfg["SPB"])
    partials = torch.empty((programs,), dtype=torch.float64, device=ref.device) if reduction != "none" else loss
    img = image_logits if image_logits is not None else ref
    pat = patch_logits if patch_logits is not None else ref
    gi = grad_image if grad_image.numel() else img  # never written without compute_grad
    gp = grad_patch if grad_patch.numel() else pat
    gps = patch_strides(gp, P) if patch_logits is not None else (0, 0, 0, 0)
    dense = ps[2] == P * ps[3] and gps[2] == P * gps[3]
    vec = 16 // ref.element_size()
    row_align = vec
    for v in (img.stride(0), gi.stride(0), img.data_ptr() // ref.element_size(), gi.data_ptr() // ref.element_size()):
        while row_align > 1 and v % row_align:
            row_align //= 2
    ta, tb = target_a.contiguous(), target_b.contiguous()
    _patchmix_cross_entropy_kernel[(programs,)](
        img, gi, pat, gp, ta, tb, lam.contiguous(), mask.contiguous().view(torch.uint8) if mask is not None else ta,
        term_weights.contiguous() if term_weights is not None else lam,
        loss, partials, _counter(ref.device), errors.status(ref.device),
        N, K, img.stride(0), img.stride(-1), gi.stride(0), gi.stride(-1), *ps, *gps,
        float(image_weight), float(patch_weight), float(label_smoothing),
        HAS_IMAGE=image_logits is not None, HAS_PATCH=patch_logits is not None, HAS_TW=term_weights is not None,
        P=P, DENSE_PATCHES=dense, ROW_ALIGN=row_align, COMPUTE_GRAD=compute_grad, REDUCTION={"none": 0, "sum": 1, "mean": 2}[reduction],
        ACC=tl.float64 if acc == torch.float64 else tl.float32, **cfg,
    )
    errors.launched(ref.device)
    return loss, grad_image, grad_patch


def patchmix_cross_entropy_backward_cuda(grad_image, grad_patch, grad_loss):
    """Host launcher: ``grad_image *= grad_loss``, ``grad_patch *= grad_loss`` in place (per sample for a ``(N,)``
    ``grad_loss``), decided on the device: nothing moves where the incoming gradient is 1. One launch."""
    check_backward_args(grad_image, grad_patch, grad_loss)
    if grad_loss.dim() == 1 and any(g.numel() and g.stride(0) * g.shape[0] != g.numel() for g in (grad_image, grad_patch)):
        # per-sample scale of a gradient whose samples are not its outermost dimension (e.g. transposed logits)
        return scale_gradients(grad_image, grad_patch, grad_loss)
    block = 1024
    n1, n2 = grad_image.numel(), grad_patch.numel()
    per_sample = grad_loss.dim() == 1
    N = max(grad_loss.numel(), 1)
    acc = tl.float64 if torch.float64 in (grad_image.dtype, grad_patch.dtype) else tl.float32
    dense = [g.as_strided((g.numel(),), (1,)) if g.numel() else g for g in (grad_image, grad_patch)]
    programs = max(1, min(triton.cdiv(n1, block) + triton.cdiv(n2, block), 4 * _sm_count(grad_loss.device)))
    _patchmix_cross_entropy_backward_kernel[(programs,)](
        dense[0], n1, dense[1], n2, grad_loss.contiguous(),
        PER1=max(n1 // N, 1), PER2=max(n2 // N, 1), PER_SAMPLE=per_sample, ACC=acc, BLOCK=block, num_warps=4,
    )
