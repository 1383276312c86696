"""Mixing in DataLoader workers: batches per second of a ``DataLoader`` with 2 workers over uint8 CIFAR-size images
(256 per batch), with ``MixCollate(mixer)`` against the same loader without mixing (``plain``:
``default_collate``).

Target: mixing in the workers adds at most 5% to the time per batch (``x floor`` <= 1.05 for
``patchmix``, ``mixup`` and ``cutmix``; ``plain`` is the floor), measured in the same run. The loader
is iterated whole per round; the table's time is per epoch of ``BATCHES`` batches.

    ./dev bench -k bench_collate                        # the pytest-benchmark ratio table (elem mode)
    .venv/bin/python bench/bench_collate.py 7 batch     # interleaved epochs: batches/s, CPU ms per batch, ratios
    .venv/bin/python bench/bench_collate.py 7 elem

On the shared 2-core machine the loader (2 workers + the main process) is CPU-bound, so the script also reports
CPU time per batch (main process + workers, from /proc), which other jobs disturb far less than wall time.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

try:  # under pytest the benchmark conftest sets the Triton interpreter rule before patchmix is imported
    import tests.conftest  # noqa: F401
except ImportError:  # run as a script
    pass

from patchmix import Mix, MixCollate  # noqa: E402

BATCH, BATCHES, WORKERS = 256, 64, 2
PROVIDERS = ["plain", "patchmix", "mixup", "cutmix"]


def make_collate(provider: str, mode: str = "elem"):
    if provider == "plain":  # the loader without mixing: default_collate stacks straight into shared memory
        return default_collate
    alphas = {"patchmix": dict(mixup_alpha=0.0, patchmix_alpha=1.0), "mixup": dict(mixup_alpha=1.0),
              "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0)}[provider]
    return MixCollate(Mix(**alphas, mode=mode, label_smoothing=0.0), seed=0)


def make_loader(provider: str, workers: int = WORKERS, mode: str = "elem") -> DataLoader:
    g = torch.Generator().manual_seed(0)
    n = BATCH * BATCHES
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    dataset = TensorDataset(images, torch.randint(0, 10, (n,), generator=g))
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=make_collate(provider, mode), num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(1))


def epoch(loader: DataLoader) -> int:
    n = 0
    for _ in loader:
        n += 1
    return n


@pytest.mark.parametrize("provider", PROVIDERS)
def test_collate(benchmark, provider):
    loader = make_loader(provider)
    assert epoch(loader) == BATCHES  # warm-up: workers started, pages touched
    benchmark.group = f"collate {WORKERS} workers {BATCH}x3x32x32 uint8, {BATCHES} batches"
    benchmark.pedantic(epoch, args=(loader,), rounds=3 if not benchmark.disabled else 1, iterations=1)


def worker_cpu_seconds(loader: DataLoader) -> float:
    """CPU seconds used so far by the loader's (persistent) worker processes, from /proc (Linux)."""
    total = 0.0
    for w in loader._iterator._workers:  # noqa: SLF001 - a benchmark's look inside
        with open(f"/proc/{w.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main(rounds: int = 7, mode: str = "elem") -> None:
    """Interleaved epochs (every provider once per round, the order rotating), medians of wall time and of CPU time
    (main process + workers) per batch, and their ratios to ``plain``. With 2 workers and the main process on a
    2-core machine the loader is CPU-bound, so CPU time per batch predicts throughput, and it is far less
    disturbed than wall time by other jobs sharing the machine."""
    loaders = {p: make_loader(p, mode=mode) for p in PROVIDERS}
    wall = {p: [] for p in PROVIDERS}
    cpu = {p: [] for p in PROVIDERS}
    for p in PROVIDERS:
        epoch(loaders[p])
    for r in range(rounds):
        for p in PROVIDERS[r % len(PROVIDERS):] + PROVIDERS[:r % len(PROVIDERS)]:
            c0, w0, t0 = time.process_time(), worker_cpu_seconds(loaders[p]), time.perf_counter()
            epoch(loaders[p])
            wall[p].append(time.perf_counter() - t0)
            cpu[p].append(time.process_time() - c0 + worker_cpu_seconds(loaders[p]) - w0)
    floor_wall, floor_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    print(f"{BATCH} uint8 3x32x32 images per batch, {WORKERS} workers, Mix mode {mode!r}, {rounds} rounds of {BATCHES} batches")
    for p in PROVIDERS:
        t, c = statistics.median(wall[p]), statistics.median(cpu[p])
        print(f"{p:<9} {BATCHES / t:7.1f} batches/s (x plain {t / floor_wall:5.3f})   "
              f"CPU {1e3 * c / BATCHES:6.3f} ms/batch (x plain {c / floor_cpu:5.3f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7, sys.argv[2] if len(sys.argv) > 2 else "elem")
