"""Contract of ``patchmix::population_fitness``: score every individual of a guided-search population at once.

Semantics (``patchmix.search.fitness`` builds the inputs):

* A population of ``I`` individuals, each with ``N`` slots. Slot ``k`` of individual ``i`` holds a class-pair
  id ``pairs[i, k]`` in ``[0, Q)`` (``-1``: inactive slot) and a grid mask ``masks[i, k] (P, P)``. True cells
  come from the image of the pair's first class.
* ``table (Q, P*P, 2)``: for pair ``q`` and cell ``n`` (row-major), ``table[q, n, 1]`` is the mean over the
  pair's ``S`` validation draws ``(a_s, b_s)`` of the score of image ``a_s``'s patch ``n`` against its label,
  ``table[q, n, 0]`` the same for image ``b_s``. A composed sample's patch ``n`` comes from ``a`` when the mask
  cell is True, so the patch term of slot ``k`` is ``mean_n table[q, n, mask[n]]``: exactly the mean over
  draws and patches of the cached fitness, because that mean is linear in the mask.
* ``table (Q, P*P, 2, P*P)`` (the interaction table, for a fitness where a cell's score depends on which other
  cells come from the other image): for pair ``q``, cell ``n`` and side ``s`` (1: the cell comes from the pair's
  first class, i.e. its mask bit is True; 0: from the second), ``table[q, n, s, n]`` (the diagonal) is the
  cell's base score and ``table[q, n, s, m]``, ``m != n``, is added when cell ``m`` comes from the other side
  than cell ``n``. For mask bits ``x`` (``P*P`` bools) the patch term of the slot is
  ``(1 / P^2) * sum_n (table[q, n, x_n, n] + sum_{m != n} table[q, n, x_n, m] * [x_m != x_n])``:
  ``P^2 * P^2`` multiply-adds instead of ``P^2`` lookups. Every backend computes the off-diagonal terms as
  products with ``[x_m != x_n]``, so an inf or NaN anywhere in a used row ``table[q, n, x_n, :]`` makes the slot
  NaN. A 3-D table is the 4-D table with zero off-diagonal entries (``table3[q, n, s] = table4[q, n, s, n]``).
* Optional image-level term (``image_weight != 0``; needs ``logits (V, P*P, K)``, ``draws (Q, S, 2)`` indices
  into ``logits`` and ``pair_classes (Q, 2)``): per draw the composed sample's image logits are taken as the
  mean over its ``P*P`` patches of the source patch logits, ``u = mean_n (mask[n] ? logits[a_s, n] : logits[b_s, n])``,
  and scored against the soft label with ``lam = mean_n mask[n]`` (the cell fraction, equal to the pixel
  fraction when ``P`` divides the image size): ``lam * log_softmax(u)[c_i] + (1 - lam) * log_softmax(u)[c_j]``,
  i.e. minus the soft cross entropy ``L_O``. It is not linear in the mask, so it is recomputed per draw:
  cost ``O(I * N * S * P*P * K)`` instead of ``O(I * N * P*P)``.
* ``fitness[i] = mean over active slots of (patch term + image_weight * mean_s image term)``; NaN for an
  individual without an active slot. Output dtype = ``table``'s (float32 or float64). No autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import errors
from ._common import Range, check_ranges

OP = "population_fitness"
SCHEMA = (
    "(Tensor table, Tensor pairs, Tensor masks, Tensor? logits, Tensor? draws, Tensor? pair_classes, "
    "float image_weight) -> Tensor"
)
SUPPORTED_DTYPES = (torch.float32, torch.float64)
ERROR_PAIRS = errors.code(OP, "pairs")
ERROR_DRAWS = errors.code(OP, "draws")
ERROR_PAIR_CLASSES = errors.code(OP, "pair_classes")


def is_table_shape(shape, PP: int) -> bool:
    """Whether ``shape`` is ``(Q, PP, 2)`` (per-cell table) or ``(Q, PP, 2, PP)`` (interaction table)."""
    return tuple(shape[1:]) in ((PP, 2), (PP, 2, PP))


def is_pairwise(table: Tensor) -> bool:
    """Whether ``table`` is the 4-D interaction table ``(Q, P*P, 2, P*P)`` (after ``check_args``)."""
    return table.dim() == 4


def check_args(
    table: Tensor,
    pairs: Tensor,
    masks: Tensor,
    logits: Tensor | None,
    draws: Tensor | None,
    pair_classes: Tensor | None,
    image_weight: float,
) -> None:
    """Shape, dtype and device checks (no data is read). Raises ``TypeError``/``ValueError``."""
    for name, arg in (("table", table), ("pairs", pairs), ("masks", masks)):
        if not isinstance(arg, Tensor):
            raise TypeError(f"population_fitness: {name} must be a torch.Tensor, got {type(arg).__name__}")
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
    if not is_table_shape(table.shape, PP):
        raise ValueError(
            f"population_fitness: table must have shape (Q, P*P, 2) = (Q, {PP}, 2) or, as an interaction table, "
            f"(Q, P*P, 2, P*P) = (Q, {PP}, 2, {PP}) for {P}x{P} masks, got {tuple(table.shape)}"
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


def check_data(
    table: Tensor, pairs: Tensor, logits: Tensor | None, draws: Tensor | None, pair_classes: Tensor | None,
    image_weight: float,
) -> None:
    """Host check (CPU tensors and the reference): pair ids in ``[-1, Q)``; with the image term, ``draws`` in
    ``[0, V)`` and ``pair_classes`` in ``[0, K)``."""
    Q = table.shape[0]
    ranges = [Range("pairs", pairs, -1, Q - 1, f"for a table of Q = {Q} pairs (-1 marks an inactive slot)")]
    if float(image_weight) != 0.0:
        assert logits is not None and draws is not None and pair_classes is not None  # check_args required them
        V, K = logits.shape[0], logits.shape[2]
        ranges += [
            Range("draws", draws, 0, V - 1, f"for logits of V = {V} validation images"),
            Range("pair_classes", pair_classes, 0, K - 1, f"for logits of K = {K} classes"),
        ]
    check_ranges(OP, ranges)
