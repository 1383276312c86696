"""Triton kernel for ``patchmix::grid_mix`` on CUDA devices (also runs under ``TRITON_INTERPRET=1``).

Tiling: a program owns ``ROWS`` image rows x ``BLOCK_L`` words of a row. A "row" is one channel's ``W``
pixels (contiguous layout) or all ``C`` channels of ``W`` pixels interleaved (channels_last), moved as
words of 1 to 8 bytes (the widest that no cell boundary splits), whatever the dtype. Integer
divisions are done per row (``ROWS`` of them) and per column (``BLOCK_L``), never per element, so the
kernel stays a pure copy: each output element is one load from exactly one source and one store.
Programs of the first column also compute ``lam`` for ``ROWS`` samples, so ``lam`` comes from the same launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from patchmix.ops.grid_mix import check_grid_mix_args, check_index_ranges, output_memory_format


@triton.jit
def _grid_mix_kernel(
    x_ptr, mask_ptr, ia_ptr, ib_ptr, out_ptr, lam_ptr,
    N, H, W, P, total_rows, rows_per_image, row_len, image_numel, hw, word_bytes, pixel_bytes,
    HAS_A: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_PP: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_l = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    row_ok = rows < total_rows
    n = rows // rows_per_image
    row_in_image = rows % rows_per_image
    h = row_in_image % H  # channels_last rows are whole pixel rows: row_in_image < H already
    cell_r = (h * P) // H

    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    col_ok = cols < row_len
    w = (cols * word_bytes) // pixel_bytes  # pixel of the word's first byte; a word never spans two cells
    cell_c = (w * P) // W

    ok = row_ok[:, None] & col_ok[None, :]
    from_a = tl.load(mask_ptr + (n * P * P + cell_r * P)[:, None] + cell_c[None, :], mask=ok, other=0)
    if HAS_A:
        src_a = tl.load(ia_ptr + n, mask=row_ok, other=0)
    else:
        src_a = n.to(tl.int64)
    src_b = tl.load(ib_ptr + n, mask=row_ok, other=0)
    src = tl.where(from_a != 0, src_a[:, None], src_b[:, None])
    in_image = (row_in_image.to(tl.int64) * row_len)[:, None] + cols[None, :]
    vals = tl.load(x_ptr + src * image_numel + in_image, mask=ok)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * row_len + cols[None, :], vals, mask=ok)

    if pid_l == 0:
        # lam for samples pid_r * ROWS ... + ROWS: area of the True cells; cell r spans rows
        # [ceil(r*H/P), ceil((r+1)*H/P)), the same integer rule as the copy above.
        samples = pid_r * ROWS + tl.arange(0, ROWS)
        s_ok = samples < N
        k = tl.arange(0, BLOCK_PP)
        k_ok = k < P * P
        r = k // P
        q = k % P
        rh = ((r + 1) * H + P - 1) // P - (r * H + P - 1) // P
        cw = ((q + 1) * W + P - 1) // P - (q * W + P - 1) // P
        m = tl.load(mask_ptr + samples[:, None] * P * P + k[None, :], mask=s_ok[:, None] & k_ok[None, :], other=0)
        area = tl.sum(tl.where(m != 0, (rh * cw)[None, :], 0), axis=1)
        # div_rn: correctly rounded, as in C++ (plain `/` is approximate on the GPU)
        tl.store(lam_ptr + samples, tl.math.div_rn(area.to(tl.float32), hw), mask=s_ok)


def grid_mix_cuda(x: torch.Tensor, mask: torch.Tensor, index_a: torch.Tensor | None, index_b: torch.Tensor):
    """Host launcher: same contract as ``patchmix.ops.grid_mix`` (checks, then one kernel launch)."""
    check_grid_mix_args(x, mask, index_a, index_b)
    B, C, H, W = x.shape
    N, P = mask.shape[0], mask.shape[1]
    check_index_ranges(B, index_a, index_b)  # before the kernel reads x: never out of bounds
    fmt = output_memory_format(x)
    xc = x.contiguous(memory_format=fmt)
    out = torch.empty((N, C, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
    lam = torch.empty((N,), dtype=torch.float32, device=x.device)
    if N == 0:
        return out, lam
    channels_last = fmt == torch.channels_last
    es = x.element_size()
    rows_per_image = H if channels_last else C * H
    pixel_bytes = C * es if channels_last else es
    row_bytes = W * pixel_bytes
    # Copy in the widest word (up to 8 bytes) that every cell boundary and row length is a multiple of:
    # uint8 images then move 8 bytes per lane instead of 1 (measured on an H100 at 256x3x224x224 uint8:
    # 1-byte lanes ran at 5.6x the time of a device copy).
    bounds = [((q * W + P - 1) // P) * pixel_bytes for q in range(P + 1)] + [row_bytes]
    word = 8
    while word > 1 and (any(b % word for b in bounds) or xc.data_ptr() % word or out.data_ptr() % word):
        word //= 2
    word_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[word]
    flat_x = xc.as_strided((xc.numel(),), (1,)).view(torch.uint8).view(word_dtype)
    flat_out = out.as_strided((out.numel(),), (1,)).view(torch.uint8).view(word_dtype)
    row_len = row_bytes // word
    total_rows = N * rows_per_image
    block_l = min(triton.next_power_of_2(row_len), 1024)
    rows = max(1, 4096 // block_l)
    # lam needs ceil(N / ROWS) programs in column 0; total_rows >= N guarantees them.
    grid = (triton.cdiv(total_rows, rows), triton.cdiv(row_len, block_l))
    mask_u8 = mask.contiguous().view(torch.uint8)
    _grid_mix_kernel[grid](
        flat_x, mask_u8, (index_a if index_a is not None else index_b).contiguous(), index_b.contiguous(),
        flat_out, lam,
        N, H, W, P, total_rows, rows_per_image, row_len, rows_per_image * row_len, float(H * W), word, pixel_bytes,
        HAS_A=index_a is not None,
        ROWS=rows, BLOCK_L=block_l, BLOCK_PP=triton.next_power_of_2(P * P),
        num_warps=4,
    )
    return out, lam
