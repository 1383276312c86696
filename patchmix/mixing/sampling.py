"""The random draws of the mixers: Beta weights, pairings, CutMix boxes and PatchMix grid masks.

Every function draws on ``device`` from ``generator`` (a generator on that device, or None for the default
one), vectorised over samples with a fixed number of kernels and no host read: on CUDA a training step never
waits for the GPU here, and everything runs on ``meta`` tensors and traces with ``torch.compile(fullgraph=True)``.
Per-sample choices among a few options compare one uniform draw with Python thresholds, so no small tensor
is copied to the device either (a blocking host-to-device copy would synchronise).

Every sampler checks its arguments at its entry (``ValueError``), so none can loop forever or return NaN for an
argument it accepts: Python's ``random.betavariate`` loops forever for an infinite alpha (and for 1e308), torch's
Gamma sampler returns NaN there, and the Beta draws of 1.7e308 are 0/0.

CutMix boxes are timm 1.0's (``timm/data/mixup.py``): ``rand_bbox`` spans ``cut_h // 2`` rows above the centre and
``(cut_h + 1) // 2`` below it, so an unclipped box has exactly ``int(H * sqrt(1 - lam))`` rows (and columns);
``rand_bbox_minmax`` puts the corner anywhere from 0 to ``S - side`` inclusive.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from . import checks

GAMMA_ROUNDS = 12
#: Beta(alpha, alpha) draws use ``min(alpha, BETA_ALPHA_MAX)``: at 1e15 the law's standard deviation
#: ``1 / (2 sqrt(2 alpha + 1))`` is 1.1e-8, under half a float32 step at 0.5 (3e-8), so a larger alpha draws the same
#: float32 ``lam``; far above it the samplers break down (Python's betavariate never returns at 1e308, and
#: ``g0 / (g0 + g1)`` is inf / inf at 1.7e308).
BETA_ALPHA_MAX = 1e15


def check_alpha(alpha: float, name: str = "alpha", owner: str = "sample_beta") -> float:
    """A Beta concentration: a finite number > 0 (``ValueError`` naming ``name`` otherwise)."""
    return checks.real(owner, name, alpha, low=0.0, low_open=True)


def sample_gamma(concentration: float, n: int, generator=None, device=None) -> Tensor:
    """``n`` draws of Gamma(concentration, 1), float64, on ``device``: on the CPU by torch's own sampler (exact
    rejection in C++, where waiting costs nothing: an order of magnitude faster than the fixed rounds),
    elsewhere by :func:`sample_gamma_rounds` (no host read on CUDA, runs on ``meta``). ``concentration``: finite,
    > 0."""
    concentration = check_alpha(concentration, "concentration", "sample_gamma")
    if torch.device(device if device is not None else "cpu").type == "cpu":
        return torch._standard_gamma(torch.full((n,), float(concentration), dtype=torch.float64), generator=generator)
    return sample_gamma_rounds(concentration, n, generator, device)


def sample_gamma_rounds(concentration: float, n: int, generator=None, device=None) -> Tensor:
    """``n`` draws of Gamma(concentration, 1), float64, by Marsaglia and Tsang's method with ``GAMMA_ROUNDS``
    proposals per draw, drawn at once (no data-dependent loop: no host read on CUDA, and it traces).

    Each draw takes its first accepted proposal, which is exactly Gamma distributed. A proposal is accepted with
    probability at least 0.951 (shape ``a = 1``, the smallest after the boost below; it rises towards 1 with
    ``a``), so all 12 are rejected with probability below ``0.049 ** 12 < 2e-16``, under float64's resolution;
    then the last proposal is taken: the output's law differs from Gamma by at most that much in total
    variation.
    """
    concentration = check_alpha(concentration, "concentration", "sample_gamma_rounds")
    boost = concentration < 1.0  # Gamma(a) = Gamma(a + 1) * U ** (1 / a)
    a = concentration + 1.0 if boost else concentration
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    z = torch.randn(GAMMA_ROUNDS, n, dtype=torch.float64, generator=generator, device=device)
    u = torch.rand(GAMMA_ROUNDS, n, dtype=torch.float64, generator=generator, device=device)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    first = torch.argmax(ok.to(torch.uint8), dim=0)  # the first True; 0 if none
    first = torch.where(ok.any(0), first, GAMMA_ROUNDS - 1)
    out = (d * v.clamp_min(1e-300)).gather(0, first[None])[0]
    if boost:
        u = torch.rand(n, dtype=torch.float64, generator=generator, device=device)
        out = out * u ** (1.0 / concentration)
    return out


def sample_beta(alpha: float, n: int, generator=None, device=None) -> Tensor:
    """``n`` draws of Beta(alpha, alpha) as float32 ``(n,)`` in ``[0, 1]`` (two Gamma draws in one batch).
    ``alpha``: finite, > 0 (drawn with at most ``BETA_ALPHA_MAX``)."""
    alpha = min(check_alpha(alpha), BETA_ALPHA_MAX)
    g = sample_gamma(alpha, 2 * n, generator, device).view(2, n)
    return (g[0] / (g[0] + g[1]).clamp_min(1e-300)).to(torch.float32)


def device_generator(source: torch.Generator | None, device, cache: dict) -> torch.Generator | None:
    """The generator to draw on ``device`` with: ``source`` itself when it lives there; when it lives elsewhere
    (the CPU generator a training loop checkpoints, with data on CUDA), a generator on ``device`` (kept in
    ``cache``) seeded from one 63-bit draw of ``source`` per call (a host draw, no device sync; the stream
    stays a function of ``source``'s state). None without a source, and on ``meta``."""
    device = torch.device(device)
    if source is None or device.type == "meta":
        return None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if source.device == device:
        return source
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=source, device=source.device))
    if device not in cache:
        cache[device] = torch.Generator(device=device)
    return cache[device].manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# pairings
# --------------------------------------------------------------------------------------------------

PAIRINGS = ("random", "flip")


def partners(n: int, pairing: str, generator=None, device=None) -> Tensor:
    """Source *b* of every sample, int64 ``(n,)``: a random permutation (``"random"``) or timm's and
    torchvision's reversed batch, ``n - 1 - i`` (``"flip"``)."""
    if pairing == "flip":
        return torch.arange(n - 1, -1, -1, device=device)
    return torch.randperm(n, generator=generator, device=device)


def involution(n: int, pairing: str, generator=None, device=None) -> Tensor:
    """Partners that pair up (``partner[partner[i]] == i``), int64 ``(n,)``, for timm's ``"pair"`` mode: random
    pairs (``"random"``) or ``(i, n - 1 - i)`` (``"flip"``). With odd ``n`` one sample is its own partner."""
    if pairing == "flip":
        return torch.arange(n - 1, -1, -1, device=device)
    order = torch.randperm(n, generator=generator, device=device)
    half = n // 2
    first, second = order[:half], order[half:2 * half]
    out = torch.arange(n, device=device)  # the odd one out (order[-1] for odd n) keeps itself
    out[first] = second
    out[second] = first
    return out


def choose(n: int, weights: tuple[float, ...], generator=None, device=None) -> Tensor:
    """``n`` draws of an option index, int64 ``(n,)``, option ``k`` with probability ``weights[k] / sum`` (one
    uniform draw compared with the cumulative thresholds, which stay Python numbers). ``weights``: finite, >= 0,
    not all 0."""
    weights = checks.weights("choose", "weights", weights)
    u = torch.rand(n, dtype=torch.float64, generator=generator, device=device)
    total, acc = float(sum(weights)), 0.0
    out = torch.zeros(n, dtype=torch.int64, device=device)
    for w in weights[:-1]:
        acc += w
        out += (u >= acc / total).to(torch.int64)
    return out


# --------------------------------------------------------------------------------------------------
# CutMix boxes and PatchMix masks
# --------------------------------------------------------------------------------------------------


def _clipped_span(centre, cut, size: int):
    """timm 1.0's ``rand_bbox`` along one side: ``cut // 2`` before ``centre`` and ``(cut + 1) // 2`` from it on,
    clipped to ``[0, size]`` (ints or int64 tensors)."""
    if isinstance(centre, Tensor):
        return (centre - cut // 2).clamp(0, size), (centre + (cut + 1) // 2).clamp(0, size)
    return min(max(centre - cut // 2, 0), size), min(max(centre + (cut + 1) // 2, 0), size)


def cutmix_boxes(lam0: Tensor, height: int, width: int, generator=None) -> Tensor:
    """CutMix's boxes (Yun et al.; timm 1.0's ``rand_bbox``), int64 ``(n, 4)`` as ``(top, bottom, left, right)``,
    bottom/right exclusive, on ``lam0``'s device: sides ``int(H * sqrt(1 - lam0))``, ``int(W * ...)``, centred
    uniformly (``cy`` for every sample, then ``cx``), clipped to the image (so the realised area can be smaller
    than ``1 - lam0``).

    ``lam0``: float32 ``(n,)`` in ``[0, 1]``, and the sides are computed in float32 like timm's ``"elem"`` and
    ``"pair"`` modes do (their ``lam`` is a numpy float32 there), so a side on the edge of an integer rounds the
    same way."""
    n, device = lam0.shape[0], lam0.device
    ratio = torch.sqrt((1.0 - lam0.float()).clamp(0.0, 1.0))
    cut_h = (height * ratio).long()
    cut_w = (width * ratio).long()
    cy = torch.randint(height, (n,), generator=generator, device=device)
    cx = torch.randint(width, (n,), generator=generator, device=device)
    top, bottom = _clipped_span(cy, cut_h, height)
    left, right = _clipped_span(cx, cut_w, width)
    return torch.stack([top, bottom, left, right], 1)


def check_minmax(minmax, owner: str = "minmax_sides", name: str = "cutmix_minmax") -> tuple[float, float]:
    """``(lo, hi)``: box side ratios with ``0 < lo < hi <= 1`` (``ValueError`` naming ``name`` otherwise)."""
    try:
        lo, hi = (checks.real(owner, name, v, low=0.0, high=1.0, low_open=True) for v in minmax)
        ordered = lo < hi
    except (TypeError, ValueError):  # not two numbers in (0, 1]
        ordered = False
    if not ordered:
        raise ValueError(f"{owner}: {name} must be (lo, hi) with 0 < lo < hi <= 1, got {minmax!r}")
    return lo, hi


def minmax_sides(size: int, minmax: tuple[float, float]) -> tuple[int, int]:
    """The side range ``[int(size * lo), int(size * hi))`` of timm's ``rand_bbox_minmax``; raises when empty."""
    minmax = check_minmax(minmax)
    lo, hi = int(size * minmax[0]), int(size * minmax[1])
    if hi <= lo:
        raise ValueError(f"cutmix_minmax={tuple(minmax)} gives no box side for an image side of {size} "
                         f"(int({size} * {minmax[0]}) = {lo} must be < int({size} * {minmax[1]}) = {hi})")
    return lo, hi


def minmax_boxes(n: int, height: int, width: int, minmax: tuple[float, float], generator=None, device=None) -> Tensor:
    """timm 1.0's ``rand_bbox_minmax`` per sample: sides uniform in ``[int(S * lo), int(S * hi))`` and a corner
    uniform in ``[0, S - side]``, so the box lies inside the image (and may touch any edge). int64 ``(n, 4)`` like
    :func:`cutmix_boxes`. Drawn in timm's order (heights, widths, tops, lefts), one uniform row each."""
    u = torch.rand(4, n, dtype=torch.float64, generator=generator, device=device)
    sizes = (height, width)
    sides = []
    for k, size in enumerate(sizes):
        lo, hi = minmax_sides(size, minmax)
        sides.append(lo + (u[k] * (hi - lo)).long())
    out = []
    for k, (size, side) in enumerate(zip(sizes, sides, strict=True)):
        start = (u[2 + k] * (size - side + 1)).long()
        out += [start, start + side]
    return torch.stack(out, 1)


# --------------------------------------------------------------------------------------------------
# the same draws for one whole batch, on the host (Mix's "batch" mode)
# --------------------------------------------------------------------------------------------------


def host_rng(generator: torch.Generator | None, rng: random.Random | None = None) -> random.Random:
    """``rng`` (a new ``random.Random`` by default) seeded from one 63-bit draw of a CPU ``generator`` (torch's
    default CPU generator for None): the per-batch scalars then cost a Python call each instead of a tensor op
    each (a Beta through the fixed-round Gamma, many), and stay a function of ``generator``'s state."""
    rng = rng if rng is not None else random.Random()
    rng.seed(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
    return rng


def host_choice(rng: random.Random, weights: tuple[float, ...]) -> int:
    """Option ``k`` with probability ``weights[k] / sum(weights)`` (finite, >= 0, not all 0)."""
    weights = checks.weights("host_choice", "weights", weights)
    u, acc, total = rng.random(), 0.0, float(sum(weights))
    for k, w in enumerate(weights[:-1]):
        acc += w
        if u < acc / total:
            return k
    return len(weights) - 1


def host_beta(rng: random.Random, alpha: float) -> float:
    """One Beta(alpha, alpha) draw on the host (``random.betavariate``; ``alpha`` finite, > 0, drawn with at most
    ``BETA_ALPHA_MAX``: betavariate's rejection loop never ends for an infinite alpha)."""
    alpha = min(check_alpha(alpha, owner="host_beta"), BETA_ALPHA_MAX)
    return rng.betavariate(alpha, alpha)


def host_cutmix_box(rng: random.Random, lam0: float, height: int, width: int) -> tuple[int, int, int, int]:
    """:func:`cutmix_boxes` for one box (timm 1.0's ``rand_bbox``, in float64 like its ``"batch"`` mode, whose
    ``lam`` is a Python float): ``(top, bottom, left, right)``. ``lam0`` in ``[0, 1]``."""
    ratio = math.sqrt(1.0 - checks.real("host_cutmix_box", "lam0", lam0, low=0.0, high=1.0))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randrange(height), rng.randrange(width)
    return (*_clipped_span(cy, cut_h, height), *_clipped_span(cx, cut_w, width))


def host_minmax_box(rng: random.Random, height: int, width: int, minmax) -> tuple[int, int, int, int]:
    """:func:`minmax_boxes` for one box (timm 1.0's ``rand_bbox_minmax``, its draws in its order: height, width,
    top, left): ``(top, bottom, left, right)``."""
    sizes = (height, width)
    sides = [rng.randrange(*minmax_sides(size, minmax)) for size in sizes]
    starts = [rng.randrange(size - side + 1) for size, side in zip(sizes, sides, strict=True)]
    return starts[0], starts[0] + sides[0], starts[1], starts[1] + sides[1]


def box_area(boxes: Tensor) -> Tensor:
    """Pixels inside each box, int64 ``(n,)``."""
    return (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])


def grid_masks(lam: Tensor, grid_size: int, generator=None) -> Tensor:
    """Random PatchMix masks, bool ``(n, P, P)``: each cell True (from source *a*) with probability ``lam[n]``
    (``grid_size`` ``P >= 1``)."""
    P = checks.integer("grid_masks", "grid_size", grid_size, low=1)
    return torch.rand(lam.shape[0], P, P, generator=generator, device=lam.device) < lam[:, None, None]


__all__ = ["BETA_ALPHA_MAX", "GAMMA_ROUNDS", "PAIRINGS", "box_area", "check_alpha", "check_minmax", "choose",
           "cutmix_boxes", "device_generator", "grid_masks", "host_beta", "host_choice", "host_cutmix_box",
           "host_minmax_box", "host_rng", "involution", "minmax_boxes", "minmax_sides", "partners", "sample_beta", "sample_gamma", "sample_gamma_rounds"]
