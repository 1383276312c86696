"""patchmix::population_fitness: C++ and Triton kernels against the reference, in float64, on random
populations (inactive slots, empty individuals, odd sizes, with and without the image-level term); with the
interaction table ``(Q, P*P, 2, P*P)`` every backend against a brute force written here from the definition."""

import pytest
import torch

from patchmix.ops import check_errors, population_fitness, population_fitness_reference
from patchmix.ops._registry import backends, build_info
from tests.conftest import devices, triton_device, triton_launcher


def make_inputs(n_ind, N, P, Q=7, V=13, K=5, S=3, dtype=torch.float64, device="cpu", inactive=0.2, seed=0,
                interaction=False):
    """Random ``(table, pairs, masks, logits, draws, pair_classes)``; ``interaction``: a ``(Q, P*P, 2, P*P)`` table."""
    g = torch.Generator().manual_seed(seed)
    shape = (Q, P * P, 2, P * P) if interaction else (Q, P * P, 2)
    table = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    pairs = torch.randint(0, Q, (n_ind, N), generator=g)
    pairs[torch.rand(n_ind, N, generator=g) < inactive] = -1
    masks = torch.rand(n_ind, N, P, P, generator=g) < 0.5
    logits = (3 * torch.randn(V, P * P, K, generator=g, dtype=torch.float64)).to(device, dtype)
    draws = torch.randint(0, V, (Q, S, 2), generator=g)
    classes = torch.randint(0, K, (Q, 2), generator=g)
    return table, pairs.to(device), masks.to(device), logits, draws.to(device), classes.to(device)


SHAPES = [(1, 1, 1), (5, 4, 3), (9, 7, 4), (3, 2, 2), (6, 1, 5)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n_ind,N,P", SHAPES)
@pytest.mark.parametrize("image_weight", [0.0, 0.7])
def test_dispatch_matches_reference_float64(device, n_ind, N, P, image_weight):
    args = make_inputs(n_ind, N, P, device=device)
    ref = population_fitness_reference(*args, image_weight)
    out = population_fitness(*args, image_weight=image_weight)
    assert out.dtype == torch.float64 and out.shape == (n_ind,)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_cpu_kernel_is_compiled():
    if not build_info()["extension"]:
        pytest.skip("patchmix._C is not built: the reference serves the CPU")
    assert backends()["ops"]["population_fitness"]["cpu"].startswith("C++")


def test_empty_individual_is_nan_and_inactive_slots_ignored():
    table, pairs, masks, *_ = make_inputs(3, 4, 2, inactive=0.0)
    pairs[0] = -1
    out = population_fitness(table, pairs, masks)
    assert torch.isnan(out[0]) and not torch.isnan(out[1:]).any()
    # an individual with slot 3 inactive = the same individual cut to 3 slots
    pairs[1, 3] = -1
    out = population_fitness(table, pairs, masks)
    cut = population_fitness(table, pairs[1:2, :3].contiguous(), masks[1:2, :3].contiguous())
    torch.testing.assert_close(out[1:2], cut)
    # zero individuals
    assert population_fitness(table, pairs[:0], masks[:0]).shape == (0,)


def test_patch_term_by_hand():
    table = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]], dtype=torch.float64)  # Q=1, P=2
    masks = torch.tensor([[[[True, False], [False, True]]]])
    out = population_fitness(table, torch.zeros(1, 1, dtype=torch.int64), masks)
    assert out.item() == pytest.approx((2.0 + 3.0 + 5.0 + 8.0) / 4)


def test_float32_matches_float64():
    args64 = make_inputs(8, 6, 4)
    args32 = [a.float() if a.is_floating_point() else a for a in args64]
    for w in (0.0, 1.3):
        torch.testing.assert_close(population_fitness(*args32, image_weight=w).double(),
                                   population_fitness(*args64, image_weight=w), rtol=1e-5, atol=1e-5)


def test_noncontiguous_inputs():
    table, pairs, masks, logits, draws, classes = make_inputs(6, 5, 3)
    pt = pairs.t().contiguous().t()
    mt = masks.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not pt.is_contiguous() and not mt.is_contiguous()
    torch.testing.assert_close(population_fitness(table, pt, mt, logits, draws, classes, 0.5),
                               population_fitness_reference(table, pairs, masks, logits, draws, classes, 0.5),
                               equal_nan=True)


@pytest.mark.parametrize("n_ind,P,interaction,image_weight", [
    (4000, 4, False, 0.3),  # image term: ~1800 individuals a task (the C++ kernel's grain), so several tasks
    (1000, 8, True, 0.0),  # interaction table at P = 8: ~455 individuals a task
])
def test_thread_count_does_not_change_results(n_ind, P, interaction, image_weight):
    args = make_inputs(n_ind, 9, P, inactive=0.1, interaction=interaction)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = population_fitness(*args, image_weight=image_weight)
        torch.set_num_threads(2)
        two = population_fitness(*args, image_weight=image_weight)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize("image_weight", [0.0, 0.5])
def test_triton_launcher_matches_reference(image_weight):
    launcher = triton_launcher("population_fitness")
    dev = triton_device()
    for n_ind, N, P in [(3, 5, 4), (2, 3, 3)]:  # interpreter: keep tiny
        args = make_inputs(n_ind, N, P, device=dev, K=5, S=2)
        torch.testing.assert_close(launcher(*args, image_weight), population_fitness_reference(*args, image_weight),
                                   rtol=1e-10, atol=1e-10, equal_nan=True)


def test_triton_launcher_checks_in_the_kernel():
    """Out-of-range ids are clamped (never read out of bounds) and reported through the device status word."""
    launcher = triton_launcher("population_fitness")
    dev = triton_device()
    table, pairs, masks, logits, draws, classes = make_inputs(2, 2, 2, device=dev)
    check_errors(dev)
    pairs[0, 0] = 99
    out = launcher(table, pairs, masks, None, None, None, 0.0)
    assert out.shape == (2,)
    with pytest.raises(ValueError, match=r"population_fitness: pairs holds a value out of range .*detected on the device"):
        check_errors(dev)
    pairs[0] = 1  # individual 0 uses pair 1 only; only values the kernel reads are checked
    draws[1, 0, 0] = -3
    classes[1, 1] = logits.shape[2]
    launcher(table, pairs, masks, logits, draws, classes, 0.5)
    with pytest.raises(ValueError, match=r"draws holds a value out of range.*pair_classes holds a value out of range"):
        check_errors(dev)
    check_errors(dev)  # reset by the read above


def test_opcheck():
    args = make_inputs(4, 3, 4)
    torch.library.opcheck(torch.ops.patchmix.population_fitness.default, (*args, 0.0))
    torch.library.opcheck(torch.ops.patchmix.population_fitness.default, (*args, 0.4))


def test_torch_compile_fullgraph():
    args = make_inputs(5, 4, 4, inactive=0.0)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(table, pairs, masks):
        return population_fitness(table, pairs, masks) * 2

    torch.testing.assert_close(f(*args[:3]), 2 * population_fitness_reference(*args[:3], None, None, None, 0.0))


# -------------------------------------------------------------------------------------------------
# bad input
# -------------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    table, pairs, masks, logits, draws, classes = make_inputs(2, 3, 2)
    cases = [
        ((table.int(), pairs, masks), {}, "table has dtype"),
        ((table, pairs.int(), masks), {}, "pairs must be int64"),
        ((table, pairs, masks.int()), {}, "masks must be a bool"),
        ((table, pairs, masks[0]), {}, r"masks must have shape \(I, N, P, P\)"),
        ((table, pairs[:, :2], masks), {}, r"pairs must have shape \(I, N\) = \(2, 3\)"),
        ((table[:, :3], pairs, masks), {}, r"table must have shape \(Q, P\*P, 2\)"),
        ((table, pairs, masks), {"image_weight": 1.0}, "needs logits"),
        ((table, pairs, masks, logits.float(), draws, classes), {"image_weight": 1.0}, "logits has dtype"),
        ((table, pairs, masks, logits, draws[:3], classes), {"image_weight": 1.0}, r"draws must have shape \(Q, S, 2\)"),
        ((table, pairs, masks, logits, draws, classes[:, :1]), {"image_weight": 1.0}, "pair_classes must have shape"),
        ((table, pairs, masks), {"image_weight": float("nan")}, "image_weight must be finite"),
        (("x", pairs, masks), {}, "table must be a torch.Tensor"),
    ]
    for args, kwargs, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg):
            population_fitness(*args, **kwargs)


@pytest.mark.parametrize("impl", ["cpp", "reference"])
def test_out_of_range_indices_are_errors_not_reads(impl):
    def ref(table, pairs, masks, logits=None, draws=None, classes=None, image_weight=0.0):
        return population_fitness_reference(table, pairs, masks, logits, draws, classes, image_weight)

    fn = population_fitness if impl == "cpp" else ref
    table, pairs, masks, logits, draws, classes = make_inputs(2, 3, 2)
    Q, V, K = table.shape[0], logits.shape[0], logits.shape[2]
    for bad in (-2, Q):
        p = pairs.clone()
        p[1, 2] = bad
        with pytest.raises(ValueError, match=f"pairs holds {bad}"):
            fn(table, p, masks)
    d = draws.clone()
    d[0, 0, 1] = V
    with pytest.raises(ValueError, match=f"draws holds {V}"):
        fn(table, pairs, masks, logits, d, classes, image_weight=1.0)
    c = classes.clone()
    c[2, 0] = K + 3
    with pytest.raises(ValueError, match=f"pair_classes holds {K + 3}"):
        fn(table, pairs, masks, logits, draws, c, image_weight=1.0)
    # without the image term the image tensors are not read
    fn(table, pairs, masks, logits, d, c, image_weight=0.0)


# -------------------------------------------------------------------------------------------------
# the interaction table (Q, P*P, 2, P*P)
# -------------------------------------------------------------------------------------------------


def brute_force(table, pairs, masks, logits=None, draws=None, pair_classes=None, image_weight=0.0):
    """float64 fitness straight from the contract's definition, one slot, cell and cell pair at a time (3-D or
    4-D table)."""
    t = table.double().tolist()
    interaction = table.dim() == 4
    n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
    PP = P * P
    out = []
    for i in range(n_ind):
        total, count = 0.0, 0
        for k in range(N):
            q = int(pairs[i, k])
            if q < 0:
                continue
            count += 1
            x = [int(b) for b in masks[i, k].reshape(-1).tolist()]
            patch = 0.0
            for n in range(PP):
                row = t[q][n][x[n]]
                if not interaction:
                    patch += row
                    continue
                patch += row[n]
                for m in range(PP):
                    if m != n and x[m] != x[n]:
                        patch += row[m]
            slot = patch / PP
            if image_weight:
                lam = sum(x) / PP
                ci, cj = pair_classes[q].tolist()
                img = 0.0
                for a, b in draws[q].tolist():
                    u = sum(logits[a if x[n] else b, n].double() for n in range(PP)) / PP  # (K,)
                    logp = torch.log_softmax(u, 0)
                    img += lam * logp[ci].item() + (1 - lam) * logp[cj].item()
                slot += image_weight * img / draws.shape[1]
            total += slot
        out.append(total / count if count else float("nan"))
    return torch.tensor(out, dtype=torch.float64)


def _backend(name):
    """``fn(table, pairs, masks, logits, draws, pair_classes, image_weight)`` and the device it runs on."""
    if name == "reference":
        return population_fitness_reference, "cpu"
    if name == "cpp":  # the dispatcher's CPU kernel (the reference where the extension is not built)
        return torch.ops.patchmix.population_fitness.default, "cpu"
    return triton_launcher("population_fitness"), triton_device()


def _tolerance(dtype):
    # float32: the reference and Triton accumulate in float32, up to 64 * 64 terms a slot
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)


def _interaction_case(n_ind, N, P, dtype, device, seed):
    args = list(make_inputs(n_ind, N, P, Q=5, V=9, K=4, S=2, dtype=dtype, device=device, inactive=0.3, seed=seed,
                            interaction=True))
    if n_ind > 1:
        args[1][0] = -1  # an individual without an active slot: NaN
        args[1][1, 0] = 2  # and one with at least one active slot
    return args


INTERACTION_CASES = [("reference", P) for P in (1, 2, 3, 4, 8)] + [("cpp", P) for P in (1, 2, 3, 4, 8)] + [
    ("triton", P) for P in (1, 2, 3, 4)  # interpreted on the CPU: tiny shapes
]


@pytest.mark.parametrize("backend,P", INTERACTION_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("image_weight", [0.0, 0.6])
def test_interaction_table_matches_brute_force(backend, P, dtype, image_weight):
    fn, device = _backend(backend)
    n_ind, N = (3, 3) if backend == "triton" else (5, 3)
    table, pairs, masks, logits, draws, classes = _interaction_case(n_ind, N, P, dtype, device, seed=P)
    out = fn(table, pairs, masks, logits, draws, classes, image_weight)
    want = brute_force(table.cpu(), pairs.cpu(), masks.cpu(), logits.cpu(), draws.cpu(), classes.cpu(), image_weight)
    assert out.dtype == dtype and out.shape == (n_ind,)
    assert torch.isnan(out[0]) and not torch.isnan(out[1:]).any()
    torch.testing.assert_close(out.cpu().double(), want, equal_nan=True, **_tolerance(dtype))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_interaction_table_empty_population(backend):
    fn, device = _backend(backend)
    table, pairs, masks, logits, draws, classes = make_inputs(0, 3, 2, device=device, interaction=True)
    for w in (0.0, 0.5):
        out = fn(table, pairs, masks, logits, draws, classes, w)
        assert out.shape == (0,) and out.dtype == table.dtype


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
@pytest.mark.parametrize("image_weight", [0.0, 0.6])
def test_table_3d_is_4d_with_zero_off_diagonal(backend, image_weight):
    fn, device = _backend(backend)
    table3, pairs, masks, logits, draws, classes = make_inputs(5, 3, 3, device=device, inactive=0.3)
    PP = table3.shape[1]
    table4 = table3[..., None] * torch.eye(PP, dtype=table3.dtype, device=device)[:, None, :]  # [q, n, s, n]
    three = fn(table3, pairs, masks, logits, draws, classes, image_weight)
    four = fn(table4, pairs, masks, logits, draws, classes, image_weight)
    if backend == "cpp" and build_info()["extension"]:
        assert torch.equal(three.isnan(), four.isnan())
        assert torch.equal(three.nan_to_num(), four.nan_to_num())  # the same sums in the same order
    torch.testing.assert_close(three, four, rtol=1e-14, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_interaction_non_finite_entry_in_a_used_row_is_nan(backend):
    """Off-diagonal terms are products with [x_m != x_n] on every backend: inf * 0 is NaN (see the contract)."""
    fn, device = _backend(backend)
    table, pairs, masks, *_ = make_inputs(2, 1, 2, device=device, inactive=0.0, interaction=True)
    pairs[:] = 0
    masks[:] = False
    masks[1, 0, 0, 0] = True
    table[0, 1, 0, 2] = float("inf")  # row of cell 1 on side 0 (used by both), column 2 (same side: factor 0)
    table[0, 0, 1, 3] = float("nan")  # row of cell 0 on side 1: used by individual 1 only
    out = fn(table, pairs, masks, None, None, None, 0.0)
    assert torch.isnan(out).all()
    table[0, 1, 0, 2] = 0.0
    out = fn(table, pairs, masks, None, None, None, 0.0)
    assert not torch.isnan(out[0]) and torch.isnan(out[1])


def interaction_bits() -> str:
    """The C++ kernel's results on a few interaction tables, as exact hex floats (one ISA variant per process)."""
    lines = []
    for P, dtype in ((4, torch.float64), (3, torch.float32), (8, torch.float64), (9, torch.float64)):
        out = population_fitness(*make_inputs(7, 5, P, dtype=dtype, interaction=True, seed=P)[:3])
        lines.append(" ".join(float(v).hex() for v in out.double()))
    return "\n".join(lines)


def test_interaction_every_cpu_variant_gives_the_same_bits():
    """The interaction loop is compiled per ISA (2, 4 or 8 double lanes) and sums in the same order in each:
    this process's variant (the widest the CPU runs) against the narrower ones, capped in subprocesses."""
    import os
    import pathlib
    import subprocess
    import sys

    if not build_info()["extension"]:
        pytest.skip("patchmix._C is not built: the reference serves the CPU")
    root = pathlib.Path(__file__).resolve().parents[1]
    here = interaction_bits()
    script = "from tests.test_population_fitness import interaction_bits; print(interaction_bits())"
    for isa in ("baseline", "x86-64-v3"):
        env = {**os.environ, "PATCHMIX_CPU_ISA": isa, "PYTHONPATH": str(root)}
        res = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.strip() == here, isa


def test_interaction_table_shape_errors_name_table():
    table3, pairs, masks, *_ = make_inputs(2, 3, 2)
    PP = table3.shape[1]
    launcher = triton_launcher("population_fitness")
    bad = [torch.zeros(7, PP, 2, PP - 1), torch.zeros(7, PP, 3, PP), torch.zeros(7, PP + 1, 2, PP),
           torch.zeros(7, PP, 2, PP, 1), torch.zeros(7, PP)]
    msg = r"table must have shape \(Q, P\*P, 2\) = \(Q, 4, 2\) or.* \(Q, P\*P, 2, P\*P\) = \(Q, 4, 2, 4\)"
    for t in bad:
        t = t.double()
        # the wrapper, the reference, the Triton launcher and the op itself (on the CPU: the C++ kernel's own
        # check, which LibTorch callers get)
        for fn in (population_fitness, population_fitness_reference, launcher,
                   torch.ops.patchmix.population_fitness.default):
            with pytest.raises(ValueError, match=msg):
                fn(t, pairs, masks, None, None, None, 0.0)


def test_interaction_out_of_range_pairs():
    table, pairs, masks, *_ = make_inputs(2, 3, 2, interaction=True)
    for bad in (-2, table.shape[0]):
        p = pairs.clone()
        p[1, 2] = bad
        with pytest.raises(ValueError, match=f"pairs holds {bad}"):
            population_fitness(table, p, masks)
        with pytest.raises(ValueError, match=f"pairs holds {bad}"):
            population_fitness_reference(table, p, masks, None, None, None, 0.0)


def test_interaction_triton_clamps_and_reports_pairs():
    launcher = triton_launcher("population_fitness")
    dev = triton_device()
    table, pairs, masks, *_ = make_inputs(2, 2, 2, device=dev, interaction=True)
    check_errors(dev)
    pairs[1, 1] = 99
    assert launcher(table, pairs, masks, None, None, None, 0.0).shape == (2,)
    with pytest.raises(ValueError, match=r"population_fitness: pairs holds a value out of range"):
        check_errors(dev)


def test_interaction_opcheck():
    args = make_inputs(4, 3, 3, interaction=True)
    torch.library.opcheck(torch.ops.patchmix.population_fitness.default, (*args, 0.0))
    torch.library.opcheck(torch.ops.patchmix.population_fitness.default, (*args, 0.4))


def test_interaction_torch_compile_fullgraph():
    args = make_inputs(5, 4, 4, inactive=0.0, interaction=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(table, pairs, masks):
        return population_fitness(table, pairs, masks) * 2

    torch.testing.assert_close(f(*args[:3]), 2 * population_fitness_reference(*args[:3], None, None, None, 0.0))
