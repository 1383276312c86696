"""Mixing in DataLoader workers: MixCollate on uint8 batches, per-batch and per-worker seeding, the phase-four
collate in workers, mix_off_epoch, shared-memory outputs."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import patchmix.mixing.batch
from patchmix import EpochBatchSampler, GuidedPatchMix, KeyedDataset, Mix, MixCollate, MixedBatch, RandomPatchMix
from patchmix.data.batch import BatchKey
from patchmix.guided import guided_loader
from patchmix.mixing.collate import KeyedIndices, KeyedSamples, stack_batch, worker_output
from patchmix.search import Policy

pytestmark = pytest.mark.usefixtures("one_thread")


def uint8_dataset(n=64, H=8, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, H, H), generator=g, dtype=torch.uint8)
    return TensorDataset(images, torch.arange(n) % K)


def draws(batch: MixedBatch):
    return batch.index_b, batch.lam, batch.mask


def same_draws(a: MixedBatch, b: MixedBatch) -> bool:
    return all(torch.equal(s, t) for s, t in zip(draws(a), draws(b), strict=True))


def test_each_worker_draws_its_own_stream():
    """Without batch keys every worker gets a stream of its own: the first batch of worker 0 and of worker 1 differ
    (a generator copied into both forked workers would draw the same permutation, masks and weights)."""
    ds = uint8_dataset()
    mixer = RandomPatchMix(grid_size=4, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=16, collate_fn=MixCollate(mixer, seed=3), num_workers=2)
    b0, b1, b2, b3 = list(loader)  # workers serve batches 0, 2 (worker 0) and 1, 3 (worker 1)
    assert not same_draws(b0, b1) and not same_draws(b2, b3)
    again = list(DataLoader(ds, batch_size=16, collate_fn=MixCollate(mixer, seed=3), num_workers=2))
    assert all(same_draws(a, b) for a, b in zip([b0, b1, b2, b3], again, strict=True)), "reproducible"
    assert b0.images.dtype == torch.uint8 and b0.mask.shape == (16, 4, 4)


def test_phase_four_loader_workers_draw_different_random_parts():
    """guided_loader with two workers: the random part of each worker's first batch differs."""
    rng = np.random.default_rng(0)
    policy = Policy([[0, 0], [1, 3], [2, 3]], rng.random((3, 4, 4)) < 0.5, ["a", "b", "c", "d"], 4)
    ds = uint8_dataset(n=80)
    gp = GuidedPatchMix(policy, ds.tensors[1], generator=torch.Generator().manual_seed(0))
    counts = (2, 8, 2)
    loader = guided_loader(ds, gp, counts, generator=torch.Generator().manual_seed(0), num_workers=2)
    b0, b1 = list(loader)[:2]
    rnd = slice(2, 10)
    assert not torch.equal(b0.mask[rnd], b1.mask[rnd])
    # the parts' pairs index the loaded batch (original 0-1, random 2-9, guided pairs 10-11 with 12-13)
    assert torch.equal(b0.index_a, torch.arange(12)) and torch.equal(b0.index_b[10:], torch.tensor([12, 13]))
    collate = loader.collate_fn
    x, y = ds.tensors[0][:14], ds.tensors[1][:14]
    y[10:12], y[12:14] = torch.tensor([1, 2]), torch.tensor([3, 3])  # policy pairs (b, d), (c, d)
    batch = collate.mix(x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.apply(x), batch.images)


@pytest.mark.parametrize("workers", [0, 2])
def test_keyed_batches_draw_the_same_for_any_number_of_workers_and_resume_exactly(workers):
    ds = KeyedDataset(uint8_dataset(n=96))
    index_batches = list(torch.randperm(96, generator=torch.Generator().manual_seed(1)).split(16))
    mix = Mix(mixup_alpha=1.0, cutmix_alpha=1.0, patchmix_alpha=1.0, mode="elem")

    def run(n_workers, epoch, first_step=0):
        sampler = EpochBatchSampler(index_batches[first_step:], epoch, first_step)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=MixCollate(mix, seed=7), num_workers=n_workers)
        return list(loader)

    ref = run(0, epoch=2)
    got = run(workers, epoch=2)
    assert all(same_draws(a, b) and torch.equal(a.images, b.images) for a, b in zip(ref, got, strict=True))
    tail = run(workers, epoch=2, first_step=4)  # a resumed epoch redraws the remaining batches exactly
    assert all(same_draws(a, b) for a, b in zip(ref[4:], tail, strict=True))
    other = run(0, epoch=3)
    assert not any(same_draws(a, b) for a, b in zip(ref, other, strict=True)), "a new epoch, new draws"


def test_collate_mixes_uint8_with_the_grid_mix_kernel_and_applies_the_transform(monkeypatch):
    calls = []
    real = patchmix.mixing.batch.grid_mix
    monkeypatch.setattr(patchmix.mixing.batch, "grid_mix", lambda *a, **kw: calls.append(a[0].dtype) or real(*a, **kw))
    flips = []

    def flip(x, generator):
        flips.append(generator)
        return x.flip(3)

    collate = MixCollate(Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem"), transform=flip)
    samples = [uint8_dataset()[i] for i in range(5)]
    batch = collate(samples)  # a plain list of samples: the per-worker stream
    assert calls == [torch.uint8] and batch.images.dtype == torch.uint8 and len(flips) == 1
    x = torch.stack([s[0] for s in samples]).flip(3)
    assert torch.equal(batch.apply(x), batch.images), "the transform ran before mixing"
    g_t, g_m = collate.generators(BatchKey(0, 0))
    assert g_t.initial_seed() != g_m.initial_seed(), "crops and mixing draw from separate generators"


@pytest.mark.parametrize("workers", [0, 2])
def test_mix_off_epoch_serves_unmixed_batches(workers):
    ds = KeyedDataset(uint8_dataset())
    collate = MixCollate(Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem"), mix_off_epoch=2)
    sampler = EpochBatchSampler()
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        persistent_workers=workers > 0)
    for epoch, mixed in ((1, True), (2, False), (5, False)):  # the epoch reaches persistent workers in the key
        sampler.set_epoch(epoch, [torch.arange(16)])
        batch = next(iter(loader))
        assert bool((batch.lam < 1).any()) == mixed
        if not mixed:  # the mixer's own unmixed batch: an all-True grid for PatchMix
            assert batch.mask.all() and torch.equal(batch.images, ds.dataset.tensors[0][:16])
    del loader


def test_the_collate_asks_a_switch_it_may_share():
    """``mix_off_epoch`` is timm's (0: never off) and builds the collate's MixSwitch; ``switch=`` shares one (the
    trainer's Method does), so whoever holds it switches mixing off for both."""
    from patchmix.mixing.switch import MixSwitch

    samples = KeyedSamples([uint8_dataset()[i] for i in range(8)], BatchKey(7, 0))
    mix = Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem")
    assert MixCollate(mix, mix_off_epoch=0).mixing(10**6), "0 never switches off (timm's --mixup-off-epoch 0)"
    assert MixCollate(mix).mix_off_epoch is None and MixCollate(mix, mix_off_epoch=3).mix_off_epoch == 3
    shared = MixSwitch(off_epoch=8)
    collate = MixCollate(mix, switch=shared)
    assert bool((collate(samples).lam < 1).any())
    shared.off_epoch = 7
    assert collate.switch is shared and bool((collate(samples).lam == 1).all())
    shared.off_epoch, shared.enabled = None, False
    assert not collate.mixing(0) and bool((collate(samples).lam == 1).all())
    with pytest.raises(ValueError, match="mix_off_epoch or switch"):
        MixCollate(mix, mix_off_epoch=2, switch=shared)
    with pytest.raises(ValueError, match="off_epoch must be an integer >= 0"):
        MixCollate(mix, mix_off_epoch=-1)
    with pytest.raises(ValueError, match="rank must be an integer >= 0"):
        MixCollate(mix, rank=-1)


def test_dict_and_tuple_samples_with_configurable_keys():
    """Dict samples (``"image"``, ``"label"`` by default: Hugging Face's names) and tuples (positions 0 and 1) collate
    to the same batch; ``keys=`` names other keys or positions; a sample without them says what it has."""
    ds = uint8_dataset(n=6)
    pairs = [ds[i] for i in range(6)]
    mix = Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem")

    def collated(samples, **kw):
        return MixCollate(mix, seed=1, **kw)(KeyedSamples(samples, BatchKey(0, 0)))

    want = collated(pairs)
    for samples, keys in (([{"image": x, "label": y} for x, y in pairs], None),
                          ([{"img": x, "label": y, "id": 3} for x, y in pairs], ("img", "label")),
                          ([(x, "meta", y) for x, y in pairs], (0, 2)),
                          ([[x, y] for x, y in pairs], None),
                          ([(x, int(y)) for x, y in pairs], None)):
        got = collated(samples, keys=keys)
        assert torch.equal(got.images, want.images) and torch.equal(got.target_a, want.target_a)
        assert torch.equal(got.lam, want.lam)
    with pytest.raises(ValueError, match=r"a dict sample has no key 'image' \(its keys: \['img', 'label'\]\); pass keys="):
        collated([{"img": x, "label": y} for x, y in pairs])
    with pytest.raises(ValueError, match="a tuple sample of 1 items has no items at keys=\\(0, 1\\)"):
        collated([(x,) for x, _ in pairs])
    with pytest.raises(ValueError, match="a sample must be an \\(image, label\\) tuple or a dict"):
        collated([x for x, _ in pairs])
    with pytest.raises(ValueError, match="the samples of a batch differ in form"):
        collated([{"image": pairs[0][0], "label": pairs[0][1]}, pairs[1]])
    with pytest.raises(ValueError, match=r"keys must be \(image_key, label_key\)"):
        MixCollate(mix, keys="image")
    loader = DataLoader([{"image": x, "label": y} for x, y in pairs], batch_size=3, collate_fn=MixCollate(mix))
    assert [len(b) for b in loader] == [3, 3]


def test_stack_batch_and_keys():
    ds = uint8_dataset()
    x, y, key = stack_batch([ds[0], ds[1]])
    assert x.shape == (2, 3, 8, 8) and y.dtype == torch.int64 and key is None
    soft = stack_batch([(ds[0][0], torch.tensor([0.5, 0.5])), (ds[1][0], torch.tensor([1.0, 0.0]))])
    assert soft.labels.shape == (2, 2) and soft.labels.is_floating_point()
    idx = KeyedIndices([3, 4], BatchKey(1, 2))
    assert idx == [3, 4] and idx.key == (1, 2)
    assert KeyedDataset(ds).__getitems__(idx).key == (1, 2)
    with pytest.raises(ValueError, match="empty"):
        stack_batch([])
    with pytest.raises(TypeError, match="mixer must be callable"):
        MixCollate(3)


def test_worker_output_is_shared_memory_like_the_input(monkeypatch):
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    assert worker_output(x) is None  # the main process
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    out = worker_output(x)
    assert out.is_shared() and out.shape == x.shape and out.stride() == x.stride() and out.dtype == torch.uint8
    batch = Mix(mixup_alpha=0.0, patchmix_alpha=1.0, mode="elem")(x, torch.zeros(4, dtype=torch.int64), out=out)
    assert batch.images is out
