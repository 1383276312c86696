"""patchmix.models: shapes, parameter counts against the published architectures, patch-cell alignment,
separate vs shared classifier, torch.compile, channels_last, adapters, and a training smoke test.

Kept small for a 2-core CPU: 32x32 inputs with batch 2 for the CIFAR backbones, ResNet-50 only at 64x64
with batch 1, and the backbone's feature map computed once per model while the head sweeps grid sizes.
"""

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import patchmix
from patchmix.models import (
    MODEL_NAMES,
    PatchHead,
    PatchModel,
    create_model,
    from_timm,
    from_torchvision,
)
from patchmix.models.head import cell_pooling_matrix, region_pool

# name -> (num_classes, in_channels, input side, last map side, published parameter count of backbone +
# image classifier). ResNet-32 and ResNet-56: He et al. 2016, Table 6 (0.46M, 0.85M; the pre-activation
# variant adds only its final BN and two 1x1 projections); PreAct-ResNet-164: He et al. 2016b (1.7M);
# MobileNetV2 with a 10-class head: 2,236,682 (torchvision's mobilenet_v2(num_classes=10) has exactly this
# count, checked on a GPU machine; strides do not change it); ResNet-50: 25,557,032 (torchvision, 1000 classes;
# loading torchvision's state dict gives identical logits).
SPECS = {
    "resnet32": (10, 3, 32, 8, 0.46e6),
    "preact_resnet56": (10, 3, 32, 8, 0.85e6),
    "preact_resnet164": (10, 3, 32, 8, 1.7e6),
    "mobilenetv2": (10, 3, 32, 8, 2.24e6),
    "resnet50": (1000, 3, 64, 2, 25_557_032),
    "small_cnn": (10, 1, 8, 8, None),
    "small_resnet": (10, 1, 32, 8, None),
}
FEATURES = {"resnet32": 64, "preact_resnet56": 64, "preact_resnet164": 256, "mobilenetv2": 1280,
            "resnet50": 2048, "small_cnn": 32, "small_resnet": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_model_names():
    assert set(MODEL_NAMES) == set(SPECS)
    assert isinstance(create_model("ResNet-32", 10), PatchModel)  # case and dash insensitive
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet18", 10)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes_every_grid(name):
    K, C, S, h, _ = SPECS[name]
    N = 1 if name == "resnet50" else 2
    model = create_model(name, K, grid_size=4, in_channels=C).eval()
    assert model.grid_size == 4
    x = torch.randn(N, C, S, S)
    with torch.no_grad():
        image_logits, patch_logits = model(x)
        assert image_logits.shape == (N, K) and patch_logits.shape == (N, K, 4, 4)
        feats = model.features(x)
        assert feats.shape == (N, FEATURES[name], h, h)
        assert torch.allclose(model.head(feats)[1], patch_logits)
        for P in range(1, 9):  # h < P (ResNet-50 at 64 px) goes through the area-upsampling path
            model.grid_size = P
            il, pl = model.head(feats)
            assert il.shape == (N, K) and pl.shape == (N, K, P, P)
            assert torch.isfinite(pl).all()
            assert torch.allclose(il, image_logits, atol=1e-5)


def test_grid_size_at_construction_and_validation():
    model = create_model("small_cnn", 3, grid_size=3, in_channels=1)
    assert model.grid_size == 3 and model(torch.randn(2, 1, 8, 8))[1].shape == (2, 3, 3, 3)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="grid_size"):
            PatchHead(8, 3, bad)
        with pytest.raises(ValueError, match="grid_size"):
            model.grid_size = bad
    with pytest.raises(ValueError, match=r"\(N, F, h, w\)"):
        region_pool(torch.randn(2, 8, 4), 2)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if SPECS[n][4] is not None])
def test_parameter_counts_match_published(name):
    K, C, _, _, published = SPECS[name]
    sep = create_model(name, K, in_channels=C).parameter_counts()
    F_ = FEATURES[name]
    assert sep["image_head"] == sep["patch_head"] == F_ * K + K
    assert sep["base"] == sep["backbone"] + sep["image_head"]
    assert sep["total"] == sep["base"] + sep["patch_head"]
    assert abs(sep["base"] - published) / published < 0.03, sep
    if name == "resnet50":
        assert sep["base"] == 25_557_032  # layer for layer torchvision's resnet50
    shared = create_model(name, K, in_channels=C, separate_patch_classifier=False)
    counts = shared.parameter_counts()
    assert counts["patch_head"] == 0 and counts["total"] == sep["base"]
    assert sum(p.numel() for p in shared.parameters()) == counts["total"]


def test_separate_vs_shared_classifier():
    torch.manual_seed(1)
    x = torch.randn(3, 1, 8, 8)
    sep = create_model("small_cnn", 5, grid_size=4, in_channels=1).eval()
    shared = create_model("small_cnn", 5, grid_size=4, in_channels=1, separate_patch_classifier=False).eval()
    assert shared.head.patch_fc is None and sep.head.patch_fc is not sep.head.fc
    shared.load_state_dict({k: v for k, v in sep.state_dict().items() if "patch_fc" not in k})
    with torch.no_grad():
        il_s, pl_s = shared(x)
        il, pl = sep(x)
        assert torch.equal(il, il_s)
        assert not torch.allclose(pl, pl_s)  # separate weights differ from the image classifier
        regions = region_pool(sep.features(x), 4)  # (N, F, P, P)
        ref = torch.einsum("nfpq,kf->nkpq", regions, sep.head.patch_fc.weight) + sep.head.patch_fc.bias[:, None, None]
        assert torch.allclose(pl, ref, atol=1e-5)
        sep.head.patch_fc.load_state_dict(sep.head.fc.state_dict())
        assert torch.allclose(sep(x)[1], pl_s, atol=1e-6)
        # P = 1 with a shared classifier: the single patch is the whole image
        shared.grid_size = 1
        il1, pl1 = shared(x)
        assert torch.allclose(pl1[:, :, 0, 0], il1, atol=1e-5)
    # gradients reach both classifiers from their own terms
    il, pl = sep(x)
    pl.sum().backward()
    assert sep.head.fc.weight.grad is None and sep.head.patch_fc.weight.grad is not None


def _cell_id_map(h, w, P):
    """(1, 1, h, w) map whose value at feature (i, j) is the row-major cell id of the grid rule."""
    r = torch.arange(h) * P // h
    c = torch.arange(w) * P // w
    return (r[:, None] * P + c[None, :]).double()[None, None]


@pytest.mark.parametrize("h,w", [(8, 8), (7, 7), (8, 5), (13, 9)])
@pytest.mark.parametrize("P", [1, 2, 3, 4, 5])
def test_region_pool_alignment(h, w, P):
    if h < P or w < P:
        pytest.skip("map smaller than the grid: see test_region_pool_upsampling")
    pooled = region_pool(_cell_id_map(h, w, P), P)
    assert pooled.shape == (1, 1, P, P)
    assert torch.allclose(pooled.flatten(), torch.arange(P * P, dtype=torch.float64))  # row-major cell order
    # every feature in a cell counts equally: the matrix path equals a masked mean
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    cells = _cell_id_map(h, w, P)[0, 0]
    ref = torch.stack([x[:, :, cells == k].mean(-1) for k in range(P * P)], -1).view(2, 3, P, P)
    assert torch.allclose(region_pool(x, P), ref)
    Ah = cell_pooling_matrix(h, P, dtype=torch.float64)
    Aw = cell_pooling_matrix(w, P, dtype=torch.float64)
    assert torch.allclose(Ah @ x @ Aw.t(), ref)  # the avg_pool2d fast path and the matrix path agree


def test_region_pool_upsampling():
    """h < P: every cell gets the area-weighted features of the rows its span overlaps."""
    for h in (1, 2, 3, 5):
        for P in range(h + 1, 9):
            A = cell_pooling_matrix(h, P, dtype=torch.float64)
            assert A.shape == (P, h)
            assert torch.allclose(A.sum(1), torch.ones(P, dtype=torch.float64))
            assert (A >= 0).all() and (A.sum(0) > 0).all()
            if P % h == 0:  # each cell lies inside one feature row: exactly that row
                assert torch.equal(A.argmax(1), torch.arange(P) * h // P)
                assert torch.equal(A.max(1).values, torch.ones(P, dtype=torch.float64))
    # 1x1 map: every cell is the global feature
    x = torch.randn(2, 3, 1, 1)
    assert torch.allclose(region_pool(x, 4), x.expand(2, 3, 4, 4))
    # 2x2 map into a 4x4 grid: nearest-neighbour upsampling
    x = torch.randn(2, 3, 2, 2)
    assert torch.allclose(region_pool(x, 4), F.interpolate(x, size=(4, 4), mode="nearest"))


@pytest.mark.parametrize("P,h", [(4, 8), (3, 8), (4, 7), (8, 8), (2, 9)])
def test_patch_logits_follow_the_mask(P, h):
    """End to end: features painted from a PatchMix mask (nearest upsampling, the grid rule) come out of the
    head as patch logits whose row-major argmax equals MixedBatch.patch_targets()."""
    K, N = 6, 5
    gen = torch.Generator().manual_seed(3)
    batch = patchmix.RandomPatchMix(P, generator=gen)(torch.randn(N, 1, 16, 16), torch.randint(0, K, (N,), generator=gen))
    labels = batch.patch_targets().view(N, P, P)
    onehot = F.one_hot(labels, K).permute(0, 3, 1, 2).float()  # (N, K, P, P)
    feats = F.interpolate(onehot, size=(h, h), mode="nearest")
    head = PatchHead(K, K, P)
    with torch.no_grad():
        head.patch_fc.weight.copy_(torch.eye(K))
        head.patch_fc.bias.zero_()
    _, pl = head(feats)
    assert pl.shape == (N, K, P, P)
    assert torch.allclose(pl, onehot)
    assert torch.equal(pl.flatten(2).argmax(1), batch.patch_targets())


def test_patch_logits_layout():
    """(N, K, P, P) whose memory is (N, P, P, K): the (N, P*P, K) layout is a free view."""
    model = create_model("small_cnn", 7, grid_size=3, in_channels=1)
    _, pl = model(torch.randn(4, 1, 8, 8))
    flat = pl.permute(0, 2, 3, 1).reshape(4, 9, 7)
    assert flat.is_contiguous() and flat.data_ptr() == pl.data_ptr()
    assert torch.equal(flat, pl.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("name", ["small_cnn", "small_resnet", "resnet32", "mobilenetv2"])
def test_channels_last(name):
    K, C, S, _, _ = SPECS[name]
    model = create_model(name, K, grid_size=3, in_channels=C).eval()
    x = torch.randn(2, C, S, S)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_compile_fullgraph_small_cnn():
    torch._dynamo.reset()
    model = create_model("small_cnn", 10, grid_size=3, in_channels=1).eval()  # P = 3: the matrix path
    x = torch.randn(4, 1, 8, 8)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for a, b in zip(compiled(x), model(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # every grid size traces without a graph break (cheap check through the eager backend)
    for P in (1, 4, 5, 8):
        model.grid_size = P
        out = torch.compile(model.head, fullgraph=True, backend="eager")(torch.randn(2, 32, 8, 8))
        assert out[1].shape == (2, 10, P, P)


def test_training_smoke_small_cnn():
    """A tiny fixed Random-PatchMix batch: L_T = 0.5 * L_O + 0.5 * L_P / P^2 goes down."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images[:48], dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(digits.target[:48], dtype=torch.int64)
    K, P = 10, 4
    batch = patchmix.RandomPatchMix(P, generator=torch.Generator().manual_seed(0))(x, y)
    soft, patch_targets = batch.soft_targets(K), batch.patch_targets()
    model = create_model("small_cnn", K, grid_size=P, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn():
        image_logits, patch_logits = model(batch.images)
        l_o = -(soft * image_logits.log_softmax(1)).sum(1).mean()
        l_p = F.cross_entropy(patch_logits, patch_targets.view(-1, P, P), reduction="none").sum((1, 2)).mean()
        return 0.5 * l_o + 0.5 * l_p / P**2

    losses = []
    for _ in range(30):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses  # about 2.34 -> 0.6 in 30 steps


# ------------------------------------------------------------------------------------------------------
# adapters
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("package,adapter", [("torchvision", from_torchvision), ("timm", from_timm)])
def test_adapter_import_error(monkeypatch, package, adapter):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail, as a missing install does
    with pytest.raises(ImportError, match=package) as info:
        adapter(nn.Conv2d(3, 8, 3))
    assert "PatchModel(backbone" in str(info.value)


def test_adapters_fail_cleanly_here():
    """In this environment neither package imports (torchvision is absent or broken): a clear ImportError."""
    for package, adapter in (("torchvision", from_torchvision), ("timm", from_timm)):
        try:
            __import__(package)
        except Exception:
            with pytest.raises(ImportError, match=package):
                adapter(nn.Conv2d(3, 8, 3))


class _FakeTorchvisionResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Conv2d(8, 16, 3, 2, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)


class _FakeTimmModel(nn.Module):
    num_features = 16

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.head = nn.Linear(16, 5)

    def forward_features(self, x):
        return self.stem(x)

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes):
        self.head = nn.Identity()


def test_adapters_with_stand_in_packages(monkeypatch):
    for package in ("torchvision", "timm"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    x = torch.randn(2, 3, 16, 16)
    tv = _FakeTorchvisionResNet()
    model = from_torchvision(tv, grid_size=2)
    assert model.feature_channels == 16 and model.num_classes == 5
    assert torch.equal(model.head.fc.weight, tv.fc.weight)  # pretrained classifier kept
    il, pl = model(x)
    assert il.shape == (2, 5) and pl.shape == (2, 5, 2, 2)
    assert model(x)[1].shape == (2, 5, 2, 2)
    assert from_torchvision(tv, num_classes=3).num_classes == 3

    tm = _FakeTimmModel()
    fc_weight = tm.head.weight.clone()
    model = from_timm(tm, grid_size=4)
    assert torch.equal(model.head.fc.weight, fc_weight)
    assert isinstance(tm.head, nn.Identity)  # its own classifier was removed
    il, pl = model(x)
    assert il.shape == (2, 5) and pl.shape == (2, 5, 4, 4)
    with pytest.raises(ValueError, match="split"):
        from_torchvision(nn.Conv2d(3, 8, 3))

    class _Tokens(_FakeTimmModel):  # a ViT-like model: forward_features returns (N, T, D)
        def forward_features(self, x):
            return self.stem(x).flatten(2).transpose(1, 2)

    with pytest.raises(ValueError, match="feature map"):
        from_timm(_Tokens())
    tv = _FakeTorchvisionResNet()
    tv.fc = nn.Linear(99, 5)  # classifier that does not fit the features: a fresh head, no error
    model = from_torchvision(tv, num_classes=5)
    assert model.head.fc.in_features == 16 and model(x)[0].shape == (2, 5)
