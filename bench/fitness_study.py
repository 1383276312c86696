"""How the search's fitness was chosen: every candidate fitness measured against a trained ``f_T`` itself.

    python -m bench.fitness_study CHECKPOINT [--threads 1] [--quick] [--out study.json]

``CHECKPOINT``: a Random PatchMix model (phase one's ``f_T``, e.g. ``runs/mnist5k/checkpoints/random-seed0.pt``);
its own configuration gives the dataset, the grid and the search's settings (``N``, same-class pairs, population,
generations). For each candidate fitness:

* **fidelity**: Spearman correlation with the exact fitness (``f_T`` on the composed images) over 200 random
  policies built like the search's, on 32 draws independent of every fitness's draws; the ceiling (a perfect
  fitness against this exact side) is printed once;
* **efficacy**: the search run on it (the GA with the checkpoint's search settings, and for interaction tables
  the exhaustive optimum), then its policy's exact fitness, percentile among the random policies (0: harder for
  ``f_T`` than all of them) and uniform masks.

Candidates: the linear cache (each cell scored on its unmixed source), a linear table fitted on composed images
(the interaction fit with every coefficient shrunk away), and the interaction table with each mask distribution,
ridge penalty and masks per draw (``--quick``: ridge 10 only). The compositions (``Q * 32 * 64`` per mask
distribution) are scored once and every candidate is fitted on a subset of them. Measured results and the choice
they led to: docs/search.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from patchmix import data as data_mod
from patchmix.search import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    draw_pairs,
    random_population,
    search,
)
from patchmix.search.exact import rank_correlation
from patchmix.search.fidelity import ceiling, uniform_masks
from patchmix.search.interaction import fit_interactions, score_compositions
from patchmix.search.pairs import pair_classes
from patchmix.training import model_from_checkpoint

DRAWS, MASKS, EXACT_DRAWS, POLICIES = 32, 64, 32, 200


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="ridge 10 only")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, cfg, _ = model_from_checkpoint(args.checkpoint)
    net.eval()
    ds = data_mod.from_config(cfg)
    images, labels = ds.val.get(torch.arange(len(ds.val)))  # uint8 (V, C, H, W)
    P, K, s = cfg.model.grid_size, ds.num_classes, cfg.search
    N = s.resolved_pairs(K)
    cache = CachedLogits.from_model(net, data_mod.to_float(images, "cpu"), labels, grid_size=P)
    linear = CachedFitness(cache, num_draws=DRAWS, seed=1)
    t0 = time.perf_counter()
    exact = ExactFitness(net, images, linear, draws=draw_pairs(labels, K, EXACT_DRAWS, 12345), batch_size=512)
    pairs, masks = random_population(POLICIES, N, linear, s.same_class, seed=99)
    per_draw = exact.per_draw(pairs, masks)
    e = per_draw.mean(1).numpy()
    print(f"exact fitness of {POLICIES} random policies ({time.perf_counter() - t0:.0f} s): median {np.median(e):.4f}, "
          f"min {e.min():.4f}, max {e.max():.4f}; ceiling {ceiling(per_draw)}", flush=True)
    rows = []

    def evaluate(name: str, fitness: CachedFitness, build: dict | None = None) -> None:
        row = {"fitness": name, **(build or {})}
        row["spearman"] = round(rank_correlation(fitness(pairs, masks).numpy(), e), 3)
        kw = dict(fitness=fitness.fitness_kind, num_draws=fitness.num_draws, seed=0, progress=False)
        results = {"ga": search(fitness, s, **kw)}
        if fitness.fitness_kind == "interaction" and P <= 4:
            results["optimum"] = search(fitness, s, solver="exhaustive", **kw)
        for key, r in results.items():
            value = float(exact(torch.from_numpy(r.best_pairs)[None], torch.from_numpy(r.best_masks)[None])[0])
            row.update({f"{key}_exact": round(value, 4), f"{key}_percentile": float(100 * (e < value).mean()),
                        f"{key}_uniform_masks": uniform_masks(r.best_masks), f"{key}_seconds": round(r.time_total, 1)})
        rows.append(row)
        print(json.dumps(row), flush=True)

    evaluate("linear (unmixed)", linear)
    classes = pair_classes(K)
    for dist in ("half", "spread"):
        t0 = time.perf_counter()
        bits, y = score_compositions(net, images, linear.draws, classes, P, range(linear.num_pairs),
                                     masks_per_draw=MASKS, distribution=dist, seed=7)
        print(f"{dist}: {bits.shape[0] * bits.shape[1]} compositions scored in {time.perf_counter() - t0:.0f} s",
              flush=True)
        evaluate(f"linear (composed, {dist})", CachedFitness(cache, num_draws=DRAWS, seed=1,
                                                             table=fit_interactions(bits, y, 1e9)))
        for ridge in (10.0,) if args.quick else (1.0, 10.0, 100.0):
            for m in (16, 32, 64):
                keep = torch.arange(DRAWS * MASKS).reshape(DRAWS, MASKS)[:, :m].reshape(-1)
                table = fit_interactions(bits[:, keep], y[:, keep], ridge)
                evaluate("interaction", CachedFitness(cache, num_draws=DRAWS, seed=1, table=table),
                         {"distribution": dist, "ridge": ridge, "masks_per_draw": m})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
