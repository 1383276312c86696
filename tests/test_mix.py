"""patchmix.Mix (timm's Mixup knobs + PatchMix) and MixedBatch (apply, labels, converters): every image and label
against a per-sample reference written as loops; timm's and Kornia's algorithms where their semantics coincide."""

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from patchmix import Mix, MixedBatch
from patchmix.ops.grid_mix import upsample_mask

K = 5


def make_batch(B=7, C=3, H=13, W=11, dtype=torch.float32, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * 255)
    x = x.round().to(dtype) if dtype == torch.uint8 else x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, K, (B,), generator=g)


def reference_images(x, batch: MixedBatch):
    """The composition rule, one sample and one step at a time."""
    out = []
    H, W = x.shape[-2:]
    for n in range(len(batch)):
        a, b = x[batch.index_a[n]], x[batch.index_b[n]]
        img = a.clone()
        if batch.mask is not None:
            full = upsample_mask(batch.mask[n:n + 1], H, W)[0]
            img = torch.where(full, a, b)
        if batch.box is not None:
            t, bo, le, r = batch.box[n].tolist()
            img[..., t:bo, le:r] = b[..., t:bo, le:r]
        if batch.blend is not None and batch.blend[n] < 1:
            w = float(batch.blend[n])  # timm's arithmetic: Python floats, rounded to the dtype
            if x.is_floating_point():
                img = a * torch.tensor(w, dtype=x.dtype) + b * torch.tensor(1 - w, dtype=x.dtype)
            else:
                img = torch.round(a.float() * torch.tensor(w) + b.float() * torch.tensor(1 - w)).to(x.dtype)
        out.append(img)
    return torch.stack(out) if out else x[:0].clone()


def source_map(batch: MixedBatch, B, H, W):
    """Per pixel, the input row it came from (Mixup samples: the larger weight's)."""
    rows = torch.arange(B, dtype=torch.int64)[:, None, None].expand(B, H, W).contiguous()
    return batch.apply(rows, discrete=True)


def assert_images(got, want, ulps=2):
    """Exact, except floating blends: one addcmul there (the rounding of a * w + b * (1 - w) within an ulp)."""
    if got.is_floating_point():
        torch.testing.assert_close(got, want, rtol=ulps * torch.finfo(got.dtype).eps, atol=0)
    else:
        assert torch.equal(got, want)


def check_batch(x, y, batch: MixedBatch):
    B, _, H, W = x.shape
    assert_images(batch.images, reference_images(x, batch))
    assert torch.equal(batch.apply(x), batch.images), "apply(input) reproduces the images"
    assert batch.images.dtype == x.dtype
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.target_a, y[batch.index_a]) and torch.equal(batch.target_b, y[batch.index_b])
    # lam: the Mixup weight, else the exact pixel fraction from source a
    src = source_map(batch, B, H, W)
    frac = (src == batch.index_a[:, None, None]).double().mean((1, 2))
    blended = batch.blend < 1 if batch.blend is not None else torch.zeros(B, dtype=torch.bool)
    self_paired = batch.index_a == batch.index_b
    exact = ~blended & ~self_paired
    torch.testing.assert_close(batch.lam[exact].double(), frac[exact], rtol=0, atol=1e-6)
    if blended.any():
        assert torch.equal(batch.lam[blended], batch.blend[blended])
    assert bool(((batch.lam >= 0) & (batch.lam <= 1)).all())


ALL = dict(mixup_alpha=0.8, cutmix_alpha=1.0, patchmix_alpha=1.0)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.float64, True), (torch.uint8, False),
                                                 (torch.uint8, True), (torch.float16, False)])
def test_every_mode_matches_the_per_sample_reference(mode, dtype, channels_last):
    x, y = make_batch(B=9, dtype=dtype, channels_last=channels_last)  # odd batch, 13x11 not divisible by P = 4
    for seed in range(6):
        mix = Mix(**ALL, prob=0.8, mode=mode, generator=torch.Generator().manual_seed(seed))
        batch = mix(x, y)
        check_batch(x, y, batch)
        # into a preallocated buffer (the collate's shared memory): the same images, in that buffer
        out = torch.empty_like(x)
        again = mix(x, y, generator=torch.Generator().manual_seed(seed), out=out)
        assert again.images is out and torch.equal(out, batch.images) and torch.equal(again.lam, batch.lam)


@pytest.mark.parametrize("method", ["mixup", "cutmix", "patchmix"])
def test_batch_mode_draws_one_method_and_one_lam_per_batch(method):
    x, y = make_batch(B=8, H=16, W=16)
    for seed in range(5):
        batch = Mix(**{f"{m}_alpha": 1.0 if m == method else 0.0 for m in ("mixup", "cutmix", "patchmix")},
                    mode="batch", generator=torch.Generator().manual_seed(seed))(x, y)
        check_batch(x, y, batch)
        assert batch.lam.unique().numel() == 1, "one lam for the batch"
        if method == "cutmix":
            assert (batch.box == batch.box[0]).all() and batch.mask is None and batch.blend is None
        if method == "patchmix":
            assert (batch.mask == batch.mask[0]).all() and batch.has_grid is None
        if method == "mixup":
            assert batch.mask is None and batch.box is None


def test_elem_mode_chooses_per_sample_with_weights_and_prob():
    x, y = make_batch(B=4000, C=1, H=8, W=8)
    batch = Mix(**ALL, weights={"mixup": 0.2, "cutmix": 0.3, "patchmix": 0.5}, prob=0.6, mode="elem",
                generator=torch.Generator().manual_seed(0))(x, y)
    grid = batch.has_grid
    boxed = (batch.box[:, 1] > batch.box[:, 0]) & (batch.box[:, 3] > batch.box[:, 2])
    blended = batch.blend < 1
    assert not (grid & (boxed | blended)).any() and not (boxed & blended).any(), "one method per sample"
    assert 0.46 < grid.float().mean() < 0.54  # the method is drawn whatever the gate
    mixed_grid = grid & ~batch.mask.flatten(1).all(1)
    assert 0.26 < mixed_grid.float().mean() < 0.34  # 0.5 * 0.6
    assert 0.14 < boxed.float().mean() < 0.22 and 0.09 < blended.float().mean() < 0.15
    unmixed = ~(mixed_grid | boxed | blended)
    assert torch.equal(batch.images[unmixed], x[unmixed]) and bool((batch.lam[unmixed] == 1).all())


def test_switch_prob_is_timms_mixup_cutmix_switch():
    x, y = make_batch(B=4000, C=1, H=8, W=8)
    batch = Mix(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.25, mode="elem",
                generator=torch.Generator().manual_seed(1))(x, y)
    cut = (batch.box[:, 1] > batch.box[:, 0]).float().mean()
    assert 0.2 < cut < 0.3 and batch.mask is None
    with pytest.raises(ValueError, match="switch_prob switches between Mixup and CutMix only"):
        Mix(**ALL, switch_prob=0.5)
    with pytest.raises(ValueError, match="either switch_prob"):
        Mix(**ALL, switch_prob=0.5, weights=(1, 1, 1))


def test_pair_mode_partners_share_their_draws():
    x, y = make_batch(B=10, H=12, W=12)
    batch = Mix(**ALL, mode="pair", generator=torch.Generator().manual_seed(3))(x, y)
    p = batch.index_b
    assert torch.equal(p[p], torch.arange(10)), "pairs"
    assert torch.equal(batch.lam, batch.lam[p]) and torch.equal(batch.mask, batch.mask[p])
    assert torch.equal(batch.box, batch.box[p]) and torch.equal(batch.blend, batch.blend[p])
    # a grid or box pair's two outputs are complementary composites of the two images
    for i in range(10):
        j = int(p[i])
        if batch.blend[i] == 1:
            assert torch.equal(torch.sort(torch.stack([batch.images[i], batch.images[j]]), 0).values,
                               torch.sort(torch.stack([x[i], x[j]]), 0).values)


def test_flip_pairing_is_timms_reversed_batch():
    x, y = make_batch(B=6)
    for mode in ("batch", "elem", "pair"):
        batch = Mix(**ALL, mode=mode, pairing="flip", generator=torch.Generator().manual_seed(0))(x, y)
        assert torch.equal(batch.index_b, torch.arange(5, -1, -1))


# ------------------------------------------------------------------------------------------------
# CutMix boxes (timm's own code checks them draw for draw: tests/test_timm_parity.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_cutmix_boxes_have_timms_side_int_h_sqrt_one_minus_lam(mode):
    """An unclipped box has exactly ``int(H * sqrt(1 - lam))`` rows and ``int(W * ...)`` columns, odd sides included
    (``cut // 2`` before the centre, ``(cut + 1) // 2`` from it on: timm 1.0's ``rand_bbox``)."""
    H, W = 32, 29
    x, y = make_batch(B=64, C=1, H=H, W=W)
    odd = 0
    for seed in range(40 if mode == "batch" else 4):
        batch = Mix(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False, mode=mode,
                    generator=torch.Generator().manual_seed(seed))(x, y)
        ratio = torch.sqrt(1 - batch.lam.double() if mode == "batch" else 1 - batch.lam)  # float32 in elem, pair
        top, bottom, left, right = batch.box.unbind(1)
        inside = (top > 0) & (bottom < H) & (left > 0) & (right < W)
        assert torch.equal((bottom - top)[inside], (H * ratio).long()[inside])
        assert torch.equal((right - left)[inside], (W * ratio).long()[inside])
        odd += int(((bottom - top)[inside] % 2 == 1).sum())
    assert odd > 5, "odd sides were drawn"


def test_cutmix_minmax_boxes_lie_inside_the_image():
    x, y = make_batch(B=2000, C=1, H=20, W=30)
    batch = Mix(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8), mode="elem", generator=torch.Generator().manual_seed(0))(x, y)
    top, bottom, left, right = batch.box.unbind(1)
    h, w = bottom - top, right - left
    assert h.min() == 4 and h.max() == 15 and w.min() == 6 and w.max() == 23  # [int(S * .2), int(S * .8))
    assert bool((top >= 0).all() and (bottom <= 20).all() and (left >= 0).all() and (right <= 30).all())
    assert int(top.min()) == 0 and int(bottom.max()) == 20, "the corner ranges over [0, S - side], both edges"
    torch.testing.assert_close(batch.lam, 1 - (h * w).float() / 600)
    check_batch(x[:50], y[:50], Mix(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8), mode="elem",
                                    generator=torch.Generator().manual_seed(0))(x[:50], y[:50]))
    with pytest.raises(ValueError, match="cutmix_minmax"):
        Mix(mixup_alpha=0.0, cutmix_minmax=(0.5, 0.6))(*make_batch(H=4, W=4))


def test_correct_lam_false_keeps_the_beta_draw():
    x, y = make_batch(B=64, H=9, W=9)
    exact = Mix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", generator=torch.Generator().manual_seed(0))(x, y)
    drawn = Mix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", correct_lam=False,
                generator=torch.Generator().manual_seed(0))(x, y)
    assert torch.equal(exact.images, drawn.images) and not torch.equal(exact.lam, drawn.lam)
    check_batch(x, y, exact)


# ------------------------------------------------------------------------------------------------
# labels: soft inputs, dense targets, Kornia's rows
# ------------------------------------------------------------------------------------------------


def test_soft_labels_chain_two_mixers():
    x, y = make_batch(B=7)
    first = Mix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", label_smoothing=0.0,
                generator=torch.Generator().manual_seed(0))(x, y)
    soft = first.to_dense(K)
    second = Mix(**ALL, mode="elem", label_smoothing=0.1, generator=torch.Generator().manual_seed(1))(first.images, soft)
    assert second.dense and second.target_a.shape == (7, K)
    want = [second.lam[n] * soft[n] + (1 - second.lam[n]) * soft[second.index_b[n]] for n in range(7)]
    torch.testing.assert_close(second.to_dense(K), 0.9 * torch.stack(want) + 0.1 / K)
    torch.testing.assert_close(second.to_dense(K).sum(1), torch.ones(7))
    patch = second.patch_targets()
    assert patch.shape == (7, 16, K)
    with pytest.raises(ValueError, match="soft labels have 5 classes, not 6"):
        second.to_dense(6)


def test_kornia_label_rows_round_trip():
    x, y = make_batch(B=6)
    batch = Mix(mixup_alpha=1.0, mode="elem", generator=torch.Generator().manual_seed(0))(x, y)
    for fmt in ("mixup", "cutmix"):
        rows = batch.to_kornia(fmt)
        assert rows.shape == ((6, 3) if fmt == "mixup" else (1, 6, 3))
        back = MixedBatch.from_kornia(batch.images, rows)
        torch.testing.assert_close(back.to_dense(K), batch.to_dense(K, 0.0))
    with pytest.raises(ValueError, match="num_mix > 1"):
        MixedBatch.from_kornia(x, torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match="does not know its pairs"):
        MixedBatch.from_kornia(x, batch.to_kornia()).apply(x)


def test_kornia_mixup_labels_mean_what_kornia_trains():
    from kornia.augmentation import RandomMixUpV2

    x, y = make_batch(B=6)
    torch.manual_seed(0)
    mixup = RandomMixUpV2(data_keys=["input", "class"])
    images, rows = mixup(x, y)
    batch = MixedBatch.from_kornia(images, rows)
    logits = torch.randn(6, K, dtype=torch.float64)
    # Kornia's documented loss: (1 - lam) * CE(y) + lam * CE(y_perm)
    kornia_loss = ((1 - rows[:, 2].double()) * F.cross_entropy(logits, rows[:, 0].long(), reduction="none")
                   + rows[:, 2].double() * F.cross_entropy(logits, rows[:, 1].long(), reduction="none")).mean()
    ours = -(batch.to_dense(K, 0.0).double() * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(ours, kornia_loss)


def test_cutmix_cross_checks_kornia_random_cutmix_v2():
    """Kornia draws fully inside boxes, patchmix (like timm and torchvision) clips centred ones; given Kornia's
    pairs and boxes, patchmix's composition and lam (the exact remaining area) are Kornia's."""
    from kornia.augmentation import RandomCutMixV2

    from patchmix.mixing.batch import compose

    for seed in range(5):
        x, y = make_batch(B=7, H=13, W=11, seed=seed)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cutmix = RandomCutMixV2(use_correct_lambda=True, data_keys=["input", "class"])
        images, rows = cutmix(x, y)
        pairs, crop = cutmix._params["mix_pairs"][0], cutmix._params["crop_src"][0].long()  # (B,), (B, 4, 2) x, y
        box = torch.stack([crop[:, 0, 1], crop[:, 2, 1] + 1, crop[:, 0, 0], crop[:, 2, 0] + 1], 1)  # inclusive ends
        ours, _ = compose(x, None, pairs, box=box)
        torch.testing.assert_close(ours, images, rtol=0, atol=0)
        lam = 1 - ((box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])).double() / (13 * 11)
        batch = MixedBatch.from_kornia(images, rows)
        torch.testing.assert_close(batch.lam.double(), lam, rtol=0, atol=1e-6)
        assert torch.equal(batch.target_a, y) and torch.equal(batch.target_b, y[pairs])


def test_compose_refuses_a_number_blend_with_a_grid_or_box():
    """One number blends the whole batch only when the blend is the composition's one step."""
    from patchmix.mixing.batch import compose

    x, _ = make_batch(B=4, H=8, W=8)
    partners = torch.tensor([1, 0, 3, 2])
    mask = torch.ones(4, 2, 2, dtype=torch.bool)
    box = torch.tensor([[0, 4, 0, 4]] * 4)
    for step in ({"mask": mask}, {"box": box}):
        with pytest.raises(TypeError, match="blend"):
            compose(x, None, partners, blend=0.5, **step)
    ours, _ = compose(x, None, partners, blend=0.25)  # alone, a number is the weight of every sample
    torch.testing.assert_close(ours, compose(x, None, partners, blend=torch.full((4,), 0.25))[0], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# apply: other per-sample tensors
# ------------------------------------------------------------------------------------------------


def test_apply_mixes_segmentation_maps_views_and_weight_maps():
    x, y = make_batch(B=9, H=16, W=12)
    batch = Mix(**ALL, mode="elem", generator=torch.Generator().manual_seed(4))(x, y)
    seg = torch.randint(0, 21, (9, 16, 12))
    for dtype in (torch.int64, torch.uint8):
        out = batch.apply(seg.to(dtype), discrete=True)
        assert out.dtype == dtype and out.shape == (9, 16, 12)
        src = source_map(batch, 9, 16, 12)
        assert torch.equal(out, seg.to(dtype)[src, torch.arange(16)[:, None], torch.arange(12)])
    weights = torch.rand(9, 1, 16, 12, dtype=torch.float64)
    assert_images(batch.apply(weights), reference_images(weights, batch))
    view2 = torch.rand(9, 3, 16, 12)
    assert_images(batch.apply(view2), reference_images(view2, batch))
    # a grid applies at a coarser resolution (the cell rule), a box needs the image size
    grid_only = Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem", generator=torch.Generator().manual_seed(0))(x, y)
    half = torch.rand(9, 2, 8, 6)
    assert torch.equal(grid_only.apply(half), reference_images(half, grid_only))
    with pytest.raises(ValueError, match="t must have the images' height and width"):
        batch.apply(half)
    # Mixup-only batches mix any per-sample tensor; an integer tensor is rounded, bool takes the larger weight
    mixup = Mix(mixup_alpha=1.0, mode="elem", generator=torch.Generator().manual_seed(0))(x, y)
    emb = torch.rand(9, 32)
    w = mixup.blend[:, None]
    torch.testing.assert_close(mixup.apply(emb), emb * w + emb[mixup.index_b] * (1 - w))
    flags = torch.rand(9, 4) < 0.5
    assert torch.equal(mixup.apply(flags), torch.where(w >= 0.5, flags, flags[mixup.index_b]))


# ------------------------------------------------------------------------------------------------
# edges, errors, devices
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("B", [0, 1])
def test_empty_and_single_sample_batches(mode, B):
    x, y = make_batch(B=B)
    for seed in range(3):
        batch = Mix(**ALL, mode=mode, generator=torch.Generator().manual_seed(seed))(x, y)
        assert len(batch) == B and batch.images.shape == x.shape
        if B == 1:  # paired with itself: unchanged (up to float rounding of w * a + (1 - w) * a)
            torch.testing.assert_close(batch.images, x)
            assert torch.equal(batch.target_b, y)


def test_disabled_and_unmixed():
    x, y = make_batch()
    mix = Mix(**ALL, enabled=False)
    batch = mix(x, y)
    assert torch.equal(batch.images, x) and (batch.lam == 1).all() and batch.mask.all()
    assert batch.label_smoothing == 0.1 and "enabled=False" in repr(mix)
    assert Mix(mixup_alpha=1.0, enabled=False)(x, y).mask is None  # no grid without PatchMix
    out = torch.empty_like(x)
    assert mix(x, y, out=out).images is out and torch.equal(out, x)
    # Mix.enabled is its switch's (timm's mixup_enabled, set by a training loop)
    mix.enabled = True
    assert mix.switch.enabled and bool((mix(x, y).lam < 1).any())
    mix.switch.enabled = False
    assert not mix.enabled and bool((mix(x, y).lam == 1).all())


def test_one_switch_decides_whether_a_batch_mixes():
    """MixSwitch is the rule behind Mix.enabled, MixCollate(mix_off_epoch=) and train.mix_off_epoch: off from
    ``off_epoch`` on (timm's --mixup-off-epoch, 0 or None: never), never while disabled."""
    from patchmix.mixing.switch import MixSwitch

    assert all(MixSwitch().mixes(e) and MixSwitch(0).mixes(e) for e in (None, 0, 5, 10**6))
    three = MixSwitch(3)
    assert [three.mixes(e) for e in range(5)] == [True, True, True, False, False]
    assert three.mixes(None), "an unknown epoch: only enabled decides"
    assert not any(MixSwitch(3, enabled=False).mixes(e) for e in (None, 0, 2))
    for bad in (-1, 1.5, float("inf"), "2", True):
        with pytest.raises(ValueError, match="off_epoch must be an integer >= 0"):
            MixSwitch(bad)


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("kwargs,word", [
    (dict(mixup_alpha=0.0), "no method is on"),
    (dict(mixup_alpha=-1.0), "mixup_alpha must be a finite number >= 0"),
    (dict(mixup_alpha=INF), "mixup_alpha must be a finite number >= 0, got inf"),
    (dict(cutmix_alpha=NAN), "cutmix_alpha must be a finite number >= 0, got nan"),
    (dict(patchmix_alpha=INF), "patchmix_alpha"),
    (dict(mixup_alpha=True), "mixup_alpha"),
    (dict(cutmix_minmax=(0.8, 0.2)), r"cutmix_minmax must be \(lo, hi\) with 0 < lo < hi <= 1"),
    (dict(cutmix_minmax=(0.0, 0.5)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.2, 1.5)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.2, NAN)), "cutmix_minmax"),
    (dict(cutmix_minmax=(0.2,)), "cutmix_minmax"),
    (dict(prob=1.5), r"prob must be a finite number in \[0, 1\], got 1.5"),
    (dict(prob=NAN), "prob"),
    (dict(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=-0.1), r"switch_prob must be a finite number in \[0, 1\]"),
    (dict(switch_prob=INF), "switch_prob"),  # checked even where it would be ignored
    (dict(mode="half"), "mode"),
    (dict(pairing="roll"), "pairing"),
    (dict(label_smoothing=2.0), r"label_smoothing must be a finite number in \[0, 1\)"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
    (dict(grid_size=0, patchmix_alpha=1.0), "grid_size must be an integer >= 1"),
    (dict(grid_size=INF, patchmix_alpha=1.0), "grid_size must be an integer >= 1, got inf"),
    (dict(grid_size=2.5, patchmix_alpha=1.0), "grid_size"),
    (dict(num_classes=0), "num_classes must be an integer >= 1"),
    (dict(weights={"mixup": 1, "cutmax": 1}), "unknown methods"),
    (dict(weights=(1, 1, 0)), "cutmix is off"),
    (dict(weights=(0, 0, 0)), "not all 0"),
    (dict(weights=(INF, 0, 0)), "weights .* must be finite, non-negative and not all 0"),
    (dict(weights={"mixup": NAN}), "weights must be finite"),
    (dict(weights=(1, 0)), "must be 3 numbers"),
    (dict(generator=0), "generator must be a torch.Generator"),
])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Mix(**kwargs)


@pytest.mark.parametrize("make", ["RandomPatchMix", "MixupMixer", "CutMixMixer"])
@pytest.mark.parametrize("alpha", [0.0, -1.0, INF, NAN])
def test_the_paper_mixers_check_their_alpha(make, alpha):
    import patchmix

    with pytest.raises(ValueError, match=f"{make}: alpha must be a finite number > 0"):
        getattr(patchmix, make)(alpha=alpha)


def test_samplers_refuse_arguments_they_cannot_draw_with():
    """Each sampler checks at its entry: an infinite alpha made Python's betavariate loop forever (batch mode) and
    torch's Gamma return NaN (the other modes)."""
    import random

    from patchmix.mixing import sampling

    g = torch.Generator().manual_seed(0)
    for bad in (INF, NAN, 0.0, -1.0):
        with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
            sampling.sample_beta(bad, 4, g)
        with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
            sampling.host_beta(random.Random(0), bad)
        with pytest.raises(ValueError, match="concentration must be a finite number > 0"):
            sampling.sample_gamma(bad, 4, g)
        with pytest.raises(ValueError, match="concentration must be a finite number > 0"):
            sampling.sample_gamma_rounds(bad, 4, g)
    for bad in ((1.0, INF), (0.0, 0.0), (1.0, -1.0), (NAN, 1.0)):
        with pytest.raises(ValueError, match="weights must be finite, non-negative and not all 0"):
            sampling.choose(4, bad, g)
        with pytest.raises(ValueError, match="weights must be finite, non-negative and not all 0"):
            sampling.host_choice(random.Random(0), bad)
    with pytest.raises(ValueError, match=r"lam0 must be a finite number in \[0, 1\]"):
        sampling.host_cutmix_box(random.Random(0), 1.5, 8, 8)
    with pytest.raises(ValueError, match="grid_size must be an integer >= 1"):
        sampling.grid_masks(torch.ones(2), 0)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        sampling.minmax_boxes(2, 8, 8, (0.5, INF))


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_every_accepted_alpha_draws_finite_mixes_in_bounded_time(mode):
    """From the smallest to the largest finite alpha: no endless rejection loop, no NaN (alphas above
    ``BETA_ALPHA_MAX`` draw with it: Beta(1e15, 1e15) is 0.5 to within float32's resolution)."""
    import signal

    from patchmix.mixing.sampling import BETA_ALPHA_MAX, sample_beta, sample_gamma_rounds

    def hung(*_):
        raise TimeoutError("a sampler did not return")

    x, y = make_batch(B=16)
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        for alpha in (5e-324, 1e-300, 1e-5, 0.2, 1.0, 1e6, BETA_ALPHA_MAX, 1e300, 1.7976931348623157e308):
            for seed in range(3):
                mix = Mix(mixup_alpha=alpha, cutmix_alpha=alpha, patchmix_alpha=alpha, mode=mode,
                          generator=torch.Generator().manual_seed(seed))
                batch = mix(x, y)
                assert bool(torch.isfinite(batch.images).all()) and bool(((batch.lam >= 0) & (batch.lam <= 1)).all())
            draws = sample_beta(alpha, 64, torch.Generator().manual_seed(0))
            assert bool(((draws >= 0) & (draws <= 1)).all()), alpha
            # the fixed-round Gamma of non-CPU devices, run here on the CPU
            assert not bool(sample_gamma_rounds(min(alpha, BETA_ALPHA_MAX), 64).isnan().any())
        big = sample_beta(1.7976931348623157e308, 1000, torch.Generator().manual_seed(0))
        assert float((big - 0.5).abs().max()) <= 6e-8, "a huge alpha draws 0.5 (to float32's step), not 0 / 0"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_bad_input_names_the_argument():
    x, y = make_batch()
    mix = Mix()
    with pytest.raises(ValueError, match=r"x must be images of shape \(B, C, H, W\)"):
        mix(x[0], y)
    with pytest.raises(ValueError, match="floating or uint8"):
        mix(x.int(), y)
    with pytest.raises(ValueError, match=r"y must be int64 labels of shape \(B,\)"):
        mix(x, y[:3])
    with pytest.raises(ValueError, match="int64 class indices"):
        mix(x, y.int())
    with pytest.raises(ValueError, match="CPU generator"):
        mix(x, y, generator=SimpleNamespace(device=torch.device("cuda", 0)))  # a CUDA generator, without CUDA


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_labels_on_another_device_than_the_images_are_refused(mode):
    """The labels are gathered with pairs drawn on the images' device; ``meta`` stands in for a GPU here."""
    x, y = make_batch()
    mix = Mix(**ALL, mode=mode)
    for images, labels in ((x, y.to("meta")), (x.to("meta"), y), (x, y.float().to("meta")[:, None].expand(-1, 3))):
        want = rf"y \(the labels\) is on {labels.device} but x \(the images\) is on {images.device}"
        with pytest.raises(ValueError, match=want):
            mix(images, labels)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_no_host_read_of_device_data(mode, monkeypatch):
    """Every mode runs on ``meta`` tensors, where reading a value is impossible; reads of CPU tensors (batch mode's
    host draws) are allowed, reads of anything else fail the test."""
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def guarded(self, *a, _n=name, _o=original, **k):
            if self.device.type != "cpu":
                pytest.fail(f"host read of device data: {_n}")
            return _o(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    x = torch.empty(7, 3, 13, 11, device="meta")
    y = torch.empty(7, dtype=torch.int64, device="meta")
    for seed in range(4):
        batch = Mix(**ALL, prob=0.7, mode=mode, generator=torch.Generator().manual_seed(seed))(x, y)
        assert batch.images.is_meta and batch.lam.shape == (7,) and batch.index_b.is_meta


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_per_sample_sampling_compiles_fullgraph(mode):
    torch._dynamo.reset()
    mix = Mix(**ALL, cutmix_minmax=None, prob=0.7, mode=mode)
    plan = torch.compile(lambda: mix.sample(64, 13, 11, torch.device("cpu")), fullgraph=True)()
    assert plan.mask.shape == (64, 4, 4) and plan.box.shape == (64, 4) and plan.blend.shape == (64,)
    assert plan.index_b.shape == (64,) and plan.lam.shape == (64,)


def test_pin_memory_and_to_move_every_tensor(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory

    x, y = make_batch()
    batch = Mix(**ALL, mode="elem", generator=torch.Generator().manual_seed(0))(x, y)
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self) or self.clone())
    out = pin_memory(batch)  # what a DataLoader's pin thread calls
    assert isinstance(out, MixedBatch) and len(pinned) == sum(t is not None for t in batch.tensors().values()) == 10
    moved = batch.to("meta", non_blocking=True)
    assert all(t is None or t.is_meta for t in moved.tensors().values()) and moved.label_smoothing == 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_cuda_mixing_is_sync_free_and_matches_the_cpu_rule(mode):
    x, y = make_batch(B=33, H=32, W=32)
    xc, yc = x.cuda(), y.cuda()
    mix = Mix(**ALL, mode=mode, generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = mix(xc, yc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    check_batch(x, y, batch.to("cpu"))


# ------------------------------------------------------------------------------------------------
# the composition's building blocks: bit-select, blends, host draws
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool, torch.float16, torch.float32, torch.float64])
def test_select_is_where(dtype):
    from patchmix.mixing.batch import select

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(6, 3, 5, 7, generator=g) * 100 for _ in range(2))
    a, b = ((t > 0) if dtype == torch.bool else t.to(dtype) for t in (a, b))
    a = a.contiguous(memory_format=torch.channels_last)
    b = b.contiguous(memory_format=torch.channels_last)
    cond = torch.rand(6, 1, 5, 7, generator=g) < 0.5
    assert torch.equal(select(cond, a, b), torch.where(cond, a, b))
    out = torch.empty_like(a)
    assert select(cond, a, b, out=out) is not None and torch.equal(out, torch.where(cond, a, b))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_blend_with_one_number_and_with_a_tensor_gives_the_same_bits(dtype):
    from patchmix.mixing.batch import blend_pixels, to_dtype

    x, _ = make_batch(B=8, dtype=dtype)
    b = x.flip(0)
    for lam in (0.0, 0.25, 0.3137, 0.5, 0.999):
        w = to_dtype(lam, torch.float32)
        one = blend_pixels(x, b.clone(), w)
        many = blend_pixels(x, b.clone(), torch.full((8,), w))
        assert torch.equal(one, many)
    # uint8 rounds half to even, like torch.round (timm): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    a8 = torch.tensor([[1, 3, 5, 255, 0]], dtype=torch.uint8).view(1, 1, 1, 5)
    z8 = torch.zeros_like(a8)
    got = blend_pixels(a8, z8.clone(), torch.tensor([0.5]))
    assert got.flatten().tolist() == torch.round(a8.float() * 0.5).flatten().tolist() == [0, 2, 2, 128, 0]


def test_batch_mode_minmax_and_uncorrected_lam():
    x, y = make_batch(B=6, H=20, W=30)
    for seed in range(8):
        batch = Mix(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.8), mode="batch",
                    generator=torch.Generator().manual_seed(seed))(x, y)
        check_batch(x, y, batch)
        t, b, le, r = batch.box[0].tolist()
        assert 4 <= b - t < 16 and 6 <= r - le < 24 and b <= 20 and r <= 30
    drawn = [Mix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="batch", correct_lam=False,
                 generator=torch.Generator().manual_seed(s))(x, y) for s in range(8)]
    area = [1 - (d.box[0, 1] - d.box[0, 0]) * (d.box[0, 3] - d.box[0, 2]) / 600 for d in drawn]
    assert any(abs(float(d.lam[0]) - float(a)) > 1e-3 for d, a in zip(drawn, area, strict=True))
