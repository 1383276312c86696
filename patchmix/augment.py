"""Mixing modules: Random PatchMix, Mixup and CutMix, all returning one :class:`MixedBatch`.

Convention for every mixer: output sample ``i`` pairs ``x[i]`` (source *a*) with ``x[perm[i]]`` (source
*b*); ``lam[i]`` is the weight of ``target_a[i] = y[i]`` and ``1 - lam[i]`` that of ``target_b[i] = y[perm[i]]``.
For Random PatchMix and CutMix ``lam`` is the realised pixel fraction from ``x[i]`` (exact, never the
drawn Beta value). Sampling is vectorised, per sample, on the input's device, with a fixed number of kernels
and no host read (a CUDA training step does not wait for the GPU here), and reproducible with a
``torch.Generator``: one on the data's device is used directly, one elsewhere seeds a generator there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .ops import grid_mix, patch_targets, soft_targets


@dataclass
class MixedBatch:
    """A mixed batch.

    Attributes:
        images: ``(N, C, H, W)`` mixed images.
        target_a: int64 ``(N,)`` labels weighted by ``lam``.
        target_b: int64 ``(N,)`` labels weighted by ``1 - lam``.
        lam: float32 ``(N,)`` weight of ``target_a`` (1 for an unmixed sample).
        mask: bool ``(N, P, P)`` grid mask (True cells come from the ``target_a`` image) or ``None``
            for mixers without a grid (Mixup, CutMix).
    """

    images: Tensor
    target_a: Tensor
    target_b: Tensor
    lam: Tensor
    mask: Tensor | None = None

    @classmethod
    def unmixed(cls, x: Tensor, y: Tensor, grid_size: int | None = None) -> MixedBatch:
        """A batch of original samples (``lam = 1``, ``target_b = target_a``), with an all-True
        ``(B, P, P)`` mask when ``grid_size`` is given so that patch supervision applies too."""
        mask = None
        if grid_size is not None:
            mask = torch.ones(x.shape[0], grid_size, grid_size, dtype=torch.bool, device=x.device)
        return cls(x, y, y, torch.ones(x.shape[0], dtype=torch.float32, device=x.device), mask)

    def soft_targets(self, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
        """Soft labels ``(N, num_classes)`` float32."""
        return soft_targets(self.target_a, self.target_b, self.lam, num_classes, label_smoothing)

    def patch_targets(self) -> Tensor:
        """Per-patch labels ``(N, P*P)`` int64, row-major; only for grid mixers."""
        if self.mask is None:
            raise ValueError("patch_targets() needs a grid mask; this batch was mixed without one (Mixup/CutMix)")
        return patch_targets(self.target_a, self.target_b, self.mask)

    def to(self, device) -> MixedBatch:
        """The same batch with every tensor moved to ``device``."""
        return MixedBatch(*(None if t is None else t.to(device) for t in
                            (self.images, self.target_a, self.target_b, self.lam, self.mask)))

    def __len__(self) -> int:
        return self.images.shape[0]


# --------------------------------------------------------------------------------------------------
# random numbers: drawn on the data's device, a fixed number of kernels, no host read
# --------------------------------------------------------------------------------------------------

GAMMA_ROUNDS = 12


def sample_gamma(concentration: float, n: int, generator=None, device=None) -> Tensor:
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


def _check_batch(x: Tensor, y: Tensor, *, floating: bool) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be images of shape (B, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be int64 labels of shape (B,) = ({x.shape[0]},), got {getattr(y, 'shape', type(y))}")
    if y.dtype != torch.int64:
        raise ValueError(f"y must be int64 class indices, got dtype {y.dtype}")
    if floating and not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor for this mixer, got dtype {x.dtype}")


class _Mixer(nn.Module):
    def __init__(self, alpha: float, generator: torch.Generator | None):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.generator = generator
        self._device_generators: dict[torch.device, torch.Generator] = {}

    def draw_generator(self, device) -> torch.Generator | None:
        """The generator to draw on ``device`` with: ``generator`` itself when it lives there; when it lives
        elsewhere (the CPU generator a training loop checkpoints, with data on CUDA), a generator on ``device``
        seeded from one 63-bit draw of it per call (a host draw, no device sync; the stream stays a function
        of ``generator``'s state). None without a generator, and on ``meta``."""
        g, device = self.generator, torch.device(device)
        if g is None or device.type == "meta":
            return None
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if g.device == device:
            return g
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g, device=g.device))
        if device not in self._device_generators:
            self._device_generators[device] = torch.Generator(device=device)
        return self._device_generators[device].manual_seed(seed)

    def _perm_and_lam(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = self.draw_generator(x.device)
        perm = torch.randperm(x.shape[0], generator=g, device=x.device)
        return perm, sample_beta(self.alpha, x.shape[0], g, x.device)


class RandomPatchMix(_Mixer):
    """Random PatchMix (paper section 2.3): per sample ``lam_n ~ Beta(alpha, alpha)``, each of the ``P x P``
    cells comes from ``x[i]`` with probability ``lam_n``, the rest from ``x[perm[i]]``; the label weight is
    the realised pixel fraction. With probability ``1 - prob`` a sample is left unmixed (``lam = 1``).

    ``forward(x (B, C, H, W), y (B,)) -> MixedBatch`` with ``images (B, C, H, W)`` and ``mask (B, P, P)``.
    """

    def __init__(self, grid_size: int = 4, alpha: float = 1.0, prob: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(alpha, generator)
        if int(grid_size) != grid_size or grid_size < 1:
            raise ValueError(f"grid_size must be a positive integer, got {grid_size}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.grid_size = int(grid_size)
        self.prob = float(prob)

    def sample_masks(self, batch: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Random masks ``(batch, P, P)`` bool on ``device``, one Beta draw per sample (rows not mixed are all
        True). ``generator``: one on ``device`` (default: ``draw_generator(device)``)."""
        g = generator if generator is not None else self.draw_generator(device)
        P = self.grid_size
        lam = sample_beta(self.alpha, batch, g, device)
        mask = torch.rand(batch, P, P, generator=g, device=device) < lam[:, None, None]
        if self.prob < 1.0:
            keep = torch.rand(batch, generator=g, device=device) >= self.prob
            mask = mask | keep[:, None, None]
        return mask

    def forward(self, x: Tensor, y: Tensor) -> MixedBatch:
        _check_batch(x, y, floating=False)
        g = self.draw_generator(x.device)
        perm = torch.randperm(x.shape[0], generator=g, device=x.device)
        mask = self.sample_masks(x.shape[0], x.device, g)
        images, lam = grid_mix(x, mask, None, perm)  # indices in range by construction: nothing to read back
        return MixedBatch(images, y, y[perm], lam, mask)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, alpha={self.alpha}, prob={self.prob}"


class Mixup(_Mixer):
    """Mixup (Zhang et al.): ``images = lam * x + (1 - lam) * x[perm]`` with a per-sample ``lam ~ Beta``.

    ``forward(x (B, C, H, W) floating, y (B,)) -> MixedBatch`` (``mask`` is None).
    """

    def __init__(self, alpha: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(alpha, generator)

    def forward(self, x: Tensor, y: Tensor) -> MixedBatch:
        _check_batch(x, y, floating=True)
        perm, lam = self._perm_and_lam(x)
        w = lam.to(x.dtype)[:, None, None, None]
        images = x * w + x[perm] * (1 - w)
        return MixedBatch(images, y, y[perm], lam, None)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class CutMix(_Mixer):
    """CutMix (Yun et al.): a box of area ``(1 - lam0) * H * W`` (``lam0 ~ Beta``, per sample), centred
    uniformly and clipped to the image, is pasted from ``x[perm]``; ``lam`` is the exact remaining area.

    ``forward(x (B, C, H, W), y (B,)) -> MixedBatch`` (``mask`` is None).
    """

    def __init__(self, alpha: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(alpha, generator)

    def boxes(self, batch: int, height: int, width: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Clipped boxes ``(batch, 4)`` int64 on ``device`` as ``(top, bottom, left, right)``, bottom/right
        exclusive. ``generator``: one on ``device`` (default: ``draw_generator(device)``)."""
        g = generator if generator is not None else self.draw_generator(device)
        lam0 = sample_beta(self.alpha, batch, g, device).double()
        ratio = torch.sqrt(1.0 - lam0)
        cut_h = (height * ratio).long()
        cut_w = (width * ratio).long()
        cy = torch.randint(height, (batch,), generator=g, device=device)
        cx = torch.randint(width, (batch,), generator=g, device=device)
        top = (cy - cut_h // 2).clamp(0, height)
        bottom = (cy + cut_h // 2).clamp(0, height)
        left = (cx - cut_w // 2).clamp(0, width)
        right = (cx + cut_w // 2).clamp(0, width)
        return torch.stack([top, bottom, left, right], 1)

    def forward(self, x: Tensor, y: Tensor) -> MixedBatch:
        _check_batch(x, y, floating=False)
        B, _, H, W = x.shape
        g = self.draw_generator(x.device)
        perm = torch.randperm(B, generator=g, device=x.device)
        box = self.boxes(B, H, W, x.device, g)
        rows = torch.arange(H, device=x.device)
        cols = torch.arange(W, device=x.device)
        in_rows = (rows[None] >= box[:, 0:1]) & (rows[None] < box[:, 1:2])  # (B, H)
        in_cols = (cols[None] >= box[:, 2:3]) & (cols[None] < box[:, 3:4])  # (B, W)
        inside = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
        images = torch.where(inside[:, None], x[perm], x)
        area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
        lam = (1.0 - area.double() / (H * W)).to(torch.float32)
        return MixedBatch(images, y, y[perm], lam, None)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
