"""Mixed samples drawn by any method (``patchmix show`` and the run's sample figures): builds the method's mixer
(or phase four's guided batch) and mixes a few images of a split. :func:`patchmix.workflow.figures.render_samples`
draws them."""

from __future__ import annotations


def draw_samples(cfg, ds, method: str, n: int = 16, seed: int = 0, policy=None, split: str = "train"):
    """A :class:`~patchmix.MixedBatch` of ``n`` samples of ``split`` mixed by ``method`` (images in ``[0, 1]``;
    ``guided`` needs ``policy``: its samples come from phase four's batch builder with only the guided part)."""
    import torch

    from .. import data as data_mod
    from ..mixing.batch import MixedBatch
    from ..seeding import seeded_generator
    from ..training.methods import make_mixer

    g = seeded_generator(seed, "show")
    sp = getattr(ds, split)
    if method == "guided":
        from ..guided import GuidedBatchSampler, GuidedCollate, GuidedPatchMix

        counts = (0, 0, n)
        guided = GuidedPatchMix(policy, sp.labels)
        idx = next(iter(GuidedBatchSampler(guided, counts, num_batches=1, generator=g)))
        x, y = sp.get(idx)
        mb = GuidedCollate(guided, counts).mix(data_mod.to_float(x, "cpu"), y)
    else:
        x, y = sp.get(torch.randperm(len(sp), generator=g)[: max(n, 2)])
        mb = make_mixer(method, cfg, g)(data_mod.to_float(x, "cpu"), y)
        mb = MixedBatch(mb.images[:n], mb.target_a[:n], mb.target_b[:n], mb.lam[:n],
                        None if mb.mask is None else mb.mask[:n])
    return mb
