"""The random draws of the mixers: Beta weights, pairings, CutMix boxes and PatchMix grid masks.

Every function draws on ``device`` from ``generator`` (a generator on that device, or None for the default
one), vectorised over samples with a fixed number of kernels and no host read: on CUDA a training step never
waits for the GPU here, and everything runs on ``meta`` tensors and traces with ``torch.compile(fullgraph=True)``.
Per-sample choices among a few options compare one uniform draw with Python thresholds, so no small tensor
is copied to the device either (a blocking host-to-device copy would synchronise).
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

GAMMA_ROUNDS = 12


def sample_gamma(concentration: float, n: int, generator=None, device=None) -> Tensor:
    """``n`` draws of Gamma(concentration, 1), float64, on ``device``: on the CPU by torch's own sampler (exact
    rejection in C++, where waiting costs nothing: 25 us for 512 draws against 310 us for the fixed rounds),
    elsewhere by :func:`sample_gamma_rounds` (no host read on CUDA, runs on ``meta``)."""
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
    """``n`` draws of Beta(alpha, alpha) as float32 ``(n,)`` (two Gamma draws in one batch)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
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
    uniform draw compared with the cumulative thresholds, which stay Python numbers)."""
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


def cutmix_boxes(lam0: Tensor, height: int, width: int, generator=None) -> Tensor:
    """CutMix's boxes (Yun et al.; timm's ``rand_bbox``), int64 ``(n, 4)`` as ``(top, bottom, left, right)``,
    bottom/right exclusive, on ``lam0``'s device: sides ``int(H * sqrt(1 - lam0))``, ``int(W * ...)``, centred
    uniformly, clipped to the image (so the realised area can be smaller than ``1 - lam0``)."""
    n, device = lam0.shape[0], lam0.device
    ratio = torch.sqrt(1.0 - lam0.double())
    cut_h = (height * ratio).long()
    cut_w = (width * ratio).long()
    cy = torch.randint(height, (n,), generator=generator, device=device)
    cx = torch.randint(width, (n,), generator=generator, device=device)
    top = (cy - cut_h // 2).clamp(0, height)
    bottom = (cy + cut_h // 2).clamp(0, height)
    left = (cx - cut_w // 2).clamp(0, width)
    right = (cx + cut_w // 2).clamp(0, width)
    return torch.stack([top, bottom, left, right], 1)


def minmax_sides(size: int, minmax: tuple[float, float]) -> tuple[int, int]:
    """The side range ``[int(size * lo), int(size * hi))`` of timm's ``rand_bbox_minmax``; raises when empty."""
    lo, hi = int(size * minmax[0]), int(size * minmax[1])
    if hi <= lo:
        raise ValueError(f"cutmix_minmax={tuple(minmax)} gives no box side for an image side of {size} "
                         f"(int({size} * {minmax[0]}) = {lo} must be < int({size} * {minmax[1]}) = {hi})")
    return lo, hi


def minmax_boxes(n: int, height: int, width: int, minmax: tuple[float, float], generator=None, device=None) -> Tensor:
    """timm's ``rand_bbox_minmax`` per sample: sides uniform in ``[int(S * lo), int(S * hi))`` and a corner
    uniform in ``[0, S - side)``, so the box lies inside the image. int64 ``(n, 4)`` like :func:`cutmix_boxes`."""
    out = []
    u = torch.rand(4, n, dtype=torch.float64, generator=generator, device=device)
    for k, size in enumerate((height, width)):
        lo, hi = minmax_sides(size, minmax)
        side = lo + (u[2 * k] * (hi - lo)).long()
        start = (u[2 * k + 1] * (size - side)).long()
        out += [start, start + side]
    return torch.stack(out, 1)


# --------------------------------------------------------------------------------------------------
# the same draws for one whole batch, on the host (Mix's "batch" mode)
# --------------------------------------------------------------------------------------------------


def host_rng(generator: torch.Generator | None, rng: random.Random | None = None) -> random.Random:
    """``rng`` (a new ``random.Random`` by default) seeded from one 63-bit draw of a CPU ``generator`` (torch's
    default CPU generator for None): the per-batch scalars then cost about 1 us each instead of a tensor op each
    (~10 us; the Beta's fixed-round Gamma ~130 us), and stay a function of ``generator``'s state."""
    rng = rng if rng is not None else random.Random()
    rng.seed(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
    return rng


def host_choice(rng: random.Random, weights: tuple[float, ...]) -> int:
    """Option ``k`` with probability ``weights[k] / sum(weights)``."""
    u, acc, total = rng.random(), 0.0, float(sum(weights))
    for k, w in enumerate(weights[:-1]):
        acc += w
        if u < acc / total:
            return k
    return len(weights) - 1


def host_cutmix_box(rng: random.Random, lam0: float, height: int, width: int) -> tuple[int, int, int, int]:
    """:func:`cutmix_boxes` for one box (timm's ``rand_bbox``): ``(top, bottom, left, right)``."""
    ratio = math.sqrt(1.0 - lam0)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randrange(height), rng.randrange(width)
    return (min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height),
            min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width))


def host_minmax_box(rng: random.Random, height: int, width: int, minmax) -> tuple[int, int, int, int]:
    """:func:`minmax_boxes` for one box (timm's ``rand_bbox_minmax``): ``(top, bottom, left, right)``."""
    out = []
    for size in (height, width):
        lo, hi = minmax_sides(size, minmax)
        side = rng.randrange(lo, hi)
        start = rng.randrange(size - side)
        out += [start, start + side]
    return tuple(out)


def box_area(boxes: Tensor) -> Tensor:
    """Pixels inside each box, int64 ``(n,)``."""
    return (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])


def grid_masks(lam: Tensor, grid_size: int, generator=None) -> Tensor:
    """Random PatchMix masks, bool ``(n, P, P)``: each cell True (from source *a*) with probability ``lam[n]``."""
    P = grid_size
    return torch.rand(lam.shape[0], P, P, generator=generator, device=lam.device) < lam[:, None, None]


__all__ = ["GAMMA_ROUNDS", "PAIRINGS", "box_area", "choose", "cutmix_boxes", "device_generator", "grid_masks",
           "host_choice", "host_cutmix_box", "host_minmax_box", "host_rng", "involution", "minmax_boxes",
           "minmax_sides", "partners", "sample_beta", "sample_gamma", "sample_gamma_rounds"]
