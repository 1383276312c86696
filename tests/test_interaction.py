"""The interaction-aware cached fitness (patchmix.search.interaction), the exhaustive solver and the search check
(fidelity with its ceiling, efficacy)."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from patchmix.errors import ConfigError
from patchmix.search import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    SearchConfig,
    build_interaction_table,
    draw_pairs,
    interaction_fitness,
    pair_classes,
    random_population,
    search,
    search_check,
)
from patchmix.search.cache import distinct_pairs, draw_period
from patchmix.search.exact import rank_correlation
from patchmix.search.fidelity import MIN_CEILING, ceiling, draws_for_ceiling, efficacy_verdict, uniform_masks
from patchmix.search.interaction import fit_interactions, predict_cells, sample_masks
from patchmix.search.scoring import autocast_dtype, composed_scores, native_bfloat16
from patchmix.search.settings import FAST_CHECK_DRAWS, FAST_MASKS_PER_DRAW
from patchmix.search.synthetic import InteractingCells, synthetic_validation


class CellModel(nn.Module):
    """Per-cell linear classifier (conv, kernel = stride = cell) plus ``mix`` times the mean over all cells: with
    ``mix > 0`` every cell's logits depend on the other cells, as a real CNN's do."""

    def __init__(self, num_classes=4, grid_size=2, cell=4, mix=0.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, num_classes, cell, stride=cell)
        self.mix = mix

    def forward(self, x):
        f = self.conv(x)  # (N, K, P, P)
        patch = f + self.mix * f.mean((2, 3), keepdim=True)
        return patch.mean((2, 3)), patch


def data(K=4, per_class=6, P=2, cell=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(per_class)
    images = torch.rand(labels.numel(), 3, P * cell, P * cell, generator=g) * 0.5
    images += labels[:, None, None, None].float() * 0.1
    return images.clamp(0, 1), labels


def brute_slot(table_q: torch.Tensor, bits) -> float:
    """The model's slot score by its definition (module docstring of patchmix.search.interaction)."""
    PP = len(bits)
    total = 0.0
    for n in range(PP):
        s = int(bits[n])
        total += float(table_q[n, s, n]) + sum(float(table_q[n, s, m]) * (bits[m] != bits[n])
                                               for m in range(PP) if m != n)
    return total / PP


# -------------------------------------------------------------------------------------------------
# the fit
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", [1, 2, 3])
def test_fit_recovers_an_exact_pairwise_model(P):
    g = torch.Generator().manual_seed(P)
    PP = P * P
    truth = torch.randn(3, PP, 2, PP, generator=g, dtype=torch.float64)
    bits = torch.stack([sample_masks(g, 300, P, "spread") for _ in range(3)]).reshape(3, 300, PP)
    y = predict_cells(truth, bits)
    est = fit_interactions(bits, y, 1e-9)
    # the diagonal is the intercept; a coefficient is identifiable where its indicator varies
    torch.testing.assert_close(est, truth, rtol=1e-6, atol=1e-6)
    for b, r in ((0, 0), (2, 17)):
        for n in range(PP):
            s = int(bits[b, r, n])
            direct = truth[b, n, s, n] + sum(truth[b, n, s, m] * float(bits[b, r, m] != bits[b, r, n])
                                             for m in range(PP) if m != n)
            assert float(y[b, r, n]) == pytest.approx(float(direct), abs=1e-12)


def test_fit_shrinks_coefficients_and_handles_a_side_never_taken():
    g = torch.Generator().manual_seed(0)
    bits = torch.rand(1, 50, 4, generator=g) < 0.5
    bits[0, :, 0] = True  # cell 0 never comes from the second class
    y = torch.randn(1, 50, 4, generator=g, dtype=torch.float64)
    weak = fit_interactions(bits, y, 0.01)
    strong = fit_interactions(bits, y, 1e6)
    assert torch.isfinite(weak).all() and torch.isfinite(strong).all()
    assert (strong[0, 0, 0] == 0).all()  # the side never taken: zeros, not NaN
    off = ~torch.eye(4, dtype=torch.bool)
    assert strong[..., off[:, None, :].expand(4, 2, 4)].abs().max() < 1e-3  # all but the intercepts shrunk away
    # the intercept then is the mean of the cell's score over the rows where it takes that side
    mean = y[0, bits[0, :, 1], 1].mean()
    assert float(strong[0, 1, 1, 1]) == pytest.approx(float(mean), abs=1e-3)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        fit_interactions(bits, y, 0.0)
    with pytest.raises(ValueError, match="bool"):
        fit_interactions(bits.float(), y, 1.0)


def test_build_is_the_same_in_any_chunking_and_range():
    images, labels = data()
    model = CellModel(mix=1.0)
    K, P = 4, 2
    draws = draw_pairs(labels, K, 3, seed=5)
    kw = dict(masks_per_draw=6, ridge=1.0, seed=7)
    whole, stats = build_interaction_table(model, images, draws, pair_classes(K), P, pairs_per_chunk=4, **kw)
    parts = [build_interaction_table(model, images, draws, pair_classes(K), P, pair_range=r, pairs_per_chunk=1, **kw)[0]
             for r in ((0, 3), (3, 10))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-9, atol=1e-9)
    assert whole.shape == (10, 4, 2, 4) and stats["forward_passes"] == 10 * 3 * 6 and 0 < stats["r2"] <= 1


# -------------------------------------------------------------------------------------------------
# the fitness: values, fidelity against a model whose cells interact
# -------------------------------------------------------------------------------------------------


def test_interaction_fitness_scores_policies_by_the_model():
    images, labels = data()
    model = CellModel(mix=1.0)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    f = interaction_fitness(cache, model, images, num_draws=3, masks_per_draw=8, ridge=1.0, seed=2)
    assert f.fitness_kind == "interaction" and f.table.shape == (10, 4, 2, 4)
    assert f.build["forward_passes"] == 10 * 3 * 8
    assert torch.equal(f.draws, draw_pairs(labels, 4, 3, 2))  # the draws the table was fitted on
    pairs, masks = random_population(5, 6, f, "forced", seed=0)
    pairs[1, 2] = -1
    got = f(pairs, masks)
    for i in range(5):
        slots = [brute_slot(f.table[q], masks[i, k].reshape(-1).tolist()) for k, q in enumerate(pairs[i].tolist())
                 if q >= 0]
        assert float(got[i]) == pytest.approx(np.mean(slots), abs=1e-9)
    with pytest.raises(ValueError, match="only the linear table"):
        f.exact_reference(pairs, masks)
    with pytest.raises(ValueError, match=r"\(Q, P\*P, 2\)"):
        CachedFitness(cache, num_draws=3, table=torch.zeros(10, 4, 3))


@pytest.mark.parametrize("K, P, N", [(2, 2, 3), (4, 2, 6), (4, 4, 6)])
def test_interaction_fitness_ranks_policies_like_the_model_where_the_linear_cache_cannot(K, P, N):
    """Cells that see the others (InteractingCells): the linear cache ranks random policies no better than chance
    (measured: -0.18 to 0.21), the interaction table as f_T does (0.88 to 0.99)."""
    model = InteractingCells(K, grid_size=P, size=4 * P).eval()
    images, labels = synthetic_validation(model, 10)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    inter = interaction_fitness(cache, model, images, num_draws=8, masks_per_draw=32, ridge=1.0, seed=0)
    linear = CachedFitness(cache, num_draws=8, seed=0)
    exact = ExactFitness(model, images, linear)  # the draws both were built on: no draw noise
    pairs, masks = random_population(60, N, linear, "forced", seed=3)
    e = exact(pairs, masks).numpy()
    rho_inter = rank_correlation(inter(pairs, masks).numpy(), e)
    rho_linear = rank_correlation(linear(pairs, masks).numpy(), e)
    assert rho_inter > 0.85 and rho_linear < 0.3, (rho_inter, rho_linear)


# -------------------------------------------------------------------------------------------------
# the optimum by enumeration, the exhaustive solver, the GA against it
# -------------------------------------------------------------------------------------------------


def _random_interaction_fitness(K=4, P=2, seed=0):
    images, labels = data(K=K, P=P)
    cache = CachedLogits.from_model(CellModel(num_classes=K, grid_size=P), images, labels, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    Q, PP = K * (K + 1) // 2, P * P
    return CachedFitness(cache, num_draws=2, table=torch.randn(Q, PP, 2, PP, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("direction", ["min", "max"])
def test_best_masks_enumerates_every_mask(direction):
    f = _random_interaction_fitness(P=2)
    masks, vals = f.best_masks(direction, pairs_per_call=3)
    for q in range(f.num_pairs):
        scored = {bits: brute_slot(f.table[q], bits) for bits in itertools.product([False, True], repeat=4)}
        best = (min if direction == "min" else max)(scored.values())
        assert vals[q] == pytest.approx(best, abs=1e-12)
        assert scored[tuple(masks[q].reshape(-1).tolist())] == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="P <= 4"):
        f8 = _random_interaction_fitness(K=2, P=5)
        f8.best_masks()


def test_exhaustive_solver_is_the_optimum_and_the_ga_gets_close():
    """On a table fitted to an f_T whose cells interact, the GA's default operators end within 1% of the optimum
    (measured 0.40% at this budget); the exhaustive solver is the optimum."""
    model = InteractingCells(4, grid_size=4, size=16).eval()
    images, labels = synthetic_validation(model, 8)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    f = interaction_fitness(cache, model, images, num_draws=4, masks_per_draw=16, seed=0)
    opt = f.optimum(6)
    ex = search(f, solver="exhaustive", num_pairs=6, seed=0, progress=False)
    assert ex.best_fitness == pytest.approx(opt.fitness) and ex.generations == 0 and ex.logbook == []
    assert ex.policy.search["solver"] == "exhaustive" and ex.policy.search["fitness"] == "interaction"
    assert float(f(torch.from_numpy(ex.best_pairs)[None], torch.from_numpy(ex.best_masks)[None])[0]) == \
        pytest.approx(opt.fitness)
    ga = search(f, population=60, generations=60, num_pairs=6, seed=0, progress=False, patience=None)
    assert opt.fitness <= ga.best_fitness <= opt.fitness + 0.01 * abs(opt.fitness), (ga.best_fitness, opt.fitness)
    with pytest.raises(ConfigError, match="search.fitness = 'linear' but the fitness was built with 'interaction'"):
        search(f, fitness="linear", num_pairs=6, progress=False)
    with pytest.raises(ConfigError, match="not separable"):
        search(CachedFitness(cache, num_draws=4, image_weight=1.0), solver="exhaustive", fitness="linear",
               num_pairs=6, num_draws=4, progress=False)


def test_search_settings_of_the_fitness_are_validated():
    for bad, match in ((dict(fitness="cubic"), "search.fitness"), (dict(solver="anneal"), "search.solver"),
                       (dict(ridge=0.0), "search.ridge"), (dict(ridge=float("nan")), "search.ridge"),
                       (dict(masks_per_draw=0), "search.masks_per_draw"),
                       (dict(mask_distribution="all"), "search.mask_distribution")):
        with pytest.raises(ConfigError, match=match):
            SearchConfig(**bad).validate(4)


# -------------------------------------------------------------------------------------------------
# the search check
# -------------------------------------------------------------------------------------------------


def test_ceiling_from_two_halves_of_the_draws():
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(50, 1, generator=g, dtype=torch.float64)
    same = ceiling(signal.expand(50, 8))
    assert same["exact_vs_exact"] == pytest.approx(1.0) and same["ceiling"] == pytest.approx(1.0)
    noisy = ceiling(signal + 2.0 * torch.randn(50, 8, generator=g, dtype=torch.float64))
    assert 0 < noisy["exact_vs_exact"] < noisy["reliability"] < noisy["ceiling"] < 1
    assert noisy["reliability"] == pytest.approx(2 * noisy["exact_vs_exact"] / (1 + noisy["exact_vs_exact"]))
    assert ceiling(signal)["ceiling"] is None  # one draw: nothing to compare


def test_efficacy_words_and_uniform_masks():
    assert "harder for f_T than 100%" in efficacy_verdict(0.0) and "the search works" in efficacy_verdict(0.0)
    assert "NOT harder" in efficacy_verdict(100.0)
    assert "not markedly" in efficacy_verdict(20.0)
    assert "easier for f_T than 100%" in efficacy_verdict(100.0, "max")
    m = np.zeros((3, 2, 2), bool)
    m[1] = True
    m[2, 0, 0] = True
    assert uniform_masks(m) == 2


def test_search_check_of_a_per_patch_model_on_the_search_draws_is_exact():
    """Cells that see only themselves, the check drawn like the fitness: the linear cache is the exact fitness,
    Spearman 1 on random and final policies; the percentile is the chosen policy's rank among the random ones."""
    images, labels = data(K=4, per_class=5)
    model = CellModel(mix=0.0)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    f = CachedFitness(cache, num_draws=4, seed=9)
    r = search(f, population=12, generations=3, num_pairs=6, seed=0, progress=False, patience=None)
    check = search_check(f, model, images, chosen=(r.best_pairs, r.best_masks), num_pairs=6,
                         final=[r.population, r.offspring], num_draws=4, random_policies=30, seed=9)
    assert check["fitness"] == "linear" and check["linear_spearman"] is None
    assert check["random"]["n"] == 30 and check["random"]["spearman"] == pytest.approx(1.0)
    assert check["final"]["spearman"] == pytest.approx(1.0)
    np.testing.assert_allclose(check["random"]["proxy"], check["random"]["exact"], rtol=1e-4, atol=1e-4)
    eff = check["efficacy"]
    rand = np.asarray(check["random"]["exact"])
    assert eff["percentile"] == pytest.approx(100 * (rand < eff["exact"]).mean() + 50 * (rand == eff["exact"]).mean())
    assert eff["exact"] == pytest.approx(r.best_fitness, abs=1e-4)  # the same draws: exact = cached
    assert eff["masks"] == 6 and 0 <= eff["uniform_masks"] <= 6 and eff["verdict"]
    assert check["seconds"] >= 0
    # an interaction fitness reports the linear cache's correlation beside its own
    inter = interaction_fitness(cache, model, images, num_draws=4, masks_per_draw=4, seed=9)
    c2 = search_check(inter, model, images, chosen=(r.best_pairs, r.best_masks), num_pairs=6, num_draws=4,
                      random_policies=10, seed=1)
    assert c2["fitness"] == "interaction" and c2["linear_spearman"] is not None and c2["final"] is None
    with pytest.raises(ValueError, match="num_draws must be >= 2"):
        search_check(f, model, images, chosen=(r.best_pairs, r.best_masks), num_pairs=6, num_draws=1)


def test_the_papers_exact_fitness_drives_the_search_and_resumes(tmp_path):
    """search.fitness = exact: the GA scores every individual with f_T on the composed samples."""
    images, labels = data(K=3, per_class=4)
    model = CellModel(num_classes=3, mix=1.0)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    exact = ExactFitness(model, images, CachedFitness(cache, num_draws=2, seed=4))
    assert exact.fitness_kind == "exact" and exact.num_pairs == 6 and exact.cache is cache
    r = search(exact, population=6, generations=2, num_pairs=4, seed=0, progress=False, patience=None)
    assert r.policy.search["fitness"] == "exact"
    again = float(exact(torch.from_numpy(r.best_pairs)[None], torch.from_numpy(r.best_masks)[None])[0])
    assert again == pytest.approx(r.best_fitness)
    # resume: the checkpoint's fingerprint holds f_T's weights; another f_T is refused
    ck = str(tmp_path / "s.npz")
    search(exact, population=6, generations=1, num_pairs=4, seed=0, progress=False, checkpoint=ck)
    resumed = search(exact, population=6, generations=2, num_pairs=4, seed=0, progress=False, checkpoint=ck,
                     resume=True, patience=None)
    assert resumed.best_fitness == pytest.approx(r.best_fitness)
    other = ExactFitness(CellModel(num_classes=3, mix=1.0, seed=5), images, CachedFitness(cache, num_draws=2, seed=4))
    from patchmix.errors import CheckpointError

    with pytest.raises(CheckpointError, match="another fitness"):
        search(other, population=6, generations=2, num_pairs=4, seed=0, progress=False, checkpoint=ck, resume=True)
    with pytest.raises(ConfigError, match="exhaustive needs a table"):
        SearchConfig(fitness="exact", solver="exhaustive").check_dataset(12, 48, 2)


def test_accuracy_objective_and_maximising_keep_working():
    """objective = accuracy (0/1 cell scores, fitted the same way) and direction = max (GA and exhaustive)."""
    images, labels = data(K=3, per_class=5)
    model = CellModel(num_classes=3, mix=1.0)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    f = interaction_fitness(cache, model, images, num_draws=3, masks_per_draw=8, objective="accuracy", seed=1)
    assert f.objective == "accuracy" and torch.isfinite(f.table).all()
    ex = search(f, solver="exhaustive", direction="max", num_pairs=4, objective="accuracy", num_draws=3,
                progress=False)
    ga = search(f, direction="max", population=20, generations=20, num_pairs=4, objective="accuracy", num_draws=3,
                progress=False, patience=None)
    assert ex.best_fitness >= ga.best_fitness - 1e-12 and ex.policy.search["direction"] == "max"
    assert ex.best_fitness == pytest.approx(f.optimum(4, direction="max").fitness)


def test_the_gpu_checks_search_rows_run_at_toy_sizes():
    """bench/gpu_bench.py's search part (the build's composed-forward throughput, one exact-fitness generation)
    is run for the first time on a lent GPU: it must not fail there for a reason the CPU can show."""
    from bench.gpu_bench import search_rows

    rows = search_rows("cpu", build=(6, 4, 5, 2, 2), generation=(4, 4, 6, 5, 2))
    assert [r["kind"] for r in rows] == ["search", "search"]
    assert all(r["images_per_s"] > 0 and r["wall_ms"] > 0 for r in rows)
    assert rows[0]["projected_full_build_s"] > 0


# -------------------------------------------------------------------------------------------------
# the cost: what a small split can teach, one pass per distinct composition, the check's rules
# -------------------------------------------------------------------------------------------------


def test_a_small_split_cycles_through_its_distinct_image_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # 3, 2 and 10 images
    K, S = 3, 8
    D = distinct_pairs(labels, K)
    assert D.tolist() == [9, 6, 30, 4, 20, 100]  # pairs (0,0), (0,1), (0,2), (1,1), (1,2), (2,2)
    draws = draw_pairs(labels, K, S, seed=3)
    period = draw_period(draws)
    for q, (ci, cj) in enumerate(pair_classes(K).tolist()):
        d = draws[q]
        assert (labels[d[:, 0]] == ci).all() and (labels[d[:, 1]] == cj).all()
        if D[q] <= S:  # every distinct image pair, then the cycle again
            assert period[q] == D[q]
            assert len({tuple(x) for x in d[: D[q]].tolist()}) == D[q]
            assert torch.equal(d, d[torch.arange(S) % int(D[q])])
        else:
            assert period[q] <= S
    # a split with more image pairs than draws draws them as before: uniformly with replacement, from the seed
    big = torch.arange(4).repeat_interleave(10)
    rng = np.random.default_rng(1)
    u = rng.random((10, 5, 2))
    expect = (u * 10).astype(np.int64) + 10 * pair_classes(4).numpy()[:, None, :]
    assert torch.equal(draw_pairs(big, 4, 5, 1), torch.from_numpy(expect))
    with pytest.raises(ValueError, match=r"\(Q, S, 2\)"):
        draw_period(torch.zeros(3, 4, dtype=torch.int64))


def test_the_build_composes_each_distinct_draw_once():
    images, labels = data(K=3, per_class=2)  # 4 ordered image pairs per class pair
    model = CellModel(num_classes=3, mix=1.0)
    draws = draw_pairs(labels, 3, 8, seed=1)
    assert draw_period(draws).tolist() == [4] * 6
    table, stats = build_interaction_table(model, images, draws, pair_classes(3), 2, masks_per_draw=5, seed=2)
    assert stats["forward_passes"] == 6 * 4 * 5  # min(S, D_q) * M per pair, not S * M
    # the same table as a build on the distinct draws alone
    alone, _ = build_interaction_table(model, images, draws[:, :4], pair_classes(3), 2, masks_per_draw=5, seed=2)
    torch.testing.assert_close(table, alone, rtol=0, atol=0)


def test_the_exact_fitness_scores_each_distinct_composition_once():
    images, labels = data(K=3, per_class=2)
    model = CellModel(num_classes=3, mix=1.0)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    f = CachedFitness(cache, num_draws=8, seed=4)
    pairs, masks = random_population(6, 4, f, "forced", seed=0)
    pairs, masks = torch.cat([pairs, pairs[:2]]), torch.cat([masks, masks[:2]])  # two policies twice
    pairs[0, 3] = -1
    exact = ExactFitness(model, images, f)
    got = exact.per_draw(pairs, masks)
    slots = {(int(q), m.numpy().tobytes()) for q, m in zip(pairs[pairs >= 0], masks[pairs >= 0], strict=True)}
    assert exact.forward_passes == len(slots) * 4  # each distinct slot, each distinct draw (D_q = 4 < 8)
    # the long way: every slot and every draw composed and scored on its own
    ref = torch.zeros(len(pairs), 8, dtype=torch.float64)
    for i in range(len(pairs)):
        act = [k for k in range(4) if pairs[i, k] >= 0]
        for k in act:
            q = int(pairs[i, k])
            d = f.draws[q]
            sc, _ = composed_scores(model, images, d[:, 0], d[:, 1], masks[i, k].expand(8, 2, 2),
                                    f.classes[q, 0].expand(8), f.classes[q, 1].expand(8))
            ref[i] += sc.mean(-1) / len(act)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


def test_the_checks_one_pass_gives_the_numbers_of_separate_passes_and_shows_progress():
    images, labels = data(K=4, per_class=5)
    model = CellModel(mix=1.0)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    f = interaction_fitness(cache, model, images, num_draws=4, masks_per_draw=4, seed=9)
    r = search(f, population=12, generations=3, num_pairs=6, seed=0, progress=False, patience=None)
    bars = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    check = search_check(f, model, images, chosen=(r.best_pairs, r.best_masks), num_pairs=6,
                         final=[r.population, r.offspring], num_draws=6, random_policies=20, seed=3, progress=Bar)
    # progress: one bar over the compositions the check scored, filled and closed
    assert len(bars) == 1 and bars[0].desc == "search check" and bars[0].closed
    assert bars[0].n == bars[0].total == check["forward_passes"] > 0
    # separate passes (one ExactFitness call per group of policies) give the same numbers
    exact = ExactFitness(model, images, f, draws=draw_pairs(labels, 4, 6, 3))
    pairs, masks = random_population(20, 6, f, "forced", 3)
    np.testing.assert_allclose(check["random"]["exact"], exact(pairs, masks).numpy(), rtol=1e-6, atol=1e-9)
    chosen = exact(torch.as_tensor(r.best_pairs)[None], torch.as_tensor(r.best_masks)[None])
    assert check["efficacy"]["exact"] == pytest.approx(float(chosen[0]), rel=1e-6, abs=1e-9)
    naive = (20 + check["final"]["n"] + 1) * 6 * 6  # every slot of every policy at every draw
    assert check["forward_passes"] < naive  # the final population and the chosen policy share slots
    assert check["min_ceiling"] == MIN_CEILING


def test_draws_for_ceiling_is_the_spearman_brown_rule():
    # one draw of reliability rho; h draws have r = h rho / (1 + (h - 1) rho): the rule inverts it
    rho = 0.3
    for S in (8, 16, 32):
        h = S // 2
        r = h * rho / (1 + (h - 1) * rho)
        n = draws_for_ceiling(r, S, 0.9)
        rel = lambda k: k * rho / (1 + (k - 1) * rho)  # noqa: E731
        assert math.sqrt(rel(n)) >= 0.9 > math.sqrt(rel(n - 1))  # the fewest draws that reach the ceiling
    assert draws_for_ceiling(1.0, 12) == 12 and draws_for_ceiling(None, 12) is None
    assert draws_for_ceiling(-0.1, 12) is None
    # the check's numbers obey it: a noisy exact fitness (few draws) asks for more draws than it had
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(200, 1, generator=g, dtype=torch.float64) + 2.0 * torch.randn(200, 8, generator=g,
                                                                                       dtype=torch.float64)
    c = ceiling(noisy)
    assert c["ceiling"] < MIN_CEILING and draws_for_ceiling(c["exact_vs_exact"], 8) > 8


def test_the_report_asks_for_draws_when_the_ceiling_is_low():
    from patchmix.workflow.report import fidelity_text

    fid = {"fitness": "interaction", "random": {"spearman": 0.7, "ceiling": 0.85, "n": 200}, "final": None,
           "efficacy": {"verdict": "v", "percentile": 0.0, "uniform_masks": 0, "masks": 20},
           "min_ceiling": 0.9, "draws_needed": 45, "seconds": 1.0}
    assert "run.fidelity_draws=45" in fidelity_text(fid)
    fid["random"]["ceiling"] = 0.95
    assert "fidelity_draws" not in fidelity_text(fid)


def test_effort_and_precision_settings():
    s = SearchConfig()
    assert (s.effort, s.precision, s.fit_masks(), s.check_draws(32)) == ("default", "auto", 64, 32)
    fast = SearchConfig(effort="fast")
    assert fast.fit_masks() == FAST_MASKS_PER_DRAW == 16 and fast.check_draws(32) == FAST_CHECK_DRAWS == 16
    assert SearchConfig(effort="fast", masks_per_draw=8).fit_masks() == 8  # a cap, never more than asked
    for key, bad in (("effort", "slow"), ("precision", "float16")):
        with pytest.raises(ConfigError, match=f"search.{key}"):
            SearchConfig(**{key: bad}).validate()
    assert autocast_dtype("float32", "cpu") is None and autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if native_bfloat16("cpu") else None)


def test_bfloat16_forward_passes_keep_the_tables_fidelity():
    """The bfloat16 autocast (search.precision = auto on a CPU with native bfloat16) changes the cells' scores by
    little, and the table fitted on them ranks policies as the float32 one does."""
    model = InteractingCells(4, grid_size=2).eval()
    images, labels = synthetic_validation(model, 6)
    cache = CachedLogits.from_model(model, images, labels, dtype=torch.float32)
    kw = dict(num_draws=4, masks_per_draw=8, seed=1)
    f32 = interaction_fitness(cache, model, images, precision="float32", **kw)
    bf16 = interaction_fitness(cache, model, images, precision="bfloat16", **kw)
    pairs, masks = random_population(100, 6, f32, "forced", seed=2)
    exact = ExactFitness(model, images, f32, draws=draw_pairs(labels, 4, 8, 5))
    e = exact(pairs, masks).numpy()
    rho32 = rank_correlation(f32(pairs, masks).numpy(), e)
    rho16 = rank_correlation(bf16(pairs, masks).numpy(), e)
    assert rho16 >= rho32 - 0.02
    assert rank_correlation(f32(pairs, masks).numpy(), bf16(pairs, masks).numpy()) > 0.98
