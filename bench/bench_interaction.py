"""The interaction-aware fitness at CIFAR-100 scale: what its build costs and how faithful it stays as the build
is made cheaper, with a synthetic ``f_T`` whose cells interact (no trained CIFAR-100 model fits this machine).

The synthetic ``f_T`` (:class:`patchmix.search.synthetic.InteractingCells`): ``K`` classes, each a random template image; validation images
are their class's template plus noise. A cell's own evidence for class ``c`` is its pixels' match with class
``c``'s template over that cell; its patch logits add ``beta`` times a distance-weighted mean of the *other*
cells' evidence (the receptive field of a CNN, in one line), so a cell's score depends on which other cells come
from the other image, by an amount that depends on the classes and the distance. Its image logits are the mean of
the patch logits. Images are 16x16 greyscale (4x4-pixel cells) so that a forward pass costs only
``P^2 * K * C * cell^2`` multiply-adds (26k at K = 100) and ten million of them fit this 2-core machine: the
build time measured here is the build's own overhead (composing, scoring, fitting); a real ``f_T``'s forward
passes come on top (``forward_passes`` / its throughput: docs/search.md).

Rows: ``K = 100`` (``Q = 5050`` pairs), ``P = 4``, 100 validation images per class, ``N = 200``; builds with
``(S, M)`` = (32, 64), (16, 16), (8, 16), (8, 8), (4, 8) draws x masks per draw. ``extra_info``: ``forward_passes``,
``build_s``, ``spearman`` over 200 random policies against the exact fitness on 32 independent draws, its
``ceiling``, and the linear cache's ``spearman`` for comparison.

Under ``--benchmark-disable`` (CI) one toy row (``K = 6``) runs once, in seconds. The table:
``python -m bench.bench_interaction`` (or ``./dev bench -k interaction``).
"""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch

from patchmix.search import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    build_interaction_table,
    draw_pairs,
    pair_classes,
    random_population,
)
from patchmix.search.exact import rank_correlation
from patchmix.search.fidelity import ceiling
from patchmix.search.synthetic import InteractingCells, synthetic_validation

SCALES = {"cifar100": dict(K=100, per_class=100, N=200), "toy": dict(K=6, per_class=8, N=8)}
BUILDS = [(32, 64), (16, 16), (8, 16), (8, 8), (4, 8)]


def measure(scale: str, builds, policies: int = 200, exact_draws: int = 32, seed: int = 0) -> list[dict]:
    """One row per ``(S, M)``: build cost and fidelity (module docstring)."""
    sc = SCALES[scale]
    K, N = sc["K"], sc["N"]
    model = InteractingCells(K).eval()
    images, labels = synthetic_validation(model, sc["per_class"])
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32, batch_size=1024)
    probe = CachedFitness(cache, num_draws=2, seed=seed)
    pairs, masks = random_population(policies, N, probe, "forced", seed=seed + 1)
    exact = ExactFitness(model, images, probe, draws=draw_pairs(labels, K, exact_draws, seed + 2), batch_size=4096)
    per_draw = exact.per_draw(pairs, masks)
    e = per_draw.mean(1).numpy()
    ceil = ceiling(per_draw)["ceiling"]
    rows = []
    for S, M in builds:
        linear = CachedFitness(cache, num_draws=S, seed=seed)
        t0 = time.perf_counter()
        table, stats = build_interaction_table(model, images, linear.draws, pair_classes(K), model.P,
                                               masks_per_draw=M, ridge=10.0, seed=seed, batch_size=4096)
        build_s = time.perf_counter() - t0
        inter = CachedFitness(cache, num_draws=S, seed=seed, table=table)
        rows.append({"scale": scale, "S": S, "M": M, "forward_passes": stats["forward_passes"],
                     "build_s": round(build_s, 2), "r2": round(stats["r2"], 3),
                     "spearman": round(rank_correlation(inter(pairs, masks).numpy(), e), 3),
                     "ceiling": None if ceil is None else round(ceil, 3),
                     "linear_spearman": round(rank_correlation(linear(pairs, masks).numpy(), e), 3),
                     "table_mb": round(table.numel() * 8 / 2**20, 1)})
    return rows


@pytest.mark.parametrize("scale", ["cifar100"])
def test_interaction_build(benchmark, scale):
    if benchmark.disabled:
        scale, builds, policies = "toy", [(4, 4)], 10
    else:
        builds, policies = BUILDS, 200
    rows = []
    benchmark.pedantic(lambda: rows.extend(measure(scale, builds, policies)), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    for r in rows:
        assert r["forward_passes"] == math.prod((SCALES[scale]["K"] * (SCALES[scale]["K"] + 1) // 2, r["S"], r["M"]))


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    for row in measure("cifar100", BUILDS):
        print(row, flush=True)


@pytest.mark.parametrize("model", ["small_resnet", "resnet32"])
def test_search_forward_throughput(benchmark, model):
    """Images per second of the search's forward passes, plain float32 against ``search.precision`` (rows of
    ``bench/search_throughput.py`` in ``extra_info``; one thread)."""
    from bench.search_throughput import measure

    count, seconds = (64, 0.0) if benchmark.disabled else (2048, 1.0)
    rows = []
    benchmark.pedantic(lambda: rows.extend(measure(model, 1, count=count, min_seconds=seconds)), rounds=1,
                       iterations=1)
    benchmark.extra_info["rows"] = rows
    assert [r["variant"] for r in rows] == ["plain", "float32", "auto"] and all(r["images_per_s"] > 0 for r in rows)
