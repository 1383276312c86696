"""Images per second of the guided search's forward passes (``f_T`` on composed validation images,
:func:`patchmix.search.scoring.composed_scores`), with the settings the search uses against the plain ones.

Rows: per model (``small_resnet`` 1x32x32 and ``resnet32`` 3x32x32 at ``P = 4``, ``small_cnn`` 1x8x8 as in the
digits demo; 10 classes, random weights: throughput does not depend on them) and per thread count:

* ``plain``: float32 under ``torch.no_grad`` (the loop before these choices were measured);
* ``float32``: :func:`composed_scores` with ``precision = float32`` (``inference_mode``);
* ``auto``: :func:`composed_scores` with ``search.precision = auto``: bfloat16 autocast and channels_last input
  where the CPU computes bfloat16 natively, float32 elsewhere (the row's ``dtype`` says which).

All at 256 compositions per pass (512 measured slower on this CPU).

Each row also gives the largest difference of the cell scores from ``plain``'s (the bfloat16 rows' cost in
precision; docs/search.md measures what it does to the search's fidelity).

``python -m bench.search_throughput [threads ...]`` (default: 1 2) prints one line per row; the pytest-benchmark
case in ``bench/bench_interaction.py`` records the same rows.
"""

from __future__ import annotations

import sys
import time

import torch

from patchmix.models import create_model
from patchmix.ops import grid_mix
from patchmix.search.scoring import as_model_input, autocast_dtype, composed_scores, split_outputs

MODELS = {"small_resnet": (1, 32), "resnet32": (3, 32), "small_cnn": (1, 8)}
VARIANTS = ("plain", "float32", "auto")


def problem(name: str, count: int, seed: int = 0, device: str = "cpu"):
    """``f_T`` (eval, on ``device``) and ``count`` compositions of a random uint8 validation split (on ``device``):
    the arguments of :func:`composed_scores` after the model."""
    channels, side = MODELS[name]
    torch.manual_seed(seed)
    model = create_model(name, 10, grid_size=4, in_channels=channels).eval().to(device)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (100, channels, side, side), dtype=torch.uint8, generator=g)
    a, b = torch.randint(0, 100, (2, count), generator=g)
    masks = torch.rand(count, 4, 4, generator=g) < 0.5
    ca, cb = a % 10, b % 10
    return model, tuple(t.to(device) for t in (images, a, b, masks, ca, cb))


@torch.no_grad()
def plain_scores(model, images, a, b, masks, ca, cb, batch_size: int = 256):
    """The plain loop: float32, contiguous input, ``no_grad``; the cell log-probabilities ``(R, P*P)``."""
    out = []
    for s in range(0, len(a), batch_size):
        sl = slice(s, s + batch_size)
        x, _ = grid_mix(images, masks[sl], a[sl], b[sl])
        patch = split_outputs(model(as_model_input(x)), 4, "plain_scores").double()
        target = torch.where(masks[sl].reshape(-1, 16), ca[sl, None], cb[sl, None])
        out.append(torch.log_softmax(patch, -1).gather(-1, target[..., None])[..., 0])
    return torch.cat(out)


def measure(name: str, threads: int, count: int = 2048, min_seconds: float = 1.0, device: str = "cpu") -> list[dict]:
    """One row per variant: images per second (the best of repeated passes over ``count`` compositions, at least
    ``min_seconds`` each variant; the scores come back to the host, so a device's work is finished) and the largest
    score difference from the plain variant."""
    torch.set_num_threads(threads)
    model, args = problem(name, count, device=device)
    ref = plain_scores(model, *args).cpu()
    rows = []
    for variant in VARIANTS:
        def run(v=variant):
            if v == "plain":
                return plain_scores(model, *args).cpu()
            return composed_scores(model, *args, precision="float32" if v == "float32" else "auto")[0]

        scores = run()  # warm-up (oneDNN's kernels, the autocast's weight casts)
        best, spent = float("inf"), 0.0
        while spent < min_seconds or best == float("inf"):
            t = time.perf_counter()
            run()
            dt = time.perf_counter() - t
            best, spent = min(best, dt), spent + dt
        rows.append({"model": name, "device": device, "threads": threads, "variant": variant,
                     "dtype": "bfloat16" if variant == "auto" and autocast_dtype("auto", device) else "float32",
                     "images_per_s": round(count / best, 1), "max_abs_diff": float((scores - ref).abs().max())})
    return rows


if __name__ == "__main__":
    for threads in [int(t) for t in sys.argv[1:]] or [1, 2]:
        for name in MODELS:
            for row in measure(name, threads):
                print(row, flush=True)
