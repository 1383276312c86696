"""``patchmix.Mix`` in ``"batch"`` mode (one method and one ``lam`` per batch) against timm-style per-batch mixing
written in eager torch (``eager``: timm's ``Mixup._mix_batch``, numpy draws, in-place ops on the input), per
batch, on the CPU. ``elem`` is ``Mix`` in ``"elem"`` mode (per-sample draws, vectorised), for scale.

Target: ``patchmix`` costs no more per batch than ``eager`` (ratio ``x eager`` >= 1.0 in the table,
both measured in the same run). Both do the same pixel work; ``eager`` mutates its input, ``patchmix`` writes a
new batch (the input may be a view of a dataset, a pinned buffer, another view of the same images).

    ./dev bench -k bench_mix                 # the pytest-benchmark ratio table
    .venv/bin/python bench/bench_mix.py      # interleaved rounds (one call of each per round): medians, ratios

One torch thread: on the shared 2-core machine OpenMP's second thread waits on a busy core (one multiply of a
256x3x32x32 float32 batch: 7.7 ms with two threads against 0.27 ms with one, measured while other jobs ran).
"""

import numpy as np
import pytest
import torch

from patchmix import Mix

SHAPES = [  # (B, C, H, W, dtype)
    (256, 3, 32, 32, torch.float32),
    (256, 3, 32, 32, torch.uint8),
    (64, 3, 224, 224, torch.float32),
]
PROVIDERS = ["patchmix", "eager", "elem"]
METHODS = ["mixup", "cutmix"]


def one_hot(x, num_classes, on_value=1.0, off_value=0.0):
    return torch.full((x.shape[0], num_classes), off_value, device=x.device).scatter_(1, x.long().view(-1, 1), on_value)


def mixup_target(target, num_classes, lam=1.0, smoothing=0.0):
    """timm's ``mixup_target``: the dense (B, K) target of the flip-paired batch."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return one_hot(target, num_classes, on, off) * lam + one_hot(target.flip(0), num_classes, on, off) * (1.0 - lam)


class TimmStyleBatchMix:
    """timm's ``Mixup.__call__`` with ``mode="batch"`` as written there (numpy draws, flip pairing, in-place blend,
    the dense target by ``mixup_target``), on a float batch; uint8 batches blend in float and round as timm's
    ``FastCollateMixup`` does. ``Mix`` returns its labels as ``(target_a, target_b, lam)`` instead of a dense
    target, which its loss reads directly."""

    def __init__(self, method: str, alpha: float = 1.0, seed: int = 0, num_classes: int = 10):
        self.method, self.alpha, self.rng = method, alpha, np.random.default_rng(seed)
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        lam = float(self.rng.beta(self.alpha, self.alpha))
        if self.method == "cutmix":
            H, W = x.shape[-2:]
            ratio = np.sqrt(1 - lam)
            ch, cw = int(H * ratio), int(W * ratio)
            cy, cx = self.rng.integers(0, H), self.rng.integers(0, W)
            yl, yh = np.clip(cy - ch // 2, 0, H), np.clip(cy + (ch + 1) // 2, 0, H)  # timm 1.0's rand_bbox
            xl, xh = np.clip(cx - cw // 2, 0, W), np.clip(cx + (cw + 1) // 2, 0, W)
            x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
            lam = 1.0 - (yh - yl) * (xh - xl) / float(H * W)
        elif x.is_floating_point():
            x_flipped = x.flip(0).mul_(1.0 - lam)
            x.mul_(lam).add_(x_flipped)
        else:
            x = torch.round(x.float() * lam + x.flip(0).float() * (1.0 - lam)).to(torch.uint8)
        return x, mixup_target(y, self.num_classes, lam, 0.1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(shape):
    B, C, H, W, dtype = shape
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, C, H, W, generator=g) * 255).to(dtype)
    return x, torch.randint(0, 10, (B,), generator=g)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}x{s[3]}-{str(s[4])[6:]}")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_mix_batch(benchmark, provider, shape, method):
    x, y = make(shape)
    alphas = {"mixup_alpha": 1.0 if method == "mixup" else 0.0, "cutmix_alpha": 1.0 if method == "cutmix" else 0.0}
    if provider == "eager":
        fn = TimmStyleBatchMix(method)
        run = lambda: fn(x, y)  # noqa: E731 - in place, like timm
    else:
        mix = Mix(**alphas, mode="batch" if provider == "patchmix" else "elem", pairing="flip",
                  generator=torch.Generator().manual_seed(0))
        run = lambda: mix(x, y)  # noqa: E731
    run()  # warm-up
    benchmark.group = f"mix {method} cpu {shape[0]}x{shape[1]}x{shape[2]}x{shape[3]} {str(shape[4])[6:]}"
    benchmark(run)


def main(rounds: int = 300) -> None:
    """Interleaved rounds (``patchmix`` then ``eager``, each on its own copy of the batch), medians per batch."""
    import statistics
    import time

    torch.set_num_threads(1)
    for shape in SHAPES:
        for method in METHODS:
            x, y = make(shape)
            xe = x.clone()
            alphas = {"mixup_alpha": 1.0 if method == "mixup" else 0.0,
                      "cutmix_alpha": 1.0 if method == "cutmix" else 0.0}
            mix = Mix(**alphas, mode="batch", pairing="flip", generator=torch.Generator().manual_seed(0))
            eager = TimmStyleBatchMix(method)
            times = {"patchmix": [], "eager": []}
            n = rounds if shape[2] <= 32 else max(rounds // 20, 5)
            for k in range(n + 5):
                t0 = time.perf_counter()
                mix(x, y)
                t1 = time.perf_counter()
                eager(xe, y)
                t2 = time.perf_counter()
                if k >= 5:
                    times["patchmix"].append(t1 - t0)
                    times["eager"].append(t2 - t1)
            p, e = (statistics.median(times[k]) * 1e3 for k in ("patchmix", "eager"))
            name = f"{shape[0]}x{shape[1]}x{shape[2]}x{shape[3]} {str(shape[4])[6:]}"
            print(f"{method:<7} {name:<22} Mix batch {p:8.3f} ms   timm-style eager {e:8.3f} ms   x eager {e / p:5.2f}")


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
