"""PatchMixLoss: one loss for PatchMix, Mixup, CutMix and unmixed batches."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchmix import CutMixMixer, MixedBatch, MixupMixer, PatchMixLoss, RandomPatchMix
from patchmix.ops import patchmix_cross_entropy

N, K, P = 8, 10, 4


def images_and_labels():
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, 3, 16, 16, generator=g), torch.randint(K, (N,), generator=g)


def logits(layout="nkpp", dtype=torch.float32):
    image = torch.randn(N, K, dtype=dtype, requires_grad=True)
    shape = (N, K, P, P) if layout == "nkpp" else (N, P * P, K)
    return image, torch.randn(shape, dtype=dtype, requires_grad=True)


def patchmix_batch():
    x, y = images_and_labels()
    return RandomPatchMix(grid_size=P, generator=torch.Generator().manual_seed(2))(x, y)


@pytest.mark.parametrize("layout", ["nkpp", "npk"])
def test_patchmix_batch_is_paper_loss(layout):
    batch = patchmix_batch()
    image, patch = logits(layout)
    loss = PatchMixLoss()((image, patch), batch)
    # (L_O + L_P / P^2) / 2 from the batch's own label helpers, in float64
    soft = batch.soft_targets(K).double()
    l_o = -(soft * F.log_softmax(image.double(), -1)).sum(1)
    rows = patch.double() if layout == "npk" else patch.double().permute(0, 2, 3, 1).reshape(N, P * P, K)
    l_p = F.cross_entropy(rows.reshape(-1, K), batch.patch_targets().reshape(-1), reduction="none").view(N, -1).sum(1)
    want = ((l_o + l_p / P**2) / 2).mean()
    torch.testing.assert_close(loss.double(), want)
    loss.backward()
    assert image.grad is not None and patch.grad is not None and patch.grad.shape == patch.shape


def test_options_pass_through():
    batch = patchmix_batch()
    image, patch = logits()
    loss_fn = PatchMixLoss(image_weight=0.2, patch_weight=0.8, label_smoothing=0.1, reduction="none")
    got = loss_fn((image, patch), batch)
    want = patchmix_cross_entropy(image, patch, batch.target_a, batch.target_b, batch.lam, batch.mask,
                                  image_weight=0.2, patch_weight=0.8, label_smoothing=0.1, reduction="none")
    assert got.shape == (N,)
    torch.testing.assert_close(got, want)
    assert "image_weight=0.2" in repr(loss_fn)


@pytest.mark.parametrize("mixer", [MixupMixer, CutMixMixer])
def test_grid_free_batches_train_the_image_term(mixer):
    x, y = images_and_labels()
    batch = mixer(generator=torch.Generator().manual_seed(3))(x, y)
    assert batch.mask is None
    image, patch = logits()
    loss = PatchMixLoss(label_smoothing=0.1)((image, patch), batch)
    # the plain soft-target cross-entropy those methods train with, at full weight; patch logits ignored
    want = F.cross_entropy(image, batch.soft_targets(K), label_smoothing=0.1)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert patch.grad is None


def test_unmixed_batches_are_plain_cross_entropy():
    x, y = images_and_labels()
    image, patch = logits()
    loss_fn = PatchMixLoss()
    torch.testing.assert_close(loss_fn((image, patch), MixedBatch.unmixed(x, y)), F.cross_entropy(image, y))
    with_grid = loss_fn((image, patch), MixedBatch.unmixed(x, y, P))
    want = 0.5 * F.cross_entropy(image, y) + 0.5 * F.cross_entropy(patch, y[:, None, None].expand(N, P, P))
    torch.testing.assert_close(with_grid, want)


def test_image_only_and_patch_only_models():
    batch = patchmix_batch()
    image, patch = logits()
    loss_fn = PatchMixLoss()
    torch.testing.assert_close(loss_fn(image, batch), F.cross_entropy(image, batch.soft_targets(K)))
    torch.testing.assert_close(loss_fn((image, None), batch), loss_fn(image, batch))
    patch_only = loss_fn((None, patch), batch)
    want = patchmix_cross_entropy(None, patch, batch.target_a, batch.target_b, batch.lam, batch.mask)
    torch.testing.assert_close(patch_only, want)


def test_errors():
    batch = patchmix_batch()
    image, patch = logits()
    with pytest.raises(ValueError, match="image_weight must be a finite number >= 0"):
        PatchMixLoss(image_weight=-0.5)
    for name, bad in (("image_weight", float("inf")), ("patch_weight", float("nan")), ("label_smoothing", 2.0),
                      ("label_smoothing", 1.0), ("label_smoothing", float("nan"))):
        with pytest.raises(ValueError, match=f"PatchMixLoss: {name} must be a finite number"):
            PatchMixLoss(**{name: bad})
    with pytest.raises(ValueError, match=r"label_smoothing must be a finite number in \[0, 1\)"):
        PatchMixLoss(label_smoothing=2.0)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        PatchMixLoss(reduction="batchmean")
    with pytest.raises(TypeError, match=r"outputs must be the model's \(image_logits, patch_logits\) pair"):
        PatchMixLoss()((image, patch, image), batch)
    with pytest.raises(TypeError, match="batch must be a MixedBatch"):
        PatchMixLoss()((image, patch), (batch.target_a, batch.lam))
    x, y = images_and_labels()
    with pytest.raises(ValueError, match="only patch logits, but the batch has no grid mask"):
        PatchMixLoss()((None, patch), MixupMixer()(x, y))
    with pytest.raises(ValueError, match="patch_logits has 16 patches .* but mask has P\\*P = 4"):
        PatchMixLoss()((image, patch), RandomPatchMix(grid_size=2)(x, y))


class _TinyPatchNet(nn.Module):
    """Conv features -> image head (global pool + linear) and patch head (P x P region pool + 1x1 conv)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.image_head = nn.Linear(16, K)
        self.patch_head = nn.Conv2d(16, K, 1)

    def forward(self, x):
        f = self.features(x)
        return self.image_head(f.mean((2, 3))), self.patch_head(F.adaptive_avg_pool2d(f, P))


def test_training_smoke_drives_loss_down():
    torch.manual_seed(0)
    batch = patchmix_batch()
    model = _TinyPatchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = PatchMixLoss()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(model(batch.images), batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses  # mixed targets have an entropy floor; 40 steps reach ~0.7x


def test_compiles_fullgraph():
    batch = patchmix_batch()
    image, patch = logits()
    loss_fn = PatchMixLoss(label_smoothing=0.1)
    compiled = torch.compile(lambda out, b: loss_fn(out, b), fullgraph=True, dynamic=False)
    got = compiled((image, patch), batch)
    got.backward()
    torch.testing.assert_close(got, loss_fn((image, patch), batch))


# ------------------------------------------------------------------------------------------------
# batches that mix methods per sample, soft labels, the batch's label smoothing
# ------------------------------------------------------------------------------------------------


def reference_per_sample_loss(image, patch, batch, K, image_weight=0.5, patch_weight=0.5, eps=0.0):
    """Sample by sample in float64: ``image_weight L_O + patch_weight L_P / P^2`` for grid samples, ``L_O`` for the
    others (``has_grid`` None: every sample has the batch's mask as its grid)."""
    dense = batch.to_dense(K, eps).double()
    has_grid = batch.has_grid if batch.has_grid is not None else torch.ones(len(batch), dtype=torch.bool)
    patch_t = batch.patch_targets()
    out = []
    for n in range(len(batch)):
        l_o = -(dense[n] * F.log_softmax(image[n].double(), -1)).sum()
        if not has_grid[n]:
            out.append(l_o)
            continue
        rows = patch[n].double().flatten(1).T  # (P*P, K)
        if batch.dense:
            t = patch_t[n].double() * (1 - eps) + eps / K
        else:
            t = F.one_hot(patch_t[n], K).double() * (1 - eps) + eps / K
        l_p = -(t * F.log_softmax(rows, -1)).sum()
        out.append(image_weight * l_o + patch_weight * l_p / rows.shape[0])
    return torch.stack(out)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_methods_mixed_per_sample_give_the_patch_term_to_grid_samples_only(reduction):
    from patchmix import Mix

    x, y = images_and_labels()
    batch = Mix(mixup_alpha=1.0, cutmix_alpha=1.0, patchmix_alpha=1.0, mode="elem", label_smoothing=0.1,
                generator=torch.Generator().manual_seed(5))(x, y)
    assert 0 < int(batch.has_grid.sum()) < N, "the seed gives a batch with both kinds"
    image = torch.randn(N, K, dtype=torch.float64, requires_grad=True)
    patch = torch.randn(N, K, P, P, dtype=torch.float64, requires_grad=True)
    loss_fn = PatchMixLoss(image_weight=0.3, patch_weight=0.7, reduction=reduction)
    got = loss_fn((image, patch), batch)  # label_smoothing None: the batch's 0.1
    want = reference_per_sample_loss(image, patch, batch, K, 0.3, 0.7, 0.1)
    want = {"mean": want.mean(), "sum": want.sum(), "none": want}[reduction]
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got.sum(), (image, patch))
    g_want = torch.autograd.grad(want.sum(), (image, patch))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(g_got[1][~batch.has_grid], torch.zeros_like(g_got[1][~batch.has_grid]))


def test_term_weights_are_the_per_sample_formula():
    """The op's term_weights, as PatchMixLoss uses them for batches that mix methods per sample, against the
    formula built from two calls without them."""
    batch = patchmix_batch()
    image, patch = logits(dtype=torch.float64)
    w = torch.rand(N, 2, dtype=torch.float64)
    got = patchmix_cross_entropy(image, patch, batch.target_a, batch.target_b, batch.lam, batch.mask, term_weights=w,
                                 image_weight=0.4, patch_weight=0.9, label_smoothing=0.05, reduction="none")
    l_o = patchmix_cross_entropy(image, None, batch.target_a, batch.target_b, batch.lam, None, image_weight=1.0,
                                 label_smoothing=0.05, reduction="none")
    l_p = patchmix_cross_entropy(None, patch, batch.target_a, batch.target_b, batch.lam, batch.mask, patch_weight=1.0,
                                 label_smoothing=0.05, reduction="none")
    torch.testing.assert_close(got, 0.4 * w[:, 0] * l_o + 0.9 * w[:, 1] * l_p)


def test_soft_labels_train_with_soft_target_cross_entropy():
    from patchmix import Mix

    x, y = images_and_labels()
    first = Mix(mixup_alpha=1.0, mode="elem", label_smoothing=0.0, generator=torch.Generator().manual_seed(0))(x, y)
    chained = Mix(mixup_alpha=0.0, patchmix_alpha=1.0, cutmix_alpha=1.0, mode="elem", label_smoothing=0.0,
                  generator=torch.Generator().manual_seed(1))(first.images, first.to_dense(K))
    image = torch.randn(N, K, dtype=torch.float64, requires_grad=True)
    patch = torch.randn(N, P * P, K, dtype=torch.float64, requires_grad=True)
    got = PatchMixLoss(label_smoothing=0.1)((image, patch), chained)
    want = reference_per_sample_loss(image, patch.transpose(1, 2).reshape(N, K, P, P), chained, K, eps=0.1).mean()
    torch.testing.assert_close(got, want)
    # without a grid: timm's SoftTargetCrossEntropy, sum(-t * log_softmax(x)).mean()
    dense = MixedBatch.from_dense(x, first.to_dense(K))
    timm = (-dense.to_dense(K) * F.log_softmax(image.float(), -1)).sum(-1).mean()
    torch.testing.assert_close(PatchMixLoss()(image.float(), dense), timm)


def test_label_smoothing_defaults_to_the_batch_and_an_explicit_value_wins():
    from patchmix import Mix

    x, y = images_and_labels()
    batch = Mix(patchmix_alpha=1.0, mixup_alpha=0.0, mode="elem", label_smoothing=0.2,
                generator=torch.Generator().manual_seed(0))(x, y)
    image, patch = logits()
    default = PatchMixLoss()((image, patch), batch)
    torch.testing.assert_close(default, PatchMixLoss(label_smoothing=0.2)((image, patch), batch))
    assert not torch.allclose(default, PatchMixLoss(label_smoothing=0.0)((image, patch), batch))


def test_soft_labels_of_another_class_count_name_both_counts():
    """Soft labels ``(N, K)`` against logits of another ``K`` (or ``N``, or ``P*P``): a ValueError naming the argument
    and both numbers, not a broadcasting RuntimeError."""
    from patchmix import Mix

    x, y = images_and_labels()
    soft = Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem", label_smoothing=0.0,
               generator=torch.Generator().manual_seed(0))(x, F.one_hot(y, K).float())
    image, patch = logits()
    loss_fn = PatchMixLoss()
    loss_fn((image, patch), soft)  # K = 10 on both sides
    with pytest.raises(ValueError, match=r"image_logits has K = 7 classes \(shape \(8, 7\)\) but the soft labels "
                                         r"\(batch.target_a\) have K = 10"):
        loss_fn((image[:, :7], patch), soft)
    with pytest.raises(ValueError, match="patch_logits has K = 9 classes .* soft labels .* have K = 10"):
        loss_fn((image, patch[:, :9]), soft)
    with pytest.raises(ValueError, match="image_logits has K = 12 classes"):
        loss_fn(torch.randn(N, 12), soft)
    with pytest.raises(ValueError, match="image_logits holds N = 5 samples but the batch 8"):
        loss_fn((image[:5], None), soft)
    with pytest.raises(ValueError, match=r"patch_logits has 4 patches .* batch.mask has P\*P = 16 cells"):
        loss_fn((image, patch[..., :2, :2]), soft)
