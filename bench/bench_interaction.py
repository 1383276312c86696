"""The interaction-aware fitness at CIFAR-100 scale: what its build costs and how faithful it stays as the build
is made cheaper, with a synthetic ``f_T`` whose cells interact (no trained CIFAR-100 model fits this machine).

The synthetic ``f_T`` (:class:`InteractingCells`): ``K`` classes, each a random template image; validation images
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
from torch import nn

from patchmix.search import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    build_interaction_table,
    draw_pairs,
    pair_classes,
    random_population,
    rank_correlation,
)
from patchmix.search.fidelity import ceiling


class InteractingCells(nn.Module):
    """A synthetic ``f_T`` (module docstring): ``forward(x (B, C, H, W)) -> (image_logits (B, K), patch_logits
    (B, K, P, P))``."""

    def __init__(self, num_classes: int, grid_size: int = 4, size: int = 16, channels: int = 1, beta: float = 1.5,
                 length: float = 1.0, scale: float = 6.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.P, self.cell = grid_size, size // grid_size
        self.templates = nn.Parameter(torch.rand(num_classes, channels, size, size, generator=g), requires_grad=False)
        ij = torch.cartesian_prod(torch.arange(grid_size), torch.arange(grid_size)).double()
        dist = torch.cdist(ij, ij)
        weight = torch.exp(-dist / length) * (1 - torch.eye(grid_size ** 2, dtype=torch.float64))
        self.register_buffer("spread", (beta * weight / weight.sum(1, keepdim=True)).float())  # (PP, PP)
        self.scale = scale

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, PP, C * cell^2)``, row-major cells."""
        c = self.cell
        return nn.functional.unfold(x, c, stride=c).transpose(1, 2)

    def forward(self, x):
        cells = self.cells(x)  # (B, PP, D)
        t = self.cells(self.templates)  # (K, PP, D)
        # evidence: minus the mean squared distance to each class's template over the cell
        own = -self.scale * (cells.pow(2).mean(-1)[:, :, None] - 2 * torch.einsum("bnd,knd->bnk", cells, t) / t.shape[-1]
                             + t.pow(2).mean(-1).T[None])  # (B, PP, K)
        patch = own + torch.einsum("nm,bmk->bnk", self.spread, own)
        P = self.P
        return patch.mean(1), patch.transpose(1, 2).reshape(x.shape[0], -1, P, P)


def synthetic_validation(model: InteractingCells, per_class: int, noise: float = 0.35, seed: int = 1):
    """``per_class`` images of every class: its template plus uniform noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    K = model.templates.shape[0]
    labels = torch.arange(K).repeat_interleave(per_class)
    images = model.templates.data[labels] + noise * (torch.rand(labels.numel(), *model.templates.shape[1:],
                                                                generator=g) - 0.5)
    return images.clamp(0, 1), labels


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
