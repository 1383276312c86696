"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, installed with
scikit-learn), split by a fixed stratified 60/20/20 split: 1079 train / 359 val / 359 test."""

from __future__ import annotations

import numpy as np
import torch

from .._optional import require
from .dataset import Dataset, Split
from .splits import stratified_split

LAYOUT = """digits: scikit-learn's bundled 8x8 digits (no files needed; pass --data digits)"""


def load_digits_dataset(split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as uint8 (values 0..16 scaled to 0..255), split 60/20/20 stratified."""
    d = require("sklearn.datasets", "workflow", "--data digits (scikit-learn's 8x8 digits)").load_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]  # (1797, 1, 8, 8)
    labels = torch.from_numpy(d.target.astype(np.int64))
    rest, test = stratified_split(labels, 0.2, split_seed)
    tr, va = stratified_split(labels[rest], 0.25, split_seed + 1)
    train_idx, val_idx = rest[tr], rest[va]
    full = Split(labels, images, None, 8, 1)
    return Dataset("digits", [str(i) for i in range(10)], full.subset(train_idx), full.subset(val_idx),
                   full.subset(test), default_augment="none",
                   split_rule=f"a fixed stratified 60/20/20 split of the 1797 digits (split_seed {split_seed})")

