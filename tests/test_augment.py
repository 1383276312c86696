"""Mixing modules and label helpers: RandomPatchMix, MixupMixer, CutMixMixer, MixedBatch, soft/patch targets."""

import pytest
import torch

from patchmix import CutMixMixer, MixedBatch, MixupMixer, RandomPatchMix
from patchmix.mixing.sampling import sample_beta
from patchmix.ops import grid_mix_reference, patch_targets, soft_targets
from patchmix.ops.grid_mix import upsample_mask


def batch(B=7, C=3, H=13, W=11, K=5, dtype=torch.float32):
    x = (torch.rand(B, C, H, W) * 255).to(dtype)
    y = torch.randint(0, K, (B,))
    return x, y


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_sample_beta_moments(alpha):
    g = torch.Generator().manual_seed(1)
    s = sample_beta(alpha, 40000, g).double()
    assert s.min() >= 0 and s.max() <= 1
    var = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(s.mean() - 0.5) < 0.01
    assert abs(s.var() - var) < 0.05 * var + 2e-3


@pytest.mark.parametrize("B", [1, 2, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_random_patchmix_composition_and_labels(B, dtype):
    x, y = batch(B=B, dtype=dtype)
    mixer = RandomPatchMix(grid_size=4, generator=torch.Generator().manual_seed(0))
    out = mixer(x, y)
    assert isinstance(out, MixedBatch) and len(out) == B
    assert out.images.shape == x.shape and out.images.dtype == dtype
    assert out.mask.shape == (B, 4, 4) and out.mask.dtype == torch.bool
    assert torch.equal(out.target_a, y)
    # target_b is the partner's label and the False cells come from that partner
    full = upsample_mask(out.mask, 13, 11)[:, None]
    assert torch.equal(torch.where(full, out.images, x), x), "True cells come from x[i]"
    for i in range(B):
        sources = [j for j in range(B) if y[j] == out.target_b[i]
                   and torch.equal(torch.where(full[i], x[i], x[j]), out.images[i])]
        assert sources, f"sample {i}: the False cells must come from an image labelled target_b[{i}]"
    # lam is the realised pixel fraction
    torch.testing.assert_close(out.lam, full.float().mean((1, 2, 3)), rtol=0, atol=1e-6)


def test_random_patchmix_reproducible_and_per_sample():
    x, y = batch(B=64)
    a = RandomPatchMix(generator=torch.Generator().manual_seed(3))(x, y)
    b = RandomPatchMix(generator=torch.Generator().manual_seed(3))(x, y)
    c = RandomPatchMix(generator=torch.Generator().manual_seed(4))(x, y)
    assert torch.equal(a.images, b.images) and torch.equal(a.mask, b.mask) and torch.equal(a.lam, b.lam)
    assert not torch.equal(a.mask, c.mask)
    assert a.lam.unique().numel() > 5, "lam is drawn per sample"


def test_random_patchmix_matches_grid_mix_with_its_mask():
    x, y = batch(B=9)
    g = torch.Generator().manual_seed(5)
    out = RandomPatchMix(grid_size=3, generator=g)(x, y)
    g = torch.Generator().manual_seed(5)
    perm = torch.randperm(9, generator=g)
    ref, lam = grid_mix_reference(x, out.mask, None, perm)
    assert torch.equal(out.images, ref) and torch.equal(out.lam, lam) and torch.equal(out.target_b, y[perm])


def test_random_patchmix_prob_zero_leaves_batch_unmixed():
    x, y = batch()
    out = RandomPatchMix(prob=0.0)(x, y)
    assert torch.equal(out.images, x) and bool(out.mask.all()) and bool((out.lam == 1).all())
    out = RandomPatchMix(prob=0.5, generator=torch.Generator().manual_seed(0))(*batch(B=200))
    frac_unmixed = (out.mask.flatten(1).all(1)).float().mean()
    assert 0.35 < frac_unmixed < 0.7


def test_mixup_is_convex_combination_per_sample():
    x, y = batch(B=8)
    g = torch.Generator().manual_seed(2)
    out = MixupMixer(alpha=0.4, generator=g)(x, y)
    g = torch.Generator().manual_seed(2)
    perm = torch.randperm(8, generator=g)
    lam = out.lam[:, None, None, None]
    torch.testing.assert_close(out.images, lam * x + (1 - lam) * x[perm])
    assert out.mask is None and torch.equal(out.target_b, y[perm])
    # uint8 images blend in float32 and round half to even, as timm's FastCollateMixup does
    x8 = x.to(torch.uint8)
    out8 = MixupMixer(alpha=0.4, generator=torch.Generator().manual_seed(2))(x8, y)
    w = out8.lam.double()[:, None, None, None]
    want = torch.round(x8.float() * w.float() + x8[perm].float() * (1 - w).float()).to(torch.uint8)
    assert out8.images.dtype == torch.uint8 and torch.equal(out8.images, want)
    with pytest.raises(ValueError, match="floating or uint8"):
        MixupMixer()(x.to(torch.int32), y)


def test_cutmix_lam_is_exact_clipped_area():
    x, y = batch(B=50, H=17, W=23)
    out = CutMixMixer(alpha=1.0, generator=torch.Generator().manual_seed(0))(x, y)
    differs_from_self = (out.images != x).any(1)  # (B, H, W): pasted pixels (x has no ties almost surely)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(50, generator=g)
    same_image = perm == torch.arange(50)
    area = 1 - differs_from_self.float().mean((1, 2))
    torch.testing.assert_close(out.lam[~same_image], area[~same_image], rtol=0, atol=1e-6)
    assert out.lam.min() >= 0 and out.lam.max() <= 1
    assert out.mask is None
    pasted = differs_from_self[~same_image]
    rows, cols = pasted.any(2), pasted.any(1)
    assert torch.equal(pasted, rows[:, :, None] & cols[:, None, :]), "the pasted region is one box"


def test_cutmix_reproducible_uint8():
    x, y = batch(dtype=torch.uint8)
    a = CutMixMixer(generator=torch.Generator().manual_seed(9))(x, y)
    b = CutMixMixer(generator=torch.Generator().manual_seed(9))(x, y)
    assert torch.equal(a.images, b.images) and torch.equal(a.lam, b.lam) and a.images.dtype == torch.uint8


@pytest.mark.parametrize("bad", [
    (lambda: RandomPatchMix(grid_size=0), "grid_size"),
    (lambda: RandomPatchMix(alpha=0), "alpha"),
    (lambda: RandomPatchMix(prob=1.5), "prob"),
    (lambda: CutMixMixer(alpha=-1), "alpha"),
])
def test_mixer_arguments_validated(bad):
    make, word = bad
    with pytest.raises(ValueError, match=word):
        make()


def test_mixer_input_validated():
    x, y = batch()
    with pytest.raises(ValueError, match=r"y must be int64 labels of shape \(B,\)"):
        RandomPatchMix()(x, y[:3])
    with pytest.raises(ValueError, match="int64"):
        RandomPatchMix()(x, y.int())
    with pytest.raises(ValueError, match=r"x must be images of shape \(B, C, H, W\)"):
        CutMixMixer()(x[0], y)
    with pytest.raises(ValueError, match="grid size P = 16"):
        RandomPatchMix(grid_size=16)(x, y)


def test_soft_targets_definition_and_smoothing():
    ta, tb = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0])
    lam = torch.tensor([0.25, 0.5, 1.0])
    soft = soft_targets(ta, tb, lam, 4)
    want = lam[:, None] * torch.nn.functional.one_hot(ta, 4) + (1 - lam[:, None]) * torch.nn.functional.one_hot(tb, 4)
    torch.testing.assert_close(soft, want.float())
    smooth = soft_targets(ta, tb, lam, 4, label_smoothing=0.1)
    torch.testing.assert_close(smooth, 0.9 * want.float() + 0.1 / 4)
    torch.testing.assert_close(smooth.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match=r"target_a holds label 4, outside \[0, 4\)"):
        soft_targets(torch.tensor([4, 0, 0]), tb, lam, 4)


def test_patch_targets_row_major():
    ta, tb = torch.tensor([7, 3]), torch.tensor([1, 9])
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    assert patch_targets(ta, tb, mask).tolist() == [[7, 1, 1, 1], [9, 9, 9, 3]]


def test_mixed_batch_helpers():
    x, y = batch()
    out = MixupMixer()(x, y)
    with pytest.raises(ValueError, match="needs a grid mask"):
        out.patch_targets()
    plain = MixedBatch.unmixed(x, y, grid_size=2)
    assert bool((plain.lam == 1).all()) and plain.patch_targets().tolist() == [[int(t)] * 4 for t in y]
    torch.testing.assert_close(plain.soft_targets(5), torch.nn.functional.one_hot(y, 5).float())
    moved = out.to("cpu")
    assert moved.mask is None and torch.equal(moved.images, out.images)


# ------------------------------------------------------------------------------------------------
# sampling without host reads: meta tensors, torch.compile, fixed rounds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("generator", [None, torch.Generator().manual_seed(0)])
@pytest.mark.parametrize("mixer", [RandomPatchMix, MixupMixer, CutMixMixer])
def test_mixers_run_on_meta_tensors(mixer, generator, monkeypatch):
    """The whole forward (sampling, composition, labels) runs on ``meta`` tensors, which have no data: any host
    read of device data (``.item()``, ``bool()``, ``.tolist()``, a copy to the CPU) would raise there."""
    for name in ("item", "tolist", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, **k: pytest.fail(f"host read: {_n}"))
    x = torch.empty(7, 3, 13, 11, device="meta")
    y = torch.empty(7, dtype=torch.int64, device="meta")
    kwargs = {"grid_size": 4} if mixer is RandomPatchMix else {}
    out = mixer(generator=generator, **kwargs)(x, y)
    assert out.images.device.type == "meta" and out.images.shape == x.shape
    assert out.lam.shape == (7,) and out.lam.dtype == torch.float32 and out.target_b.shape == (7,)
    if mixer is RandomPatchMix:
        assert out.mask.shape == (7, 4, 4) and out.mask.device.type == "meta"


def test_sampling_compiles_fullgraph():
    torch._dynamo.reset()
    mixer = RandomPatchMix(grid_size=4, alpha=0.5, prob=0.8)
    masks = torch.compile(lambda: mixer.sample_masks(64, torch.device("cpu")), fullgraph=True)()
    assert masks.shape == (64, 4, 4) and masks.dtype == torch.bool
    boxes = torch.compile(lambda: CutMixMixer(alpha=1.0).boxes(32, 17, 23, torch.device("cpu")), fullgraph=True)()
    assert boxes.shape == (32, 4) and bool((boxes[:, 0] <= boxes[:, 1]).all())
    lam = torch.compile(lambda: sample_beta(0.3, 1000), fullgraph=True)()
    assert lam.shape == (1000,) and bool(((lam >= 0) & (lam <= 1)).all())


@pytest.mark.parametrize("alpha", [0.05, 1.0, 50.0])
def test_gamma_rounds_almost_never_fall_back(alpha):
    """Every draw finds an accepted proposal within GAMMA_ROUNDS (the fallback's probability is < 2e-16), and the
    Gamma mean and variance (both equal to the shape) come out right."""
    from patchmix.mixing.sampling import GAMMA_ROUNDS, sample_gamma_rounds

    assert GAMMA_ROUNDS >= 12
    g = torch.Generator().manual_seed(3)
    s = sample_gamma_rounds(alpha, 200_000, g)
    assert torch.isfinite(s).all() and bool((s >= 0).all())
    torch.testing.assert_close(s.mean().item(), alpha, rtol=0.02, atol=1e-3)
    torch.testing.assert_close(s.var().item(), alpha, rtol=0.05, atol=1e-3)


def test_generator_on_the_data_device_is_used_directly():
    g1 = torch.Generator().manual_seed(11)
    g2 = torch.Generator().manual_seed(11)
    mixer = RandomPatchMix(generator=g1)
    assert mixer.draw_generator(torch.device("cpu")) is g1
    mask = mixer.sample_masks(5, torch.device("cpu"))
    lam = sample_beta(1.0, 5, g2)
    want = torch.rand(5, 4, 4, generator=g2) < lam[:, None, None]
    assert torch.equal(mask, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_without_host_sync_and_reproducible_from_a_cpu_generator():
    x = torch.rand(64, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    outs = []
    for _ in range(2):
        mixers = [RandomPatchMix(generator=torch.Generator().manual_seed(5)), MixupMixer(generator=torch.Generator().manual_seed(5)),
                  CutMixMixer(generator=torch.Generator().manual_seed(5))]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs.append([m(x, y) for m in mixers])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.lam, b.lam)


@pytest.mark.parametrize("old, new", [("Mixup", "MixupMixer"), ("CutMix", "CutMixMixer")])
def test_the_names_that_borrowed_timms_say_what_to_use(old, new):
    """``patchmix.Mixup`` took one alpha where timm's ``Mixup`` takes ``mixup_alpha``, ``cutmix_alpha``, ...: the old
    name is gone and its error names both ``patchmix.Mix`` (timm's arguments) and the single-method mixer."""
    import patchmix

    with pytest.raises(AttributeError, match=rf"patchmix\.{old} was renamed: patchmix\.Mix\(.*patchmix\.{new}\(alpha\)"):
        getattr(patchmix, old)
    assert not hasattr(patchmix.mixing, old)
    with pytest.raises(AttributeError, match="has no attribute 'Mixer'"):
        patchmix.Mixer  # noqa: B018
