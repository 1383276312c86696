"""patchmix.search: cache, cached vs exact fitness, closed-form optimum, DEAP operators, reproducibility,
checkpoint/resume after a kill, early stop, policy files."""

import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import patchmix
from patchmix.search import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    Policy,
    PolicyError,
    pair_classes,
    pair_id,
    search,
)
from patchmix.search.exact import fitness_rank_correlation, rank_correlation
from patchmix.search.genetic import individual_class
from patchmix.search.operators import Genome, crossover, flip_heads, flip_tails, random_tails, transpose
from patchmix.search.pairs import slot_pools
from patchmix.search.synthetic import synthetic_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyPatchModel(nn.Module):
    """Per-cell linear classifier (a conv with kernel = stride = cell size): patch logits depend only on the
    patch's own pixels and image logits are their mean, so the cached fitness equals the exact one."""

    def __init__(self, num_classes=4, grid_size=2, cell=4, layout="kpp"):
        super().__init__()
        self.grid_size, self.layout = grid_size, layout
        self.conv = nn.Conv2d(3, num_classes, cell, stride=cell)

    def forward(self, x):
        patch = self.conv(x)  # (N, K, P, P)
        image = patch.mean((2, 3))
        if self.layout == "pk":
            patch = patch.flatten(2).transpose(1, 2)  # (N, P*P, K)
        return image, patch


def tiny_data(K=4, per_class=5, P=2, cell=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(per_class)
    images = torch.randn(labels.numel(), 3, P * cell, P * cell, generator=g)
    images += labels[:, None, None, None].float() * 0.3  # classes differ a little
    return images, labels


# -------------------------------------------------------------------------------------------------
# cache and fitness
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["kpp", "pk"])
def test_cached_logits_from_model_layouts_and_dtype(layout):
    torch.manual_seed(0)
    model = TinyPatchModel(layout=layout)
    images, labels = tiny_data()
    cache = CachedLogits.from_model(model, images, labels, batch_size=7)
    assert cache.logits.shape == (20, 4, 4) and cache.logits.dtype == torch.float16
    assert cache.grid_size == 2 and torch.equal(cache.labels, labels)
    assert cache.nbytes == 20 * 4 * 4 * 2 + 20 * 8
    _, patch = TinyPatchModel.forward(model, images[:3]) if layout == "kpp" else (None, None)
    if layout == "kpp":  # row-major patches: cache[v, r * P + c] = patch[v, :, r, c]
        torch.testing.assert_close(cache.logits[:3, 1].float(), patch[:, :, 0, 1].detach(), atol=1e-2, rtol=1e-2)
    c32 = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    assert c32.logits.dtype == torch.float32
    loader = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    assert torch.equal(CachedLogits.from_model(model, loader).logits, cache.logits)
    with pytest.raises(ValueError, match="expected grid_size = 4"):
        CachedLogits.from_model(model, images, labels, grid_size=4)
    assert model.training  # mode restored


def test_cached_fitness_draws_and_table_match_exact_reference():
    cache = synthetic_cache(5, per_class=6, grid_size=3, seed=1, dtype=torch.float32)
    for objective, w in [("logprob", 0.0), ("accuracy", 0.0), ("logprob", 0.8)]:
        f = CachedFitness(cache, num_draws=4, objective=objective, image_weight=w, seed=3)
        cls = f.classes
        assert f.draws.shape == (15, 4, 2)
        # a of class c_i, b of class c_j
        assert torch.equal(cache.labels[f.draws[..., 0]], cls[:, 0, None].expand(-1, 4))
        assert torch.equal(cache.labels[f.draws[..., 1]], cls[:, 1, None].expand(-1, 4))
        g = torch.Generator().manual_seed(0)
        pairs = torch.randint(0, 15, (6, 5), generator=g)
        pairs[0, 1] = -1
        masks = torch.rand(6, 5, 3, 3, generator=g) < 0.5
        torch.testing.assert_close(f(pairs, masks), f.exact_reference(pairs, masks), rtol=1e-9, atol=1e-9)
    same = CachedFitness(cache, num_draws=4, seed=3)
    other = CachedFitness(cache, num_draws=4, seed=4)
    assert torch.equal(same.draws, CachedFitness(cache, num_draws=4, seed=3).draws)
    assert not torch.equal(same.draws, other.draws)


def test_pair_ids():
    cls = pair_classes(6)
    assert cls.shape == (21, 2) and (cls[:, 0] <= cls[:, 1]).all()
    for q, (i, j) in enumerate(cls.tolist()):
        assert pair_id(i, j, 6) == q and pair_id(j, i, 6) == q


def test_exact_fitness_equals_cached_for_a_per_patch_model():
    torch.manual_seed(0)
    model = TinyPatchModel(num_classes=4, grid_size=2)
    images, labels = tiny_data(K=4, per_class=5)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    for w in (0.0, 0.5):
        f = CachedFitness(cache, num_draws=3, image_weight=w, seed=0)
        exact = ExactFitness(model, images, f, batch_size=13)
        res = fitness_rank_correlation(f, exact, population_size=12, num_pairs=5, seed=1)
        np.testing.assert_allclose(res["cached"], res["exact"], rtol=1e-4, atol=1e-4)
        assert res["spearman"] == pytest.approx(1.0)


def test_unique_individuals_ignores_slot_order():
    """One policy is one policy whatever the order of its slots; a population of copies has one."""
    from patchmix.search.fidelity import unique_individuals

    f = CachedFitness(synthetic_cache(4, per_class=3, grid_size=2, seed=0), num_draws=2)
    r = search(f, population=12, generations=2, num_pairs=6, seed=0, progress=False, patience=None)
    p, m = r.population["pairs"][:1], r.population["masks"][:1]
    perm = np.random.default_rng(0).permutation(6)
    same = unique_individuals(np.concatenate([p, p, p[:, perm]]), np.concatenate([m, m, m[:, perm]]))
    assert len(same[0]) == 1
    two = unique_individuals(np.concatenate([p, r.population["pairs"][1:2]]),
                             np.concatenate([m, ~r.population["masks"][1:2]]))
    assert len(two[0]) == 2


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take average ranks: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3)
    assert rank_correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, rel=1e-6)
    # a constant sequence has no ranking: NaN, without a warning (the check reports None for it)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    # NaN in the data propagates (scipy's nan_policy="propagate")
    assert np.isnan(rank_correlation([1, float("nan"), 3], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        rank_correlation([1, 2], [1, 2, 3])


# -------------------------------------------------------------------------------------------------
# closed-form optimum
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("same_class", ["forced", "allowed", "excluded"])
@pytest.mark.parametrize("direction", ["min", "max"])
def test_closed_form_optimum_matches_brute_force(same_class, direction):
    cache = synthetic_cache(3, per_class=4, grid_size=2, seed=2, dtype=torch.float32)
    f = CachedFitness(cache, num_draws=5, seed=0)
    N = 4 if same_class != "excluded" else 2
    opt = f.optimum(N, same_class, direction)
    forced, optional = slot_pools(3, same_class)
    all_masks = torch.tensor(list(itertools.product([False, True], repeat=4))).reshape(16, 1, 2, 2)
    best = None
    for chosen in itertools.combinations(optional.tolist(), N - len(forced)):
        pairs = list(forced) + list(chosen)
        # best mask per pair by enumeration (the fitness is a mean of per-pair terms)
        per_pair = []
        for q in pairs:
            vals = f(torch.full((16, 1), q), all_masks)
            per_pair.append(vals.min() if direction == "min" else vals.max())
        v = float(torch.stack(per_pair).mean())
        if best is None or (v < best if direction == "min" else v > best):
            best = v
    assert opt.fitness == pytest.approx(best, rel=1e-12)
    val = f(torch.from_numpy(opt.pairs)[None], torch.from_numpy(opt.masks)[None])
    assert float(val) == pytest.approx(opt.fitness, rel=1e-12)


def test_optimum_without_exact_count_keeps_pairs_below_the_mean():
    f = CachedFitness(synthetic_cache(6, per_class=4, seed=0), num_draws=4)
    loose = f.optimum(12, "allowed", exact_count=False)
    exact = f.optimum(12, "allowed")
    assert len(loose.pairs) <= 12 and loose.fitness <= exact.fitness
    with pytest.raises(ValueError, match="not separable"):
        CachedFitness(synthetic_cache(3, per_class=2), num_draws=2, image_weight=1.0).optimum(4)
    with pytest.raises(ValueError, match=r"num_pairs = 30 must lie in \[6, 21\]"):
        f.optimum(30)


# -------------------------------------------------------------------------------------------------
# operators
# -------------------------------------------------------------------------------------------------


def ind(pairs, masks, direction="min"):
    return individual_class(direction)(np.asarray(pairs, dtype=np.int64), np.asarray(masks, dtype=bool))


def test_crossover_copies_left_half_from_one_parent_and_right_half_from_the_other():
    rng = np.random.default_rng(0)
    P = 4
    m1 = np.zeros((3, P, P), bool)
    m2 = np.ones((3, P, P), bool)
    a, b = ind([5, 7, 9], m1), ind([9, 5, 11], m2)
    c1, c2 = crossover(a, b, rng, cx_pairs=False, kind="half")  # the paper's crossover
    left = np.zeros((P, P), bool)
    left[:, P // 2:] = True  # child 1: left half from parent 1 (False), right half from parent 2 (True)
    assert c1.pairs.tolist() == [5, 7, 9] and c2.pairs.tolist() == [9, 5, 11]
    assert (c1.masks[0] == left).all() and (c1.masks[2] == left).all()  # pairs 5 and 9, shared
    assert not c1.masks[1].any()  # pair 7 is not in parent 2: unchanged
    assert (c2.masks[0] == ~left).all() and (c2.masks[1] == ~left).all()
    assert c2.masks[2].all()


def test_uniform_crossover_takes_each_cell_of_a_shared_pair_from_either_parent():
    rng = np.random.default_rng(0)
    m1 = rng.random((3, 4, 4)) < 0.5
    m2 = rng.random((3, 4, 4)) < 0.5
    a, b = ind([5, 7, 9], m1.copy()), ind([9, 5, 11], m2.copy())
    c1, c2 = crossover(a, b, rng, cx_pairs=False)  # kind="uniform", the default
    for k1, k2 in ((0, 1), (2, 0)):  # pair 5: slots 0 and 1; pair 9: slots 2 and 0
        kept = (c1.masks[k1] == m1[k1]) & (c2.masks[k2] == m2[k2])
        swapped = (c1.masks[k1] == m2[k2]) & (c2.masks[k2] == m1[k1])
        assert (kept | swapped).all()  # every cell from either parent, the children complementary
    assert (c1.masks[1] == m1[1]).all() and (c2.masks[2] == m2[2]).all()  # unshared pairs: untouched
    diff = m1[[0, 2]] != m2[[1, 0]]
    mixed = (c1.masks[[0, 2]] == m1[[0, 2]]) & diff
    assert 0 < mixed.sum() < diff.sum()  # some differing cells from each parent


def test_shared_slots_by_lookup_match_intersect1d():
    from patchmix.search.operators import coin_flips, shared_slots

    rng = np.random.default_rng(0)
    scratch = np.zeros(500, np.int32)
    for _ in range(20):
        p1, p2 = rng.choice(500, 40, replace=False), rng.choice(500, 40, replace=False)
        i1, i2 = shared_slots(p1, p2, scratch)
        j1, j2 = shared_slots(p1, p2)
        assert sorted(zip(i1.tolist(), i2.tolist(), strict=True)) == sorted(zip(j1.tolist(), j2.tolist(), strict=True))
        assert (p1[i1] == p2[i2]).all() and not scratch.any()  # the scratch is left at zero
    flips = coin_flips(rng, (300, 4, 4))
    assert flips.dtype == bool and flips.shape == (300, 4, 4) and 0.45 < flips.mean() < 0.55


def test_crossover_exchanges_unshared_pairs_with_their_masks():
    rng = np.random.default_rng(1)
    K = 10
    forced, optional = slot_pools(K, "forced")
    pa = np.concatenate([forced, optional[:10]])
    pb = np.concatenate([forced, optional[5:15]])
    ma = rng.random((20, 4, 4)) < 0.5
    mb = rng.random((20, 4, 4)) < 0.5
    a, b = ind(pa.copy(), ma.copy()), ind(pb.copy(), mb.copy())
    before = {int(p): m.copy() for p, m in zip(pa, ma, strict=True)} | {int(p): m.copy() for p, m in zip(pb, mb, strict=True)}
    c1, c2 = crossover(a, b, rng, num_forced=K, cx_pairs=True)
    for c in (c1, c2):
        assert len(set(c.pairs.tolist())) == 20 and (c.pairs[:K] == forced).all()
    assert sorted(c1.pairs.tolist() + c2.pairs.tolist()) == sorted(pa.tolist() + pb.tolist())
    moved = set(c1.pairs.tolist()) - set(pa.tolist())
    assert moved  # some pairs of parent 2 moved to child 1 ...
    for p in moved:  # ... with their own mask
        k = c1.pairs.tolist().index(p)
        assert (c1.masks[k] == before[p]).all()


def test_flip_tails_inverts_every_mask():
    m = np.random.default_rng(0).random((3, 4, 4)) < 0.5
    (x,) = flip_tails(ind([1, 2, 3], m.copy()))
    assert (x.masks == ~m).all() and x.pairs.tolist() == [1, 2, 3]


def test_transpose_transposes_every_mask():
    m = np.zeros((2, 3, 3), bool)
    m[0, 0, 2] = True  # row 0, column 2
    m[1, 1, 0] = True
    (x,) = transpose(ind([4, 6], m))
    assert x.masks[0, 2, 0] and x.masks[0].sum() == 1
    assert x.masks[1, 0, 1] and x.masks[1].sum() == 1


def test_flip_heads_swaps_free_pairs_for_absent_ones_and_keeps_masks():
    rng = np.random.default_rng(0)
    K = 6
    forced, optional = slot_pools(K, "forced")
    pairs = np.concatenate([forced, optional[:6]])
    m = rng.random((12, 4, 4)) < 0.5
    (x,) = flip_heads(ind(pairs.copy(), m.copy()), rng, optional, num_forced=K, indpb=0.5)
    assert (x.pairs[:K] == forced).all()  # forced same-class pairs never leave
    changed = np.flatnonzero(x.pairs != pairs)
    assert len(changed) >= 1 and (changed >= K).all()
    assert len(set(x.pairs.tolist())) == 12  # no duplicates
    assert set(x.pairs[changed].tolist()).isdisjoint(pairs.tolist())  # new pairs were absent
    assert (x.masks == m).all()  # each slot keeps its mask


def test_flip_heads_near_keeps_one_class_and_the_cells_it_supplies():
    from patchmix.search.operators import PairNeighbours

    rng = np.random.default_rng(0)
    K = 10
    forced, optional = slot_pools(K, "forced")
    cls = pair_classes(K).numpy()
    pairs = np.concatenate([forced, optional[::4][:10]])  # no class has all its neighbours present
    m = rng.random((20, 4, 4)) < 0.5
    near = PairNeighbours(K, optional)
    for _ in range(20):
        (x,) = flip_heads(ind(pairs.copy(), m.copy()), rng, optional, num_forced=K, indpb=0.5, near=1.0,
                          neighbours=near)
        assert (x.pairs[:K] == forced).all() and len(set(x.pairs.tolist())) == 20
        changed = np.flatnonzero(x.pairs != pairs)
        assert len(changed) >= 1
        for k in changed:
            (a, b), (c, d) = cls[pairs[k]], cls[x.pairs[k]]
            assert c != d  # forced: no same-class pair in a free slot
            kept = ({a, b} & {c, d}).pop()  # one class is kept ...
            old_cells = m[k] if kept == a else ~m[k]  # ... and supplies the same cells (True cells: first class)
            new_cells = x.masks[k] if kept == c else ~x.masks[k]
            assert (old_cells == new_cells).all()
        unchanged = np.setdiff1d(np.arange(20), changed)
        assert (x.masks[unchanged] == m[unchanged]).all()


def test_random_tails_flips_some_cells_only():
    rng = np.random.default_rng(0)
    m = np.zeros((5, 4, 4), bool)
    (x,) = random_tails(ind([1, 2, 3, 4, 5], m.copy()), rng, indpb=0.1)
    assert 1 <= x.masks.sum() < 80 and x.pairs.tolist() == [1, 2, 3, 4, 5]
    (y,) = random_tails(ind([1, 2, 3, 4, 5], m.copy()), rng, indpb=1e-9)
    assert y.masks.sum() == 1  # at least one cell always flips


# -------------------------------------------------------------------------------------------------
# search
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_fitness():
    return CachedFitness(synthetic_cache(5, per_class=8, grid_size=4, seed=0), num_draws=8, seed=0)


def test_same_seed_same_result_and_global_random_untouched(small_fitness):
    random.seed(123)
    state = random.getstate()
    r1 = search(small_fitness, population=30, generations=6, seed=7, progress=False)
    assert random.getstate() == state
    r2 = search(small_fitness, population=30, generations=6, seed=7, progress=False)
    r3 = search(small_fitness, population=30, generations=6, seed=8, progress=False)
    assert r1.logbook == r2.logbook and r1.policy.to_dict() == r2.policy.to_dict()
    assert r1.logbook != r3.logbook


def test_logbook_and_policy_contents(small_fitness):
    r = search(small_fitness, population=30, generations=5, seed=0, progress=False, patience=None)
    assert [rec["gen"] for rec in r.logbook] == list(range(6)) and r.generations == 5
    for rec in r.logbook:
        assert rec["best"] <= rec["mean"] <= rec["worst"]
    # replaying entered/left reproduces the best individual's pairs
    pairs = set()
    for rec in r.logbook:
        pairs |= {tuple(p) for p in rec["entered"]}
        pairs -= {tuple(p) for p in rec["left"]}
    assert pairs == {tuple(p) for p in r.policy.pairs.tolist()}
    # best-ever never gets worse (elitism + hall of fame)
    best = [rec["best_ever"] for rec in r.logbook]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:], strict=False))
    p = r.policy
    assert len(p) == 10 and p.grid_size == 4 and p.version == patchmix.__version__ and p.seed == 0
    assert {(c, c) for c in range(5)} <= {tuple(x) for x in p.pairs.tolist()}  # forced same-class pairs
    val = small_fitness(torch.from_numpy(r.best_pairs)[None], torch.from_numpy(r.best_masks)[None])
    assert float(val) == pytest.approx(p.fitness) == pytest.approx(r.best_fitness)
    assert r.evaluations >= 30 and r.time_fitness <= r.time_total


@pytest.mark.parametrize("same_class", ["allowed", "excluded"])
def test_same_class_modes(small_fitness, same_class):
    r = search(small_fitness, population=20, generations=3, seed=0, progress=False, same_class=same_class, num_pairs=6)
    same = [a == b for a, b in r.policy.pairs.tolist()]
    assert len(r.policy) == 6
    if same_class == "excluded":
        assert not any(same)


@pytest.mark.parametrize("replacement", ["plus", "generational"])
def test_replacements_and_the_final_population(small_fitness, replacement):
    from patchmix.search import PAPER_OPERATORS

    ops = PAPER_OPERATORS if replacement == "generational" else {}
    r = search(small_fitness, population=30, generations=6, seed=0, progress=False, patience=None, **ops)
    pop = r.population
    assert pop["pairs"].shape == (30, 10) and pop["masks"].shape == (30, 10, 4, 4) and pop["values"].shape == (30,)
    again = small_fitness(torch.from_numpy(pop["pairs"]), torch.from_numpy(pop["masks"])).numpy()
    assert np.allclose(again, pop["values"])  # the values are the individuals' fitness
    assert pop["values"].min() == pytest.approx(r.logbook[-1]["best"])
    if replacement == "plus":  # parents and offspring compete: the population's best never gets worse
        best = [rec["best"] for rec in r.logbook]
        assert all(b2 <= b1 for b1, b2 in zip(best, best[1:], strict=False))
        assert r.logbook[1]["nevals"] <= 45  # 1.5 offspring per individual
        # without crossover, offspring that mutation leaves untouched are copies of a parent: not scored again
        r = search(small_fitness, population=30, generations=3, seed=0, progress=False, patience=None, cxpb=0.0,
                   mutpb=0.5)
        assert all(0 < rec["nevals"] < 45 for rec in r.logbook[1:]), [rec["nevals"] for rec in r.logbook]


def test_maximise(small_fitness):
    lo = search(small_fitness, population=30, generations=8, seed=0, progress=False)
    hi = search(small_fitness, population=30, generations=8, seed=0, progress=False, direction="max")
    assert hi.best_fitness > lo.best_fitness
    assert all(rec["best"] >= rec["mean"] >= rec["worst"] for rec in hi.logbook)


def test_early_stop_after_patience():
    f = CachedFitness(synthetic_cache(2, per_class=3, grid_size=1, seed=0), num_draws=2)  # 3 pairs, 2 masks each
    r = search(f, population=10, generations=100, num_pairs=2, same_class="allowed", patience=3, seed=0,
               progress=False)
    assert r.stopped_early and r.generations < 100
    best = [rec["best_ever"] for rec in r.logbook]
    assert best[-1] == best[-4]  # no improvement during the last `patience` generations


def test_genetic_search_reaches_closed_form_optimum_cifar10_scale():
    f = CachedFitness(synthetic_cache(10, per_class=50, grid_size=4, seed=0), num_draws=32, seed=0)
    opt = f.optimum(20)
    r = search(f, population=300, generations=250, seed=0, progress=False, patience=None)
    gap = (r.best_fitness - opt.fitness) / abs(opt.fitness)
    assert -1e-12 <= gap < 0.01, gap  # the optimum itself, up to rounding, since the default (mu + lambda) operators


def test_resume_after_interruption_equals_uninterrupted(small_fitness, tmp_path):
    kw = dict(population=24, generations=11, seed=3, progress=False, checkpoint_every=4, patience=None)
    full = search(small_fitness, checkpoint=tmp_path / "full.ckpt", **kw)

    def die(gen, rec):
        if gen == 6:
            raise KeyboardInterrupt  # stands in for a kill: the gen-4 checkpoint is the last one on disk
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        search(small_fitness, checkpoint=ckpt, callback=die, **kw)
    resumed = search(small_fitness, checkpoint=ckpt, resume=True, **kw)
    assert resumed.logbook == full.logbook
    assert resumed.policy.to_dict() == full.policy.to_dict()
    # other settings: refused
    with pytest.raises(ValueError, match="other settings"):
        search(small_fitness, checkpoint=ckpt, resume=True, **{**kw, "cxpb": 0.9})
    other_fitness = CachedFitness(small_fitness.cache, num_draws=8, seed=1)
    with pytest.raises(ValueError, match="another fitness"):
        search(other_fitness, checkpoint=ckpt, resume=True, **kw)
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        search(small_fitness, checkpoint=tmp_path / "bad.ckpt", resume=True, **kw)


def test_resume_after_sigkill(tmp_path):
    """A real kill -9 in a subprocess mid-search, then resume: same result as an uninterrupted run."""
    script = textwrap.dedent(f"""
        import os, signal, sys, json
        sys.path.insert(0, {ROOT!r})
        from patchmix.search import CachedFitness, search
        from patchmix.search.synthetic import synthetic_cache
        f = CachedFitness(synthetic_cache(5, per_class=8, seed=0), num_draws=8, seed=0)
        kw = dict(population=24, generations=9, seed=5, progress=False, checkpoint_every=2, patience=None)
        mode = sys.argv[1]
        def kill(gen, rec):
            if mode == "kill" and gen == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        r = search(f, checkpoint=sys.argv[2], resume=(mode == "resume"), callback=kill, **kw)
        print(json.dumps(r.policy.to_dict()))
    """)
    path = tmp_path / "s.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def run(mode, ckpt):
        return subprocess.run([sys.executable, str(path), mode, str(ckpt)], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=120)

    killed = run("kill", tmp_path / "k.ckpt")
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "k.ckpt").exists()
    resumed = run("resume", tmp_path / "k.ckpt")
    assert resumed.returncode == 0, resumed.stderr
    # the uninterrupted run, in this process (same code, same settings)
    f = CachedFitness(synthetic_cache(5, per_class=8, seed=0), num_draws=8, seed=0)
    full = search(f, population=24, generations=9, seed=5, progress=False, checkpoint_every=2, patience=None)
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(full.policy.to_dict()))


def test_search_bad_settings(small_fitness):
    with pytest.raises(ValueError, match=r"num_pairs = 40 must lie in \[5, 15\]"):
        search(small_fitness, num_pairs=40, progress=False)
    with pytest.raises(ValueError, match="same_class must be one of"):
        search(small_fitness, same_class="sometimes", progress=False)
    with pytest.raises(ValueError, match="direction must be one of"):
        search(small_fitness, direction="up", progress=False)
    with pytest.raises(TypeError, match="unknown settings"):
        search(small_fitness, populaton=10, progress=False)
    with pytest.raises(ValueError, match="cxpb must be in"):
        search(small_fitness, cxpb=1.5, progress=False)


def test_genome_equality_for_hall_of_fame():
    a = Genome(np.array([1, 2]), np.zeros((2, 2, 2), bool))
    assert a == Genome(np.array([1, 2]), np.zeros((2, 2, 2), bool))
    assert a != Genome(np.array([1, 3]), np.zeros((2, 2, 2), bool))


# -------------------------------------------------------------------------------------------------
# policy files
# -------------------------------------------------------------------------------------------------


def make_policy():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :, :2] = True
    masks[1, 1, 3] = True
    masks[2] = True
    return Policy([[0, 0], [0, 2], [1, 2]], masks, ["cat", "dog", "ship"], 4, fitness=-1.5, seed=3,
                  search={"objective": "logprob"})


def test_policy_json_round_trip(tmp_path):
    p = make_policy()
    p.save(tmp_path / "p.json")
    q = Policy.load(tmp_path / "p.json", class_names=["cat", "dog", "ship"], grid_size=4)
    assert q.to_dict() == p.to_dict() and (q.masks == p.masks).all() and (q.pairs == p.pairs).all()
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["pairs"][1] == ["cat", "ship"] and d["masks"][0][0] == "1100" and d["version"] == patchmix.__version__
    # a dataset listing the classes in another order: pairs are re-indexed by name
    r = Policy.load(tmp_path / "p.json", class_names=["ship", "horse", "dog", "cat"])
    assert r.named_pairs() == p.named_pairs() and r.num_classes == 4


def test_policy_rejections(tmp_path):
    p = make_policy()
    p.save(tmp_path / "p.json")
    with pytest.raises(PolicyError, match="grid size 4 in the policy, but 2 was expected"):
        Policy.load(tmp_path / "p.json", grid_size=2)
    with pytest.raises(PolicyError, match=r"unknown classes \['ship'\]"):
        Policy.load(tmp_path / "p.json", class_names=["cat", "dog"])
    (tmp_path / "trunc.json").write_text((tmp_path / "p.json").read_text()[:50])
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(tmp_path / "trunc.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError, match="corrupt"):
        Policy.load(tmp_path / "bin.json")
    d = p.to_dict()
    for change, msg in [
        ({"format": "other"}, "not a patchmix-policy"),
        ({"format_version": 9}, "format_version 9"),
        ({"masks": [["110", "0000", "0000", "0000"]] + d["masks"][1:]}, "must be 4x4"),
        ({"masks": [["11x0"] * 4] + d["masks"][1:]}, "strings of '0' and '1'"),
        ({"pairs": d["pairs"][:2]}, r"masks must have shape \(M, P, P\) = \(2, 4, 4\)"),
        ({"pairs": [["cat", "cat"], ["cat", "ship"], ["ship", "cat"]]}, "appears twice"),
        ({"grid_size": "four"}, "malformed"),
    ]:
        with pytest.raises(PolicyError, match=msg):
            Policy.from_dict({**d, **change})
    with pytest.raises(PolicyError, match="outside the 3 classes"):
        Policy([[0, 5]], np.zeros((1, 4, 4)), ["a", "b", "c"], 4)


def test_default_pair_count_fits_two_classes():
    """N = 2K by default, capped by the pairs that exist: 2 classes have 3 unordered pairs."""
    from patchmix.search import SearchConfig

    assert SearchConfig().resolved_pairs(2) == 3
    assert SearchConfig(same_class="excluded").resolved_pairs(2) == 1
    assert SearchConfig().resolved_pairs(10) == 20


# -------------------------------------------------------------------------------------------------
# checkpoint safety, settings
# -------------------------------------------------------------------------------------------------


def test_a_crafted_search_checkpoint_is_refused_and_runs_no_code(small_fitness, tmp_path):
    """Search checkpoints are .npz files read with allow_pickle=False: a pickle that would run code (create a
    marker file) is refused with a CheckpointError, and nothing in it runs."""
    import pickle

    from patchmix.errors import CheckpointError
    from tests.conftest import CodeRunningPayload

    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "search.npz"
    with open(ckpt, "wb") as f:
        pickle.dump({"format": "patchmix-search-checkpoint-1", "pairs": CodeRunningPayload(marker)}, f)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        search(small_fitness, population=8, generations=2, progress=False, checkpoint=ckpt, resume=True)
    # an npz whose arrays need pickle (an object array) is refused the same way
    np.savez(tmp_path / "objects.npz", meta=np.array([CodeRunningPayload(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        search(small_fitness, population=8, generations=2, progress=False, checkpoint=tmp_path / "objects.npz",
               resume=True)
    assert not marker.exists()
    # what the search writes is plain arrays
    search(small_fitness, population=8, generations=2, progress=False, checkpoint=tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as z:
        assert {"pairs", "masks", "values", "meta"} <= set(z.files) and z["masks"].dtype == bool


def test_resume_with_more_patience_continues_after_an_early_stop(tmp_path):
    """A search stopped early by `patience` goes on when resumed with a larger patience (or none), and ends
    where an uninterrupted search with that patience ends."""
    f = CachedFitness(synthetic_cache(2, per_class=3, grid_size=1, seed=0), num_draws=2)  # plateaus at once
    kw = dict(population=10, generations=40, num_pairs=2, same_class="allowed", seed=0, progress=False)
    ckpt = tmp_path / "s.npz"
    early = search(f, checkpoint=ckpt, patience=3, **kw)
    assert early.stopped_early and early.generations < 40
    longer = search(f, checkpoint=ckpt, resume=True, patience=None, **kw)
    assert not longer.stopped_early and longer.generations == 40
    straight = search(f, patience=None, **kw)
    assert longer.logbook == straight.logbook and longer.policy.to_dict() == straight.policy.to_dict()
    # the same patience: nothing more to do
    again = search(f, checkpoint=tmp_path / "t.npz", patience=3, **kw)
    assert search(f, checkpoint=tmp_path / "t.npz", resume=True, patience=3, **kw).generations == again.generations


def test_one_vocabulary_for_the_search_settings():
    """The run configuration's search section is SearchConfig itself: its keys are search()'s arguments."""
    import dataclasses

    from patchmix import config
    from patchmix.errors import ConfigError
    from patchmix.search import SearchConfig

    cfg = config.resolve(None, None, {"search.cxpb": "0.7", "search.num_pairs": "12", "search.direction": "max",
                                      "search.patience": "none", "search.mutation_weights": "1,1,1,1"})
    assert isinstance(cfg.search, SearchConfig)
    assert (cfg.search.cxpb, cfg.search.num_pairs, cfg.search.direction, cfg.search.patience) == (0.7, 12, "max", None)
    assert {f.name for f in dataclasses.fields(SearchConfig)} >= {"population", "generations", "cxpb", "mutpb",
                                                                   "num_pairs", "objective", "num_draws"}
    f = CachedFitness(synthetic_cache(5, per_class=4, grid_size=4, seed=0), num_draws=4)
    r = search(f, dataclasses.replace(cfg.search, population=8, generations=1, num_draws=4, num_pairs=6,
                                      fitness="linear"), progress=False)
    assert r.policy.search["direction"] == "max" and len(r.policy) == 6
    with pytest.raises(ConfigError, match="search.objective = 'accuracy' but the fitness was built with 'logprob'"):
        search(f, objective="accuracy", progress=False)
    with pytest.raises(ConfigError, match="search.fitness = 'interaction' but the fitness was built with 'linear'"):
        search(f, cfg.search, num_draws=4, progress=False)  # the run's default fitness is the interaction one
    with pytest.raises(ConfigError, match="search.cxpb must be in"):
        config.resolve(None, None, {"search.cxpb": "2"})
