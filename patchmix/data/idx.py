"""``idx``: MNIST, Fashion-MNIST, KMNIST and EMNIST as distributed, and the idx file format they use, read with numpy
(no pickle, no torchvision).

An idx file is a header, then the data, all big-endian::

    bytes 0-1   0x00 0x00
    byte  2     the element type: 0x08 unsigned byte (the only one these datasets use, and the only one read here)
    byte  3     the number of dimensions d (3 for images: n, rows, columns; 1 for labels: n)
    bytes 4..   d unsigned 32-bit big-endian sizes
    then        prod(sizes) elements, row-major

So the image file's magic number is ``0x00000803`` and the label file's ``0x00000801``. The files may be
gzipped (``.gz``, as distributed); :func:`read_idx` decompresses them in memory.

Reading never trusts the header: the sizes are checked against the bytes actually present before anything is
allocated from them (a plain file's size comes from the file system; a gzip stream is decompressed in chunks
and abandoned as soon as it runs past what the header announced), so a truncated, padded or corrupt file is a
:class:`DatasetError` naming the file and what was expected, never an out-of-bounds read or a huge allocation.

The dataset: the four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, plain or ``.gz``) in a folder, its ``raw/``, or torchvision's root
(``<root>/FashionMNIST/raw/``, ``MNIST/raw/``, ``KMNIST/raw/``, ``EMNIST/raw/``); ``--data fashion-mnist`` finds
them in ``./data/FashionMNIST/raw/`` or where the Debian package ``dataset-fashion-mnist`` installs them
(:data:`FASHION_MNIST_DIRS`). The 10,000 ``t10k`` images are the test set; the validation set is a class-balanced
``val_fraction`` of the training images (of a class-balanced ``train_subset`` of them, taken first, when given),
fixed by ``split_seed``. Zero-padded 28x28 -> 32x32 like mnist5k. Class names: Fashion-MNIST's ten garments,
MNIST's digits, KMNIST's ten hiragana (romanised); any other labels (EMNIST's letters count from 1) are mapped to
their distinct sorted values and named by them. EMNIST's images, stored transposed, are turned upright.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib

import numpy as np
import torch

from ..errors import DatasetError
from .dataset import Dataset, Split, layout_error, pad_to_32
from .splits import carve_val

#: the element type byte of unsigned bytes, the type of every MNIST-family image and label file
UBYTE = 0x08
#: the magic numbers of an image file (3 dimensions) and a label file (1 dimension)
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
#: decompression chunk: a gzip stream is read this many bytes at a time, never more than the header announced
_CHUNK = 1 << 20


def _header(path: str, head: bytes, ndim: int, what: str) -> tuple[int, ...]:
    """The sizes the header of ``path`` announces, after checking its magic number (``head``: its first bytes)."""
    magic = (UBYTE << 8) | ndim
    if len(head) < 4:
        raise DatasetError(f"idx: {path} is {len(head)} bytes long: too short for an idx header (expected {what}, "
                           f"magic number 0x{magic:08x})")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        raise DatasetError(f"idx: {path} has magic number 0x{got:08x}, expected 0x{magic:08x} ({what}: unsigned "
                           f"bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
                           + (f"; its header says {head[3]} dimensions" if head[:3] == bytes([0, 0, UBYTE]) else ""))
    if len(head) < 4 + 4 * ndim:
        raise DatasetError(f"idx: {path} is truncated inside its header ({len(head)} bytes; expected {4 + 4 * ndim} "
                           f"for {what})")
    return tuple(int(v) for v in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))


def _read_limited(f, limit: int) -> bytes:
    """At most ``limit`` bytes of ``f`` (read in chunks, so a stream longer than announced costs no more)."""
    parts, n = [], 0
    while n < limit:
        chunk = f.read(min(_CHUNK, limit - n))
        if not chunk:
            break
        parts.append(chunk)
        n += len(chunk)
    return b"".join(parts)


def read_idx(path: str, ndim: int, what: str) -> np.ndarray:
    """The unsigned-byte array of the idx file ``path`` (gzipped when its name ends in ``.gz``): ``(n, rows,
    cols)`` for ``ndim = 3``, ``(n,)`` for ``ndim = 1``. ``what`` names the file's role in messages ("images",
    "labels"). Raises :class:`DatasetError` (one line: the file and what was expected) for a missing file, a
    wrong magic number or dimension count, a header that announces more or fewer bytes than the file holds, or a
    corrupt gzip stream."""
    if not os.path.isfile(path):
        raise DatasetError(f"idx: missing file {path} ({what})")
    head_len = 4 + 4 * ndim
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = _read_limited(f, head_len)
                sizes = _header(path, head, ndim, what)
                need = int(np.prod(sizes, dtype=object))  # Python ints: a hostile header cannot overflow
                body = _read_limited(f, need + 1)  # one byte more tells a padded stream from an exact one
                actual = len(body) if len(body) <= need else None
        else:
            with open(path, "rb") as f:
                head = f.read(head_len)
                sizes = _header(path, head, ndim, what)
                need = int(np.prod(sizes, dtype=object))
                size = os.fstat(f.fileno()).st_size - head_len  # checked before reading (allocating) the body
                actual = size if size <= need else None
                body = f.read(need) if size == need else b""
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"idx: cannot read {path} ({what}): {exc}") from None
    shape = " x ".join(map(str, sizes))
    if actual is None:
        raise DatasetError(f"idx: {path} holds more than the {need} bytes of data its header announces ({what}, "
                           f"{shape}): not an idx file, or two files joined")
    if actual < need:
        raise DatasetError(f"idx: {path} is truncated: its header announces {shape} = {need} bytes of {what}, the "
                           f"file holds {actual}")
    return np.frombuffer(body, dtype=np.uint8).reshape(sizes)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (gzipped when ``path`` ends in ``.gz``): the inverse of
    :func:`read_idx`, for tests and for exporting a subset."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + array.tobytes())


# --------------------------------------------------------------------------------------------------
# the dataset: four files in a folder
# --------------------------------------------------------------------------------------------------

LAYOUT = """idx (MNIST, Fashion-MNIST, KMNIST, EMNIST as distributed; pass --data fashion-mnist to use
    ./data/FashionMNIST/raw/ or the Debian package dataset-fashion-mnist's /usr/share/datasets/fashion-mnist/):
    <path>/                      (the folder itself, its raw/, or torchvision's root holding
                                  FashionMNIST/raw/, MNIST/raw/, KMNIST/raw/ or EMNIST/raw/)
      train-images-idx3-ubyte    [.gz] magic 0x00000803, n x 28 x 28 unsigned bytes (big-endian sizes)
      train-labels-idx1-ubyte    [.gz] magic 0x00000801, n unsigned bytes (0..9; other values: mapped to
                                       their sorted distinct values)
      t10k-images-idx3-ubyte     [.gz] the test images (the test set)
      t10k-labels-idx1-ubyte     [.gz] the test labels
    EMNIST's prefixed files (emnist-letters-train-images-idx3-ubyte ...): --data <folder>/emnist-letters"""
_error = functools.partial(layout_error, "idx", LAYOUT)

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
    raise _error("fashion-mnist: the four idx files are in none of "
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


def idx_location(path: str) -> tuple[str, str] | None:
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


def load_idx(path: str, val_fraction: float = 0.1, split_seed: int = 0, train_subset: int | None = None) -> Dataset:
    """An idx dataset (``path``: see :func:`idx_location`; ``"fashion-mnist"``: :func:`fashion_mnist_path`),
    zero-padded from 28x28 to 32x32. The 10,000 ``t10k`` images are the test set; the validation set is a
    class-balanced ``val_fraction`` of the training images (of a class-balanced ``train_subset`` of them when
    given), fixed by ``split_seed``. Labels: 0..9 for the datasets of :data:`IDX_CLASSES`; any other (EMNIST
    letters count from 1) are mapped to their distinct sorted values, named by those values."""
    where = idx_location(fashion_mnist_path() if path == "fashion-mnist" else path)
    if where is None:
        raise _error(f"idx: no {IDX_FILES[0]}[.gz] in {path}, {os.path.join(path, 'raw')} or "
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
    keep, held, pool = carve_val(y_train, val_fraction, split_seed, train_subset)
    mapped = "" if name in IDX_CLASSES or np.array_equal(values, np.arange(len(values))) else (
        f"; labels {values[0]}..{values[-1]} mapped to 0..{len(values) - 1}")
    return Dataset(name, classes, full.subset(keep), full.subset(held), Split(y_test, pad_to_32(test_x), None, 32, 1),
                   default_augment=IDX_AUGMENT, default_model="small_resnet",
                   split_rule=f"test = the {len(y_test)} t10k images; val = {val_fraction:g} of {pool}, class-"
                              f"balanced (split_seed {split_seed}); 28x28 zero-padded to 32x32{mapped}")
