"""patchmix against timm's own ``timm/data/mixup.py`` (timm 1.0): its ``rand_bbox``, ``rand_bbox_minmax``,
``cutmix_bbox_and_lam``, ``mixup_target``, ``Mixup`` and ``FastCollateMixup``.

The file is loaded by itself from the installed wheel (``importlib.util.spec_from_file_location``): it needs only
numpy and torch, while ``import timm`` would import torchvision, which fails beside this torch. timm draws from
numpy's global generator; each test hands timm's module a numpy whose ``np.random`` returns patchmix's draws (the
uniform integers, Beta weights and coin flips patchmix drew, in timm's order), so everything else (box sides,
centring, clipping, ``lam`` correction, blending, targets) is timm's own arithmetic on the same draws.
"""

import importlib.metadata
import importlib.util
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from patchmix import Mix, MixedBatch
from patchmix.mixing.sampling import cutmix_boxes, host_cutmix_box, host_minmax_box, minmax_boxes, sample_beta
from tests.test_mix import K, assert_images, make_batch


@pytest.fixture(scope="module")
def timm():
    try:
        dist = importlib.metadata.distribution("timm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("timm is not installed (./dev setup runs: pip install --no-deps timm)")
    if int(dist.version.split(".")[0]) < 1:
        pytest.skip(f"timm {dist.version} is older than 1.0 (whose boxes patchmix draws)")
    path = dist.locate_file("timm/data/mixup.py")
    spec = importlib.util.spec_from_file_location("timm_data_mixup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Numpy:
    """numpy as timm's mixup.py sees it, with ``np.random``'s functions replaced by ``draws``."""

    def __init__(self, **draws):
        self.random = SimpleNamespace(**draws)

    def __getattr__(self, name):
        return getattr(np, name)


def popping(values):
    """A draw function returning ``values`` one call at a time; an integer must lie in timm's ``[low, high)``."""
    queue = list(values)

    def draw(low=None, high=None, size=None):
        v = queue.pop(0)
        if isinstance(v, (int, np.integer)):
            assert low <= v < high, (low, v, high)
        return v

    return draw


def side_lams(size: int) -> list[float]:
    """``lam`` values in ``[0, 1]`` whose box side ``int(size * sqrt(1 - lam))`` is each of ``0..size``."""
    return [0.0, 1.0] + [1.0 - ((s + 0.5) / size) ** 2 for s in range(size)]


# ------------------------------------------------------------------------------------------------
# the boxes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("H, W", [(13, 11), (32, 32), (7, 24)])
def test_cutmix_boxes_are_timms_rand_bbox(timm, monkeypatch, H, W):
    """The vectorised boxes (``"elem"``, ``"pair"``): every side length 0..H, centres anywhere, in float32 like
    timm's per-sample ``lam``: ``cut_h // 2`` above the centre, ``(cut_h + 1) // 2`` below, clipped."""
    n = 400
    lams = torch.tensor(side_lams(H) + side_lams(W) + torch.rand(20, generator=torch.Generator().manual_seed(0)).tolist(),
                        dtype=torch.float32)
    for k, lam in enumerate(lams.tolist()):
        ours = cutmix_boxes(torch.full((n,), lam), H, W, generator=torch.Generator().manual_seed(k))
        twin = torch.Generator().manual_seed(k)  # the same centres: cy for every box, then cx
        monkeypatch.setattr(timm, "np", Numpy(
            randint=lambda low, high, size=None, g=twin: (low + torch.randint(high - low, (size,), generator=g)).numpy()))
        want = np.stack(timm.rand_bbox((H, W), np.float32(lam), count=n), 1)
        assert torch.equal(ours, torch.from_numpy(want).long()), lam
        # unclipped boxes: exactly int(H * sqrt(1 - lam)) rows, odd sides included
        side = int(H * np.sqrt(np.float32(1) - np.float32(lam)))
        inside = (ours[:, 0] > 0) & (ours[:, 1] < H)
        assert bool(((ours[:, 1] - ours[:, 0])[inside] == side).all())


def test_host_cutmix_box_is_timms_rand_bbox(timm, monkeypatch):
    """Batch mode's box (float64 lam, like timm's ``"batch"`` mode) from the same centres."""
    for H, W in ((13, 11), (32, 32)):
        for k, lam in enumerate(side_lams(H) + [random.Random(s).random() for s in range(50)]):
            rng, twin = random.Random(k), random.Random(k)
            ours = host_cutmix_box(rng, lam, H, W)
            monkeypatch.setattr(timm, "np", Numpy(randint=lambda low, high, size=None, r=twin: r.randrange(low, high)))
            assert ours == tuple(int(v) for v in timm.rand_bbox((H, W), lam)), (H, W, lam)


@pytest.mark.parametrize("minmax", [(0.2, 0.8), (0.05, 1.0), (0.5, 0.6)])
def test_minmax_boxes_are_timms_rand_bbox_minmax(timm, monkeypatch, minmax):
    """Sides uniform in ``[int(S * lo), int(S * hi))``, corner in ``[0, S - side]`` (the box may touch the far
    edge), drawn in timm's order: heights, widths, tops, lefts."""
    H, W, n = 20, 30, 2000
    ours = minmax_boxes(n, H, W, minmax, generator=torch.Generator().manual_seed(0))
    rows = iter(torch.rand(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).numpy())

    def randint(low, high, size=None):
        return (low + np.floor(next(rows) * (np.asarray(high) - low))).astype(np.int64)

    monkeypatch.setattr(timm, "np", Numpy(randint=randint))
    assert torch.equal(ours, torch.from_numpy(np.stack(timm.rand_bbox_minmax((H, W), minmax, count=n), 1)))
    if minmax == (0.2, 0.8):
        assert int(ours[:, 1].max()) == H and int(ours[:, 3].max()) == W, "the far edges are reachable"
    for k in range(100):  # batch mode's host draws
        rng, twin = random.Random(k), random.Random(k)
        box = host_minmax_box(rng, H, W, minmax)
        monkeypatch.setattr(timm, "np", Numpy(randint=lambda low, high, size=None, r=twin: r.randrange(low, high)))
        assert box == tuple(int(v) for v in timm.rand_bbox_minmax((H, W), minmax))


@pytest.mark.parametrize("minmax", [None, (0.2, 0.8)])
@pytest.mark.parametrize("correct_lam", [True, False])
def test_per_sample_boxes_and_lam_are_timms_cutmix_bbox_and_lam(timm, monkeypatch, correct_lam, minmax):
    """``Mix.sample``'s boxes and ``lam`` (CutMix alone, flip pairing: its only draws are the Beta weights, then the
    boxes) against ``cutmix_bbox_and_lam`` sample by sample, with the lam correction from the clipped area."""
    n, H, W = 300, 13, 17
    mix = Mix(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=minmax, correct_lam=correct_lam, mode="elem",
              pairing="flip")
    plan = mix.sample(n, H, W, torch.device("cpu"), torch.Generator().manual_seed(3))
    twin = torch.Generator().manual_seed(3)
    if minmax is None:
        lam0 = sample_beta(1.0, n, twin)
        centres = torch.stack([torch.randint(H, (n,), generator=twin), torch.randint(W, (n,), generator=twin)], 1)
        per_sample = centres.tolist()
    else:
        lam0 = torch.ones(n)
        u = torch.rand(4, n, dtype=torch.float64, generator=twin).T.tolist()
        per_sample = [[lambda low, high, v=v: low + int(np.floor(v * (high - low))) for v in row] for row in u]
    for i in range(n):
        draws = per_sample[i]

        def randint(low, high, size=None, draws=draws):
            v = draws.pop(0)
            return v(low, high) if callable(v) else v

        monkeypatch.setattr(timm, "np", Numpy(randint=randint))
        box, lam = timm.cutmix_bbox_and_lam((3, H, W), np.float32(lam0[i]), ratio_minmax=minmax, correct_lam=correct_lam)
        assert plan.box[i].tolist() == [int(v) for v in box]
        assert float(plan.lam[i]) == np.float32(lam)


# ------------------------------------------------------------------------------------------------
# the mixers: Mixup and FastCollateMixup
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["elem", "pair"])
@pytest.mark.parametrize("correct_lam", [True, False])
def test_per_sample_modes_are_timms_mixup(timm, monkeypatch, mode, correct_lam):
    """``Mix(mode="elem"/"pair", pairing="flip")`` against timm's ``Mixup`` on the same draws: which samples use
    CutMix, their Beta weights and box centres (``Mix.sample`` documents the order of its draws)."""
    B, H, W, a_mix, a_cut = 8, 16, 12, 0.8, 1.0
    x, y = make_batch(B=B, H=H, W=W)
    for seed in range(6):
        batch = Mix(mixup_alpha=a_mix, cutmix_alpha=a_cut, mode=mode, pairing="flip", correct_lam=correct_lam,
                    label_smoothing=0.1, generator=torch.Generator().manual_seed(seed))(x, y)
        twin = torch.Generator().manual_seed(seed)
        cut = torch.rand(B, dtype=torch.float64, generator=twin) >= 0.5  # the method: weights (0.5, 0.5)
        lam_mix, lam_cut = sample_beta(a_mix, B, twin), sample_beta(a_cut, B, twin)
        cy, cx = torch.randint(H, (B,), generator=twin), torch.randint(W, (B,), generator=twin)
        n = B if mode == "elem" else B // 2  # timm draws per pair's first sample, as patchmix's "pair" shares them
        centres = [v for i in range(n) if cut[i] and lam_cut[i] != 1 for v in (int(cy[i]), int(cx[i]))]
        betas = {a_cut: lam_cut[:n].double().numpy(), a_mix: lam_mix[:n].double().numpy()}
        monkeypatch.setattr(timm, "np", Numpy(
            rand=popping([np.where(cut[:n].numpy(), 0.0, 0.99), np.zeros(n)]),  # CutMix or Mixup, then the gate
            beta=lambda a, b, size=None, betas=betas: betas[a], randint=popping(centres)))
        mixer = timm.Mixup(mixup_alpha=a_mix, cutmix_alpha=a_cut, mode=mode, correct_lam=correct_lam,
                           label_smoothing=0.1, num_classes=K)
        images, target = mixer(x.clone(), y)
        assert_images(batch.images, images)
        torch.testing.assert_close(batch.to_dense(K), target)


@pytest.mark.parametrize("minmax", [None, (0.3, 0.9)])
@pytest.mark.parametrize("correct_lam", [True, False])
def test_batch_mode_is_timms_mixup(timm, monkeypatch, correct_lam, minmax):
    """``Mix(mode="batch", pairing="flip")`` against timm's ``Mixup`` given the same method, Beta weight and box
    draws (recorded from the mixer's host generator)."""

    class Recorder(random.Random):
        def __init__(self):
            self.draws = []
            super().__init__()

        def betavariate(self, a, b):
            self.draws.append(super().betavariate(a, b))
            return self.draws[-1]

        def randrange(self, *args):
            self.draws.append(super().randrange(*args))
            return self.draws[-1]

    def make(seed):
        return Mix(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=minmax, mode="batch", pairing="flip",
                   correct_lam=correct_lam, label_smoothing=0.1, num_classes=K,
                   generator=torch.Generator().manual_seed(seed))

    x, y = make_batch(B=8, H=16, W=16)
    seen = set()
    for seed in range(12):
        mix = make(seed)
        mix._rng = Recorder()
        batch = mix(x, y)
        cutmix = batch.box is not None
        seen.add(cutmix)
        draws = mix._rng.draws
        # timm draws a Beta weight for minmax boxes too, and does not use it
        betas, boxes = ([0.5], draws) if cutmix and minmax is not None else (draws[:1], draws[1:])
        monkeypatch.setattr(timm, "np", Numpy(rand=popping([0.0, 0.0 if cutmix else 0.99]),  # gate, CutMix or not
                                               beta=popping(betas), randint=popping(boxes)))
        mixer = timm.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=minmax, mode="batch",
                           correct_lam=correct_lam, label_smoothing=0.1, num_classes=K)
        images, target = mixer(x.clone(), y)
        # timm blends with its float64 lam, patchmix with lam rounded to float32 (the batch's lam and blend, so that
        # batch.apply(x) reproduces the images bit for bit): 1 - lam may differ in its last bit
        assert_images(batch.images, images, ulps=4)
        torch.testing.assert_close(batch.to_dense(K), target)
        images, dense = make(seed).dense(x, y)  # timm's return value
        assert torch.equal(images, batch.images) and torch.equal(dense, batch.to_dense(K))
    assert seen == {True, False}, "both methods drawn"


def test_uint8_mixup_is_timms_fast_collate_mixup(timm, monkeypatch):
    """uint8 Mixup blends in float32 and rounds half to even, as timm's ``FastCollateMixup`` does in the loader."""
    x, y = make_batch(B=6, dtype=torch.uint8)
    batch = Mix(mixup_alpha=1.0, mode="elem", pairing="flip", label_smoothing=0.0,
                generator=torch.Generator().manual_seed(2))(x, y)
    monkeypatch.setattr(timm, "np", Numpy(beta=lambda a, b, size=None: batch.lam.double().numpy(),
                                           rand=lambda size=None: np.zeros(size)))
    collate = timm.FastCollateMixup(mixup_alpha=1.0, mode="elem", label_smoothing=0.0, num_classes=K)
    images, target = collate([(x[i].clone(), int(y[i])) for i in range(6)])
    assert torch.equal(batch.images, images)
    torch.testing.assert_close(batch.to_dense(K), target)


def test_from_dense_takes_timms_targets(timm):
    x, y = make_batch(B=4)
    dense = timm.mixup_target(y, K, 0.3, 0.1)
    batch = MixedBatch.from_dense(x, dense)
    torch.testing.assert_close(batch.to_dense(K, 0.0), dense)
    flipped = Mix(mixup_alpha=1.0, mode="batch", pairing="flip", label_smoothing=0.1)(x, y)
    torch.testing.assert_close(flipped.to_dense(K), timm.mixup_target(y, K, float(flipped.lam[0]), 0.1))
    with pytest.raises(ValueError, match="targets must be floating"):
        MixedBatch.from_dense(x, y)
