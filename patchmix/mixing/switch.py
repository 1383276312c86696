"""Whether a batch is mixed: the one rule behind ``Mix.enabled``, ``MixCollate(mix_off_epoch=)`` and the trainer's
``train.mix_off_epoch`` (timm's ``Mixup.mixup_enabled`` and ``--mixup-off-epoch``).

A :class:`MixSwitch` holds the two settings and decides; everything else asks it. A :class:`patchmix.Mix` owns one
(``Mix.enabled`` reads and writes its ``enabled``), a :class:`patchmix.MixCollate` asks its own with each batch's
epoch (from the batch key, so the answer reaches persistent DataLoader workers, which hold copies of any flag set
in the main process), and a training's :class:`patchmix.training.Method` shares one switch with its collate, so the
epoch's index batches (phase four's guided pairs) and its collated batches agree.
"""

from __future__ import annotations

from . import checks


class MixSwitch:
    """Mixing on or off for a batch of a given epoch.

    Args:
        off_epoch: batches of this (0-based) epoch and later are not mixed (timm's ``--mixup-off-epoch``); 0 or
            None: never switched off (timm's default 0 means the same).
        enabled: False: no batch is mixed (timm's ``mixup_enabled``).
    """

    def __init__(self, off_epoch: int | None = None, enabled: bool = True):
        self.off_epoch = None if off_epoch is None else checks.integer("MixSwitch", "off_epoch", off_epoch, low=0)
        self.enabled = bool(enabled)

    def mixes(self, epoch: int | None = None) -> bool:
        """Whether a batch of ``epoch`` is mixed (``epoch`` None: not known, only ``enabled`` decides)."""
        if not self.enabled:
            return False
        return not self.off_epoch or epoch is None or epoch < self.off_epoch

    def __repr__(self) -> str:
        return f"MixSwitch(off_epoch={self.off_epoch}, enabled={self.enabled})"


__all__ = ["MixSwitch"]
