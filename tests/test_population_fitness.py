"""patchmix::population_fitness: C++ and Triton kernels against the reference, in float64, on random
populations (inactive slots, empty individuals, odd sizes, with and without the image-level term)."""

import pytest
import torch

from patchmix.ops import check_errors, population_fitness, population_fitness_reference
from patchmix.ops._registry import backends, build_info
from tests.conftest import devices, triton_device, triton_launcher


def make_inputs(n_ind, N, P, Q=7, V=13, K=5, S=3, dtype=torch.float64, device="cpu", inactive=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(Q, P * P, 2, generator=g, dtype=torch.float64).to(device, dtype)
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


def test_thread_count_does_not_change_results():
    args = make_inputs(64, 9, 4, inactive=0.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = population_fitness(*args, image_weight=0.3)
        torch.set_num_threads(2)
        two = population_fitness(*args, image_weight=0.3)
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
