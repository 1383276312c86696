"""``patchmix::population_fitness``: score every individual of a guided-search population at once.

Semantics: ``contracts.population_fitness`` (``patchmix.search.fitness`` builds the inputs).

The table is per cell ``(Q, P*P, 2)`` (patch term linear in the mask) or the interaction table
``(Q, P*P, 2, P*P)`` (each cell's score also depends on which other cells come from the other image).

Kernels: ``population_fitness_cpu`` (``csrc/population_fitness.cpp``), ``population_fitness_cuda``
(``kernels/population_fitness.py``, Triton), ``population_fitness_reference`` (below). No autograd: the
search only needs values. CPU sums run in float64 in a fixed order (results do not depend on the thread
count); the Triton kernels accumulate in the table's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import define_op
from .contracts import _common
from .contracts.population_fitness import SCHEMA, check_args, check_data, is_pairwise

# --------------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------------


def _patch_term(table: Tensor, q: Tensor, m: Tensor) -> Tensor:
    """``P^2`` times the patch term of every slot, ``(I, N)``, from pair ids ``q (I, N)`` (clamped to ``>= 0``)
    and mask bits ``m (I, N, PP)``."""
    if not is_pairwise(table):  # (Q, PP, 2): one lookup per cell
        t = table[q]  # (I, N, PP, 2)
        return torch.where(m, t[..., 1], t[..., 0]).sum(-1)
    # (Q, PP, 2, PP): every cell's row for its side, (I, N, PP, PP) (row n, column m), gathered through a
    # flat (Q * PP * 2, PP) view, times [x_m != x_n] (the xor: 0 on the diagonal), plus the diagonal. A product,
    # as in the kernels, so an inf or NaN anywhere in a used row makes the slot NaN on every backend.
    Q, PP = table.shape[0], table.shape[1]
    cells = torch.arange(PP, device=q.device)
    rows = table.reshape(Q * PP * 2, PP)[(q[..., None] * PP + cells) * 2 + m.long()]  # (I, N, PP, PP)
    differ = (m[..., :, None] ^ m[..., None, :]).to(rows.dtype)  # (I, N, PP, PP)
    return rows.diagonal(dim1=-2, dim2=-1).sum(-1) + (rows * differ).sum((-2, -1))


def population_fitness_reference(
    table: Tensor,
    pairs: Tensor,
    masks: Tensor,
    logits: Tensor | None,
    draws: Tensor | None,
    pair_classes: Tensor | None,
    image_weight: float,
) -> Tensor:
    """Pure-PyTorch ``population_fitness`` -> ``(I,)`` in ``table``'s dtype (see the module docstring)."""
    check_args(table, pairs, masks, logits, draws, pair_classes, image_weight)
    check_data(table, pairs, logits, draws, pair_classes, image_weight)
    n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
    PP = P * P
    active = pairs >= 0
    q = pairs.clamp_min(0)
    m = masks.reshape(n_ind, N, PP)
    slot = _patch_term(table, q, m) / PP  # (I, N)
    if float(image_weight) != 0.0:
        assert logits is not None and draws is not None and pair_classes is not None  # check_args required them
        a = draws[q][..., 0]  # (I, N, S)
        b = draws[q][..., 1]
        u = torch.where(m[:, :, None, :, None], logits[a], logits[b]).mean(-2)  # (I, N, S, K)
        logp = torch.log_softmax(u, dim=-1)
        S = a.shape[-1]
        ci = pair_classes[q][..., 0, None, None].expand(n_ind, N, S, 1)
        cj = pair_classes[q][..., 1, None, None].expand(n_ind, N, S, 1)
        lam = m.to(table.dtype).mean(-1)[..., None]  # (I, N, 1)
        img = lam * logp.gather(-1, ci)[..., 0] + (1 - lam) * logp.gather(-1, cj)[..., 0]  # (I, N, S)
        slot = slot + float(image_weight) * img.mean(-1)
    total = torch.where(active, slot, torch.zeros((), dtype=slot.dtype, device=slot.device)).sum(-1)
    return (total / active.sum(-1).to(table.dtype)).to(table.dtype)


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

population_fitness_op = define_op(
    "population_fitness", SCHEMA, population_fitness_reference, "population_fitness_cuda"
)


@torch.library.register_fake("patchmix::population_fitness")
def _population_fitness_fake(table, pairs, masks, logits, draws, pair_classes, image_weight):
    return torch.empty((masks.shape[0],), dtype=table.dtype, device=table.device)


def population_fitness(
    table: Tensor,
    pairs: Tensor,
    masks: Tensor,
    logits: Tensor | None = None,
    draws: Tensor | None = None,
    pair_classes: Tensor | None = None,
    image_weight: float = 0.0,
) -> Tensor:
    """Fitness of every individual of a population, in one call.

    Args:
        table: ``(Q, P*P, 2)`` float32/float64 per-pair, per-cell mean patch scores (``[..., 1]``: cell from
            the pair's first class, ``[..., 0]``: from its second); see ``patchmix.search.CachedFitness``. Or
            the interaction table ``(Q, P*P, 2, P*P)``: ``table[q, n, s, n]`` is cell ``n``'s base score on
            side ``s``, ``table[q, n, s, m]`` (``m != n``) is added when cell ``m`` comes from the other side
            (see ``patchmix.ops.contracts.population_fitness``).
        pairs: int64 ``(I, N)`` pair ids in ``[0, Q)``, ``-1`` for an inactive slot.
        masks: bool ``(I, N, P, P)``; True cells come from the pair's first class.
        logits: ``(V, P*P, K)`` cached patch logits (table's dtype), only for the image-level term.
        draws: int64 ``(Q, S, 2)`` validation indices ``(a, b)`` per pair, only for the image-level term.
        pair_classes: int64 ``(Q, 2)`` classes ``(c_i, c_j)`` of each pair, only for the image-level term.
        image_weight: weight of the image-level term (0 disables it and the three tensors above).

    Returns:
        ``(I,)`` in ``table``'s dtype: mean over active slots of the slot scores (NaN if none is active).

    Bad indices: on the CPU a ``ValueError`` naming the argument; on CUDA the kernel clamps them (no
    out-of-bounds read) and ``patchmix.ops.check_errors()`` raises (no host sync here).
    """
    check_args(table, pairs, masks, logits, draws, pair_classes, image_weight)
    if _common.host_checks(table):  # in Python, as grid_mix does
        check_data(table, pairs, logits, draws, pair_classes, image_weight)
    return population_fitness_op(table, pairs, masks, logits, draws, pair_classes, float(image_weight))
