"""PatchMixLoss: one loss for PatchMix, Mixup, CutMix and unmixed batches."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patchmix import CutMix, MixedBatch, Mixup, PatchMixLoss, RandomPatchMix
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


@pytest.mark.parametrize("mixer", [Mixup, CutMix])
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
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        PatchMixLoss(label_smoothing=2.0)
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none'"):
        PatchMixLoss(reduction="batchmean")
    with pytest.raises(TypeError, match=r"outputs must be the model's \(image_logits, patch_logits\) pair"):
        PatchMixLoss()((image, patch, image), batch)
    with pytest.raises(TypeError, match="batch must be a MixedBatch"):
        PatchMixLoss()((image, patch), (batch.target_a, batch.lam))
    x, y = images_and_labels()
    with pytest.raises(ValueError, match="only patch logits, but the batch has no grid mask"):
        PatchMixLoss()((None, patch), Mixup()(x, y))
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
