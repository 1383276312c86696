"""patchmix.GuidedPatchMix and the phase-four mixed loader: only policy pairs, with their masks."""

import numpy as np
import pytest
import torch

from patchmix import GuidedPatchMix, MixedBatch
from patchmix.guided import GuidedBatchSampler, GuidedCollate, concat_batches, guided_loader, phase_four_counts
from patchmix.ops import grid_mix_reference
from patchmix.search import CachedFitness, Policy, search
from patchmix.search.synthetic import synthetic_cache

NAMES = ["airplane", "car", "bird", "cat", "deer"]


def make_policy(P=4):
    g = np.random.default_rng(0)
    pairs = [[0, 0], [1, 3], [2, 4], [3, 4]]
    return Policy(pairs, g.random((4, P, P)) < 0.5, NAMES, P)


def pool(n_per_class=6, K=5, H=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(K).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(labels.numel(), generator=g)]  # not sorted by class
    images = torch.rand(labels.numel(), 3, H, H, generator=g)
    return images, labels


def assert_policy_batch(batch: MixedBatch, policy: Policy):
    table = {tuple(p): m for p, m in zip(policy.pairs.tolist(), policy.masks, strict=True)}
    for a, b, m in zip(batch.target_a.tolist(), batch.target_b.tolist(), batch.mask, strict=True):
        assert (a, b) in table, f"pair {(a, b)} is not in the policy"
        assert np.array_equal(m.numpy(), table[(a, b)])


def test_sample_draws_only_policy_pairs_from_the_right_classes():
    policy = make_policy()
    images, labels = pool()
    gp = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(0))
    slot, ia, ib = gp.sample(400)
    assert slot.min() >= 0 and slot.max() < 4 and len(torch.unique(slot)) == 4
    assert torch.equal(labels[ia], policy.pair_tensor()[slot, 0])
    assert torch.equal(labels[ib], policy.pair_tensor()[slot, 1])
    # every image of a class can be drawn
    assert set(ia[labels[ia] == 2].tolist()) == set(torch.nonzero(labels == 2)[:, 0].tolist())


def test_forward_composes_with_the_pair_mask():
    policy = make_policy()
    images, labels = pool()
    gp = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(1))
    batch = gp(images, 50)
    assert isinstance(batch, MixedBatch) and len(batch) == 50
    assert_policy_batch(batch, policy)
    # recompose from the same draws: True cells from the first class's image
    slot, ia, ib = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(1)).sample(50)
    ref, lam = grid_mix_reference(images, policy.mask_tensor()[slot], ia, ib)
    assert torch.equal(batch.images, ref) and torch.equal(batch.lam, lam)
    assert torch.allclose(batch.lam, batch.mask.float().mean((1, 2)))  # P divides H: lam = cell fraction


def test_reproducible_with_generator():
    policy = make_policy()
    images, labels = pool()
    b1 = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(5))(images, 20)
    b2 = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(5))(images, 20)
    b3 = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(6))(images, 20)
    assert torch.equal(b1.images, b2.images) and torch.equal(b1.target_a, b2.target_a)
    assert not torch.equal(b1.images, b3.images)


def test_pair_weights():
    policy = make_policy()
    _, labels = pool()
    gp = GuidedPatchMix(policy, labels, pair_weights=torch.tensor([0.0, 1.0, 0.0, 3.0]),
                        generator=torch.Generator().manual_seed(0))
    slot, _, _ = gp.sample(2000)
    assert set(slot.tolist()) == {1, 3}
    assert 0.7 < (slot == 3).float().mean() < 0.8


def test_bad_inputs():
    policy = make_policy()
    images, labels = pool()
    with pytest.raises(ValueError, match=r"no image of classes \['deer'\]"):
        GuidedPatchMix(policy, labels[labels != 4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        GuidedPatchMix(policy, labels + 3)
    with pytest.raises(ValueError, match="labels must be int64"):
        GuidedPatchMix(policy, labels.int())
    with pytest.raises(TypeError, match="policy must be a patchmix.search.Policy"):
        GuidedPatchMix({"pairs": []}, labels)
    with pytest.raises(ValueError, match="pair_weights must be"):
        GuidedPatchMix(policy, labels, pair_weights=torch.ones(3))
    for bad in ([1.0, float("inf"), 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0], [0.0] * 4, [1.0, -1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match=r"pair_weights must be \(4,\) finite, non-negative and not all zero"):
            GuidedPatchMix(policy, labels, pair_weights=torch.tensor(bad))
    gp = GuidedPatchMix(policy, labels)
    with pytest.raises(ValueError, match="images must be the pool"):
        gp(images[:5], 3)
    with pytest.raises(ValueError, match="counts must be"):
        GuidedBatchSampler(gp, (0, 0, 0))


def test_mixed_loader_serves_original_random_and_guided_parts():
    policy = make_policy()
    images, labels = pool(n_per_class=8)
    dataset = torch.utils.data.TensorDataset(images, labels)
    gp = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(0))
    counts = (4, 6, 5)
    loader = guided_loader(dataset, gp, counts, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 40 // 10
    seen = []
    for batch in loader:
        assert len(batch) == 4 + 6 + 5 and batch.mask.shape == (15, 4, 4)
        orig = slice(0, 4)
        assert torch.equal(batch.target_a[orig], batch.target_b[orig]) and (batch.lam[orig] == 1).all()
        assert batch.mask[orig].all()
        rnd = slice(4, 10)
        assert torch.allclose(batch.lam[rnd], batch.mask[rnd].float().mean((1, 2)))
        guided = MixedBatch(*(t[10:] for t in (batch.images, batch.target_a, batch.target_b, batch.lam, batch.mask)))
        assert_policy_batch(guided, policy)
        # original images are dataset images
        for x, y in zip(batch.images[orig], batch.target_a[orig], strict=True):
            k = int(torch.nonzero((images == x).flatten(1).all(1))[0])
            assert labels[k] == y
            seen.append(k)
    assert len(seen) == len(set(seen))  # no repeats within an epoch


def test_collate_rejects_pairs_outside_the_policy():
    policy = make_policy()
    images, labels = pool()
    gp = GuidedPatchMix(policy, labels)
    collate = GuidedCollate(gp, (0, 0, 1))
    a = int(torch.nonzero(labels == 0)[0])
    b = int(torch.nonzero(labels == 1)[0])  # (airplane, car) is not a policy pair
    with pytest.raises(ValueError, match="not in the policy"):
        collate([(images[a], labels[a]), (images[b], labels[b])])
    with pytest.raises(ValueError, match="nothing to concatenate"):
        concat_batches([])


def test_policy_from_a_search_drives_guided_sampling(tmp_path):
    f = CachedFitness(synthetic_cache(5, per_class=6, grid_size=4, seed=0), num_draws=4)
    result = search(f, population=16, generations=2, seed=0, progress=False, class_names=NAMES)
    result.policy.save(tmp_path / "policy.json")
    policy = Policy.load(tmp_path / "policy.json", class_names=NAMES, grid_size=4)
    images, labels = pool()
    batch = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(0))(images, 64)
    assert_policy_batch(batch, policy)


def test_a_random_part_of_one_sample_is_that_sample_unchanged():
    """The one rule for n_random = 1 (trainer, loader and figure alike): valid, and like RandomPatchMix on a
    batch of one it pairs the sample with itself, so the image and its label are unchanged."""
    policy = make_policy()
    images, labels = pool(n_per_class=8)
    gp = GuidedPatchMix(policy, labels, generator=torch.Generator().manual_seed(0))
    counts = (1, 1, 2)
    loader = guided_loader(torch.utils.data.TensorDataset(images, labels), gp, counts,
                          generator=torch.Generator().manual_seed(0))
    for batch in loader:
        assert len(batch) == 4
        k = int(torch.nonzero((images == batch.images[1]).flatten(1).all(1))[0])  # a dataset image, unmixed
        assert labels[k] == batch.target_a[1] == batch.target_b[1]
        assert_policy_batch(MixedBatch(*(t[2:] for t in (batch.images, batch.target_a, batch.target_b, batch.lam,
                                                           batch.mask))), policy)


def test_phase_four_counts():
    assert phase_four_counts(64, (1 / 3, 1 / 3, 1 / 3)) == (21, 21, 22)
    assert phase_four_counts(32, (0.25, 0.25, 0.5)) == (8, 8, 16)
    assert phase_four_counts(4, (1, 1, 1)) == (1, 1, 2)  # a random part of one sample: kept as is
    assert phase_four_counts(2, (0, 0, 1)) == (1, 0, 1)  # at least one sample from the dataset
    assert phase_four_counts(2, (0, 1, 5)) == (0, 1, 1)
    for bad in ((0, 0, 0), (1, float("inf"), 1), (1, float("nan"), 1), (1, -1, 1), (1, 1)):
        with pytest.raises(ValueError, match=r"fractions \(original, random, guided\) must be"):
            phase_four_counts(8, bad)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        phase_four_counts(0, (1, 1, 1))


def test_phase_four_labels_on_another_device_are_refused():
    policy = make_policy()
    images, labels = pool()
    collate = GuidedCollate(GuidedPatchMix(policy, labels), (2, 2, 1))
    with pytest.raises(ValueError, match=r"y \(the labels\) is on meta but x \(the images\) is on cpu"):
        collate.mix(images[:6], labels[:6].to("meta"))


def test_the_sampler_walks_a_given_order():
    policy = make_policy()
    _, labels = pool(n_per_class=8)
    gp = GuidedPatchMix(policy, labels)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    batches = list(GuidedBatchSampler(gp, (2, 3, 1), order=order, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 8 and torch.equal(torch.tensor([b[:5] for b in batches]).flatten(), order)
    with pytest.raises(ValueError, match="fit the order"):
        GuidedBatchSampler(gp, (2, 3, 1), order=order, num_batches=9)
