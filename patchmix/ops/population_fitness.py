"""``patchmix::population_fitness``: score every individual of a guided-search population at once.

Semantics (``shared/DESIGN.md``, "Cached fitness"; ``patchmix.search.fitness`` builds the inputs):

* A population of ``I`` individuals, each with ``N`` slots. Slot ``k`` of individual ``i`` holds a class-pair
  id ``pairs[i, k]`` in ``[0, Q)`` (``-1``: inactive slot) and a grid mask ``masks[i, k] (P, P)``. True cells
  come from the image of the pair's first class.
* ``table (Q, P*P, 2)``: for pair ``q`` and cell ``n`` (row-major), ``table[q, n, 1]`` is the mean over the
  pair's ``S`` validation draws ``(a_s, b_s)`` of the score of image ``a_s``'s patch ``n`` against its label,
  ``table[q, n, 0]`` the same for image ``b_s``. A composed sample's patch ``n`` comes from ``a`` when the mask
  cell is True, so the patch term of slot ``k`` is ``mean_n table[q, n, mask[n]]`` -- exactly the mean over
  draws and patches of DESIGN.md, because that mean is linear in the mask.
* Optional image-level term (``image_weight != 0``; needs ``logits (V, P*P, K)``, ``draws (Q, S, 2)`` indices
  into ``logits`` and ``pair_classes (Q, 2)``): per draw the composed sample's image logits are taken as the
  mean over its ``P*P`` patches of the source patch logits, ``u = mean_n (mask[n] ? logits[a_s, n] : logits[b_s, n])``,
  and scored against the soft label with ``lam = mean_n mask[n]`` (the cell fraction, equal to the pixel
  fraction when ``P`` divides the image size): ``lam * log_softmax(u)[c_i] + (1 - lam) * log_softmax(u)[c_j]``,
  i.e. minus the soft cross entropy ``L_O``. It is not linear in the mask, so it is recomputed per draw:
  cost ``O(I * N * S * P*P * K)`` instead of ``O(I * N * P*P)``.
* ``fitness[i] = mean over active slots of (patch term + image_weight * mean_s image term)``; NaN for an
  individual without an active slot. Output dtype = ``table``'s (float32 or float64); sums accumulate in
  float64 (C++) or in the table's dtype (Triton).

Kernels: ``population_fitness_cpu`` (``csrc/population_fitness.cpp``), ``population_fitness_cuda``
(``kernels/population_fitness.py``, Triton), ``population_fitness_reference`` (below). No autograd: the
search only needs values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import Range, check_ranges
from ._registry import define_op

SCHEMA = (
    "(Tensor table, Tensor pairs, Tensor masks, Tensor? logits, Tensor? draws, Tensor? pair_classes, "
    "float image_weight) -> Tensor"
)

SUPPORTED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# checks shared by the public wrapper, the reference and the Triton launcher
# --------------------------------------------------------------------------------------------------


def check_population_fitness_args(
    table: Tensor,
    pairs: Tensor,
    masks: Tensor,
    logits: Tensor | None,
    draws: Tensor | None,
    pair_classes: Tensor | None,
    image_weight: float,
) -> None:
    """Shape, dtype and device checks (no data is read). Raises ``TypeError``/``ValueError``."""
    for name, t in (("table", table), ("pairs", pairs), ("masks", masks)):
        if not isinstance(t, Tensor):
            raise TypeError(f"population_fitness: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("logits", logits), ("draws", draws), ("pair_classes", pair_classes)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"population_fitness: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if table.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"population_fitness: table has dtype {table.dtype}; expected float32 or float64")
    if masks.dtype != torch.bool:
        raise ValueError(f"population_fitness: masks must be a bool tensor, got dtype {masks.dtype}")
    if masks.dim() != 4 or masks.shape[2] != masks.shape[3]:
        raise ValueError(f"population_fitness: masks must have shape (I, N, P, P), got {tuple(masks.shape)}")
    n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
    PP = P * P
    if pairs.dtype != torch.int64:
        raise ValueError(f"population_fitness: pairs must be int64 pair ids (-1 = inactive), got dtype {pairs.dtype}")
    if pairs.dim() != 2 or tuple(pairs.shape) != (n_ind, N):
        raise ValueError(
            f"population_fitness: pairs must have shape (I, N) = ({n_ind}, {N}) to match masks, got {tuple(pairs.shape)}"
        )
    if table.dim() != 3 or table.shape[1] != PP or table.shape[2] != 2:
        raise ValueError(
            f"population_fitness: table must have shape (Q, P*P, 2) = (Q, {PP}, 2) for {P}x{P} masks, "
            f"got {tuple(table.shape)}"
        )
    image_weight = float(image_weight)
    if image_weight != image_weight or image_weight in (float("inf"), float("-inf")):
        raise ValueError(f"population_fitness: image_weight must be finite, got {image_weight}")
    if image_weight != 0.0:
        for name, t in (("logits", logits), ("draws", draws), ("pair_classes", pair_classes)):
            if t is None:
                raise ValueError(
                    f"population_fitness: image_weight = {image_weight} needs {name}; pass logits (V, P*P, K), "
                    "draws (Q, S, 2) and pair_classes (Q, 2), or image_weight = 0"
                )
    Q = table.shape[0]
    if logits is not None:
        if logits.dtype != table.dtype:
            raise ValueError(f"population_fitness: logits has dtype {logits.dtype}; it must match table ({table.dtype})")
        if logits.dim() != 3 or logits.shape[1] != PP or logits.shape[2] < 1:
            raise ValueError(
                f"population_fitness: logits must have shape (V, P*P, K) = (V, {PP}, K), got {tuple(logits.shape)}"
            )
    if draws is not None:
        if draws.dtype != torch.int64:
            raise ValueError(f"population_fitness: draws must be int64 indices into logits, got dtype {draws.dtype}")
        if draws.dim() != 3 or draws.shape[0] != Q or draws.shape[2] != 2 or draws.shape[1] < 1:
            raise ValueError(
                f"population_fitness: draws must have shape (Q, S, 2) = ({Q}, S >= 1, 2), got {tuple(draws.shape)}"
            )
    if pair_classes is not None:
        if pair_classes.dtype != torch.int64:
            raise ValueError(f"population_fitness: pair_classes must be int64, got dtype {pair_classes.dtype}")
        if tuple(pair_classes.shape) != (Q, 2):
            raise ValueError(
                f"population_fitness: pair_classes must have shape (Q, 2) = ({Q}, 2), got {tuple(pair_classes.shape)}"
            )
    for name, t in (("pairs", pairs), ("masks", masks), ("logits", logits), ("draws", draws),
                    ("pair_classes", pair_classes)):
        if t is not None and t.device != table.device:
            raise ValueError(
                f"population_fitness: {name} is on {t.device} but table is on {table.device}; move them to one device"
            )


def check_population_fitness_ranges(
    table: Tensor, pairs: Tensor, logits: Tensor | None, draws: Tensor | None, pair_classes: Tensor | None,
    image_weight: float,
) -> None:
    """Data checks (read the index tensors; one sync on CUDA, see ``_checks``): pair ids in ``[-1, Q)``; with
    the image term, ``draws`` in ``[0, V)`` and ``pair_classes`` in ``[0, K)``."""
    Q = table.shape[0]
    ranges = [Range("pairs", pairs, -1, Q - 1, f"for a table of Q = {Q} pairs (-1 marks an inactive slot)")]
    if float(image_weight) != 0.0:
        V, K = logits.shape[0], logits.shape[2]
        ranges += [
            Range("draws", draws, 0, V - 1, f"for logits of V = {V} validation images"),
            Range("pair_classes", pair_classes, 0, K - 1, f"for logits of K = {K} classes"),
        ]
    check_ranges("population_fitness", ranges)


# --------------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------------


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
    check_population_fitness_args(table, pairs, masks, logits, draws, pair_classes, image_weight)
    check_population_fitness_ranges(table, pairs, logits, draws, pair_classes, image_weight)
    n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
    PP = P * P
    active = pairs >= 0
    q = pairs.clamp_min(0)
    m = masks.reshape(n_ind, N, PP)
    t = table[q]  # (I, N, PP, 2)
    slot = torch.where(m, t[..., 1], t[..., 0]).sum(-1) / PP  # (I, N)
    if float(image_weight) != 0.0:
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
            the pair's first class, ``[..., 0]``: from its second); see ``patchmix.search.CachedFitness``.
        pairs: int64 ``(I, N)`` pair ids in ``[0, Q)``, ``-1`` for an inactive slot.
        masks: bool ``(I, N, P, P)``; True cells come from the pair's first class.
        logits: ``(V, P*P, K)`` cached patch logits (table's dtype), only for the image-level term.
        draws: int64 ``(Q, S, 2)`` validation indices ``(a, b)`` per pair, only for the image-level term.
        pair_classes: int64 ``(Q, 2)`` classes ``(c_i, c_j)`` of each pair, only for the image-level term.
        image_weight: weight of the image-level term (0 disables it and the three tensors above).

    Returns:
        ``(I,)`` in ``table``'s dtype: mean over active slots of the slot scores (NaN if none is active).
    """
    check_population_fitness_args(table, pairs, masks, logits, draws, pair_classes, image_weight)
    if not torch.compiler.is_compiling() and table.device.type == "cpu":  # never thrown from C++ (see grid_mix)
        check_population_fitness_ranges(table, pairs, logits, draws, pair_classes, image_weight)
    return population_fitness_op(table, pairs, masks, logits, draws, pair_classes, float(image_weight))
