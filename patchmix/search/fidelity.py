"""Does the search's fitness rank policies as ``f_T`` does, and does the search find what ``f_T`` finds hard?
Both measured outside the proxy, with ``f_T`` run on composed validation images (:class:`ExactFitness`) on
draws of their own (independent of the draws any proxy was fitted on).

* **Fidelity**: the Spearman rank correlation between the search's fitness (the proxy) and the exact fitness
  over random policies built like the search's initial population, and over the distinct policies of its final
  population. The exact side is itself a mean over ``num_draws`` random draws, so even a perfect proxy cannot
  reach 1: the check also reports the **ceiling**, the correlation a perfect proxy would have with it,
  estimated from the exact fitness against itself on two halves of the draws (``exact_vs_exact``, Spearman of
  half against half, stepped up to the full count by the Spearman-Brown formula ``2 r / (1 + r)``, whose square
  root is the ceiling). A proxy's correlation is read against that ceiling, not against 1.
* **Efficacy**: the exact fitness of the chosen policy as a percentile among the random policies (0: lower
  than every one of them; with ``direction="min"``, "harder for ``f_T`` than every random policy"), and how
  many of its masks are uniform (every cell from one image: a sample barely mixed).

Cost: at most ``(random + final + 1) * N * num_draws`` forward passes of ``f_T``, fewer where policies share
slots or a class pair offers fewer distinct image pairs than draws (each distinct composition is scored once);
with the defaults (200 random policies, up to 32 final ones, 32 draws) about 150k composed images at ``N = 20``.
``forward_passes`` and ``seconds`` in the result say what it cost.

The draws and the ceiling: the check's exact fitness must be reliable enough that a proxy's correlation can be
read against :data:`GOAL`; a ceiling under :data:`MIN_CEILING` cannot, and the result says how many draws would
reach it (:func:`draws_for_ceiling`, docs/search.md, "What the search costs").
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from ..choices import DIRECTIONS, check_choice
from .cache import draw_pairs
from .exact import ExactFitness, rank_correlation
from .fitness import CachedFitness, random_population

#: The Spearman correlation (relative to the ceiling) above which a proxy is taken to rank policies as f_T does.
GOAL = 0.8
#: The ceiling below which the check cannot resolve a correlation of :data:`GOAL` from one a little below it: the
#: report asks for more draws (:func:`draws_for_ceiling`) when the ceiling falls under it.
MIN_CEILING = 0.9
#: A chosen policy within this percentile of the random policies (from the side the search aims at) is "markedly"
#: harder (or easier, when maximising) for f_T than random policies.
MARKED_PERCENTILE = 5.0


def unique_individuals(pairs: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct policies among ``pairs (I, N)``, ``masks (I, N, P, P)`` (slot order ignored), in first-seen
    order."""
    order = np.argsort(pairs, axis=1, kind="stable")
    p = np.take_along_axis(pairs, order, 1)
    m = np.take_along_axis(masks, order[:, :, None, None], 1)
    keys = [pi.tobytes() + mi.tobytes() for pi, mi in zip(p, m, strict=True)]
    first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    return pairs[first], masks[first]


def _spearman(x, y) -> float | None:
    rho = rank_correlation(x, y) if len(x) >= 3 else float("nan")
    return None if math.isnan(rho) else rho


def ceiling(per_draw: Tensor) -> dict:
    """How well any proxy can correlate with an exact fitness measured on these draws.

    ``per_draw (I, S)``: the exact fitness of ``I`` policies per draw. Returns ``{"exact_vs_exact"}`` (Spearman of
    the mean over the first half of the draws against the second half), ``"reliability"`` (stepped up to ``S``
    draws: ``2 r / (1 + r)``) and ``"ceiling"`` (its square root: the expected correlation of a perfect proxy
    with the ``S``-draw exact fitness); None where undefined (fewer than 2 draws or 3 policies, r <= 0)."""
    S = per_draw.shape[1]
    if S < 2 or per_draw.shape[0] < 3:
        return {"exact_vs_exact": None, "reliability": None, "ceiling": None}
    h = S // 2
    r = _spearman(per_draw[:, :h].mean(1).numpy(), per_draw[:, h:].mean(1).numpy())
    if r is None or r <= 0:
        return {"exact_vs_exact": r, "reliability": None, "ceiling": None}
    rel = 2 * r / (1 + r)
    return {"exact_vs_exact": r, "reliability": rel, "ceiling": math.sqrt(rel)}


def draws_for_ceiling(exact_vs_exact: float | None, num_draws: int, target: float = MIN_CEILING) -> int | None:
    """The check's draws per pair that give a ceiling of ``target``, predicted from a check with ``num_draws``
    draws whose halves correlated at ``exact_vs_exact`` (:func:`ceiling`).

    The half-against-half correlation ``r`` is the reliability of ``num_draws / 2`` draws; the Spearman-Brown
    formula gives one draw's, ``rho = r / (h - (h - 1) r)`` with ``h = num_draws / 2``, and the draws ``n`` that
    reach a reliability of ``target^2`` (the ceiling is its square root): ``n = t (1 - rho) / (rho (1 - t))``.
    None where undefined (``r`` missing or ``<= 0``); ``num_draws`` is returned when ``r`` is 1 (more draws add
    nothing)."""
    if exact_vs_exact is None or exact_vs_exact <= 0 or not 0 < target < 1:
        return None
    if exact_vs_exact >= 1:
        return num_draws
    h = num_draws / 2
    rho = exact_vs_exact / (h - (h - 1) * exact_vs_exact)
    t = target * target
    return max(2, math.ceil(t * (1 - rho) / (rho * (1 - t))))


def _compare(proxy: CachedFitness, pairs, masks, per_draw: Tensor) -> dict:
    pairs, masks = torch.as_tensor(pairs), torch.as_tensor(masks)
    c = proxy(pairs, masks).double().cpu().numpy()
    e = per_draw.mean(1).numpy()
    out = {"spearman": _spearman(c, e), "n": int(len(c)), "proxy": c.tolist(), "exact": e.tolist(),
           "proxy_std": float(c.std()), "exact_std": float(e.std())}
    out.update(ceiling(per_draw))
    return out


def efficacy_verdict(percentile: float, direction: str = "min") -> str:
    """One plain sentence on where the chosen policy's exact fitness lies among the random policies."""
    aim = "harder" if direction == "min" else "easier"
    beaten = percentile if direction == "min" else 100.0 - percentile  # % of random policies further in the aim
    if beaten <= MARKED_PERCENTILE:
        return f"the policy is {aim} for f_T than {100 - beaten:.0f}% of random policies: the search works"
    if beaten < 50.0:
        return (f"the policy is {aim} for f_T than {100 - beaten:.0f}% of random policies: better than chance, "
                f"not markedly")
    return (f"the policy is NOT {aim} for f_T than random policies ({beaten:.0f}% of them are {aim}): the search "
            f"optimises its proxy, not f_T")


def uniform_masks(masks: np.ndarray) -> int:
    """How many of ``masks (N, P, P)`` take every cell from one image."""
    flat = np.asarray(masks, dtype=bool).reshape(len(masks), -1)
    return int((flat.all(1) | ~flat.any(1)).sum())


def search_check(fitness: CachedFitness, model: nn.Module, images: Tensor, *, chosen: tuple, num_pairs: int,
                 final: list[dict] | None = None, same_class: str = "forced", direction: str = "min",
                 num_draws: int = 32, random_policies: int = 200, final_policies: int = 32, seed: int = 0,
                 batch_size: int = 256, device=None, precision: str = "float32", progress=None) -> dict:
    """Fidelity of ``fitness`` and efficacy of the ``chosen`` policy, against ``model`` (``f_T``).

    Args:
        fitness: the search's fitness (linear or interaction table); its cache's labels fix the check's draws.
        model, images: ``f_T`` and the cached validation images ``(V, C, H, W)`` (float in ``[0, 1]`` or uint8).
        chosen: ``(pairs (N,) int64 pair ids, masks (N, P, P) bool)``, the search's result.
        num_pairs, same_class: the search's settings (random policies are built like its initial population).
        final: e.g. ``[SearchResult.population, SearchResult.offspring]`` (each ``{"pairs", "masks", ...}``): up to
            ``final_policies`` of their distinct policies are checked too.
        direction: what the search aimed at (``min``: hard for ``f_T``).
        num_draws: validation pairs per class pair, drawn from ``seed`` (independent of the search's draws); a
            class pair that offers fewer distinct image pairs enumerates them (:func:`draw_pairs`).
        batch_size, precision: of the forward passes (:func:`patchmix.search.scoring.composed_scores`).
        progress: a callable ``(total=, desc=, unit=)`` returning a tqdm-like bar (e.g.
            :meth:`patchmix.training.Log.progress`), advanced by the composed images scored.

    The random, final and chosen policies are scored in one pass of ``f_T`` over their distinct compositions
    (:meth:`ExactFitness.per_draw`): a slot that several policies share, or a draw that repeats, costs one
    forward pass.

    Returns a dict (JSON-ready): ``draws``, ``table``, ``goal``, ``random`` and ``final`` (``spearman``, ``n``,
    ``proxy``, ``exact``, their standard deviations, ``exact_vs_exact``, ``reliability``, ``ceiling``; ``final`` is
    None without a final population), ``linear_spearman`` (the linear cache on the same random policies, for an
    interaction fitness), ``efficacy`` (``exact``, ``proxy``, ``percentile``, ``random_median/min/max``,
    ``uniform_masks``, ``masks``, ``direction``, ``verdict``), ``min_ceiling`` and ``draws_needed`` (the draws
    that reach it, :func:`draws_for_ceiling`), ``forward_passes`` and ``seconds``.
    """
    check_choice("direction", direction, DIRECTIONS)
    if num_draws < 2 or random_policies < 3:
        raise ValueError(f"search_check: num_draws must be >= 2 and random_policies >= 3, got {num_draws} and "
                         f"{random_policies}")
    t0 = time.perf_counter()
    draws = draw_pairs(fitness.cache.labels, fitness.num_classes, num_draws, seed)
    exact = ExactFitness(model, images, fitness, draws=draws, batch_size=batch_size, device=device,
                         precision=precision)
    out = {"draws": num_draws, "fitness": fitness.fitness_kind, "goal": GOAL}
    pairs, masks = random_population(random_policies, num_pairs, fitness, same_class, seed)
    groups = [(pairs, masks)]
    parts = [f for f in final or [] if len(f.get("pairs", ()))]
    if parts:
        p, m = unique_individuals(np.concatenate([f["pairs"] for f in parts]),
                                  np.concatenate([f["masks"] for f in parts]))
        if len(p) > final_policies:  # an even sample of the distinct policies
            keep = np.linspace(0, len(p) - 1, final_policies).round().astype(np.int64)
            p, m = p[keep], m[keep]
        groups.append((torch.as_tensor(p), torch.as_tensor(m)))
    cp = torch.as_tensor(np.asarray(chosen[0]), dtype=torch.int64)[None]
    cm = torch.as_tensor(np.asarray(chosen[1]), dtype=torch.bool)[None]
    groups.append((cp, cm))
    # one pass over every policy's compositions: slots the final population and the chosen policy share are
    # composed once
    per_draw = exact.per_draw(torch.cat([g[0] for g in groups]), torch.cat([g[1] for g in groups]),
                              progress=progress).split([len(g[0]) for g in groups])
    out["random"] = _compare(fitness, pairs, masks, per_draw[0])
    out["linear_spearman"] = None
    if fitness.fitness_kind != "linear":
        linear = CachedFitness(fitness.cache, num_draws=fitness.num_draws, objective=fitness.objective,
                               image_weight=fitness.image_weight, seed=fitness.seed)
        out["linear_spearman"] = _spearman(linear(pairs, masks).double().numpy(), np.asarray(out["random"]["exact"]))
    out["final"] = _compare(fitness, *groups[1], per_draw[1]) if parts else None
    value = float(per_draw[-1].mean())
    rand = np.asarray(out["random"]["exact"])
    percentile = float(100.0 * (rand < value).mean() + 50.0 * (rand == value).mean())
    out["efficacy"] = {"exact": value, "proxy": float(fitness(cp, cm)[0]), "percentile": percentile,
                       "random_median": float(np.median(rand)), "random_min": float(rand.min()),
                       "random_max": float(rand.max()), "uniform_masks": uniform_masks(chosen[1]),
                       "masks": int(len(chosen[1])), "direction": direction,
                       "verdict": efficacy_verdict(percentile, direction)}
    out["min_ceiling"] = MIN_CEILING
    out["draws_needed"] = draws_for_ceiling(out["random"]["exact_vs_exact"], num_draws)
    out["forward_passes"] = exact.forward_passes
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


__all__ = ["GOAL", "MARKED_PERCENTILE", "MIN_CEILING", "ceiling", "draws_for_ceiling", "efficacy_verdict", "search_check", "uniform_masks",
           "unique_individuals"]
