"""``fmnist-loc``: a cluttered localisation set built deterministically from the Fashion-MNIST idx files.

The recipe is cluttered MNIST's (Mnih et al. 2014, google-deepmind/mnist-cluttered), with Fashion-MNIST's items:

* a 64 x 64 canvas (:data:`CANVAS`), black;
* six 8 x 8 clutter crops (:data:`CLUTTER`, :data:`CLUTTER_SIDE`), each from another image of the same file, at a
  uniform place inside the crop's source and inside the canvas, added and clipped to 1;
* then one item, the image itself, scaled by a factor drawn log-uniformly in [0.8, 1.8] (:data:`SCALE_RANGE`:
  22 to 50 px a side, bilinear with antialiasing), at a uniform position that keeps it inside, added and clipped.

The ground truth comes from the item's own scaled pixels, never from the composite (clutter may touch it): the
mask is the pixels above 0.1 (:data:`MASK_THRESHOLD`, in [0, 1] units), the box the tight box around all of them
(sandals and boots come in several parts), ``x0, y0, x1, y1`` inclusive pixels as wsolevaluation writes them.

Splits: the test split is built from the 10,000 ``t10k`` images; from the 60,000 training images a class-balanced
50 per class (:data:`VAL_PER_CLASS`, fixed by ``split_seed``) is held out as the box-labelled validation split
(wsolevaluation's train-fullsup: the only boxes for choosing a threshold or checkpoint), and the rest is the
training split, or a class-balanced ``train_subset`` of it. Clutter comes from the same file (training images for
train and val, ``t10k`` for test), and every draw of image ``i`` is made up front for the whole file from a
generator seeded by ``(split_seed, file)``: a canvas depends only on its image and the seed, not on
``train_subset``, and the same seed gives the same bytes. Masks are kept for val and test (PxAP); boxes for every
split.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import DatasetError
from ..seeding import derive_seed
from .dataset import Dataset, Split
from .idx import IDX_CLASSES, fashion_mnist_path, idx_location, read_idx_pair
from .splits import balanced_subset

#: the canvas side, the source images' side, the clutter: count and side of each crop
CANVAS = 64
ITEM = 28
CLUTTER = 6
CLUTTER_SIDE = 8
#: the item's scale factor range, drawn log-uniformly (22 to 50 px a side for 28 px items)
SCALE_RANGE = (0.8, 1.8)
#: a pixel of the scaled item above this (in [0, 1] units) is foreground
MASK_THRESHOLD = 0.1
#: the validation split: this many box-labelled images per class held out of the training images
VAL_PER_CLASS = 50
#: ``data.augment = auto``: a crop, no flip. A flipped garment is still the same garment, so flips would be
#: harmless, but on Fashion-MNIST flips were measured not to help (the idx datasets' ``IDX_AUGMENT``), and the same
#: choice keeps fmnist-loc's recipe comparable with the fmnist preset's; ``--set data.augment=crop-flip`` adds them.
FMNIST_LOC_AUGMENT = "crop"
LAYOUT = """fmnist-loc: a cluttered 64x64 localisation set built from the Fashion-MNIST idx files (pass --data
    fmnist-loc: they are looked for where --data fashion-mnist looks; or --format fmnist-loc --data <idx folder>)"""
#: images composed at a time (bounds the float32 working memory to about 64 MiB)
_CHUNK = 4096


def _draws(n: int, seed: int, part: str) -> dict[str, np.ndarray]:
    """Every random choice for the ``n`` images of file ``part``, drawn at once (row ``i`` is image ``i``'s)."""
    if n < 2:
        raise DatasetError(f"fmnist-loc: the {part} file holds {n} image(s); clutter needs at least 2")
    rng = np.random.default_rng(derive_seed("fmnist-loc", int(seed), part))
    lo, hi = (math.log(s) for s in SCALE_RANGE)
    side = np.rint(ITEM * np.exp(rng.uniform(lo, hi, n))).astype(np.int64)  # 22.4 .. 50.4 -> 22 .. 50
    room = CANVAS - side + 1
    pos = np.floor(rng.random((n, 2)) * room[:, None]).astype(np.int64)  # (y, x): the item stays inside
    src = rng.integers(0, n - 1, (n, CLUTTER))
    src += src >= np.arange(n)[:, None]  # another image than the item's own
    crop = rng.integers(0, ITEM - CLUTTER_SIDE + 1, (n, CLUTTER, 2))  # (y, x) inside the source
    at = rng.integers(0, CANVAS - CLUTTER_SIDE + 1, (n, CLUTTER, 2))  # (y, x) inside the canvas
    return {"side": side, "pos": pos, "src": src, "crop": crop, "at": at}


def _scaled(items: np.ndarray, side: int) -> np.ndarray:
    """uint8 items ``(k, 28, 28)`` -> float32 ``(k, side, side)`` in [0, 1], bilinear with antialiasing."""
    x = torch.tensor(items, dtype=torch.float32).div_(255.0)[:, None]
    y = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return y[:, 0].clamp_(0.0, 1.0).numpy()


def compose(images: np.ndarray, seed: int, part: str, rows: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The canvases of ``images[rows]`` (``images``: uint8 ``(n, 28, 28)``, one file; ``rows``: default all).

    Returns uint8 canvases ``(m, 64, 64)``, int64 boxes ``(m, 4)`` (``x0, y0, x1, y1`` inclusive) and uint8 masks
    ``(m, 64, 64)`` (1 on the item's pixels above :data:`MASK_THRESHOLD`). An item with no such pixel (none in
    Fashion-MNIST) gets its whole square as box and an empty mask."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    d = _draws(len(images), seed, part)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    m = rows.size
    canvases = np.empty((m, CANVAS, CANVAS), dtype=np.uint8)
    masks = np.zeros((m, CANVAS, CANVAS), dtype=np.uint8)
    boxes = np.empty((m, 4), dtype=np.int64)
    # windows: view (n, rows, cols, side, side) of every side x side square, so that a gather or an add of one
    # square per canvas is plain integer indexing on the first three axes (numpy's fancy indexing of each pixel
    # costs ten times more)
    sources = sliding_window_view(images, (CLUTTER_SIDE, CLUTTER_SIDE), axis=(1, 2))
    for start in range(0, m, _CHUNK):
        r = rows[start:start + _CHUNK]
        k = np.arange(r.size)
        canvas = np.zeros((r.size, CANVAS, CANVAS), dtype=np.float32)
        spots = sliding_window_view(canvas, (CLUTTER_SIDE, CLUTTER_SIDE), axis=(1, 2), writeable=True)
        for j in range(CLUTTER):  # one crop per canvas at a time: no square is written twice in one assignment
            (cy, cx), (ty, tx) = d["crop"][r, j].T, d["at"][r, j].T
            spots[k, ty, tx] += sources[d["src"][r, j], cy, cx] * np.float32(1 / 255)
        np.minimum(canvas, 1.0, out=canvas)
        side, pos = d["side"][r], d["pos"][r]
        for s in np.unique(side):
            sel = np.nonzero(side == s)[0]
            item = _scaled(images[r[sel]], int(s))
            py, px = pos[sel, 0], pos[sel, 1]
            sliding_window_view(canvas, (s, s), axis=(1, 2), writeable=True)[sel, py, px] += item
            fg = item > MASK_THRESHOLD
            sliding_window_view(masks, (s, s), axis=(1, 2), writeable=True)[start + sel, py, px] = fg
            any_y, any_x = fg.any(axis=2), fg.any(axis=1)  # (k, s): rows / columns holding foreground
            empty = ~any_y.any(axis=1)
            y0, y1 = any_y.argmax(axis=1), s - 1 - any_y[:, ::-1].argmax(axis=1)
            x0, x1 = any_x.argmax(axis=1), s - 1 - any_x[:, ::-1].argmax(axis=1)
            y0, x0 = np.where(empty, 0, y0), np.where(empty, 0, x0)
            y1, x1 = np.where(empty, s - 1, y1), np.where(empty, s - 1, x1)
            boxes[start + sel] = np.stack([x0 + px, y0 + py, x1 + px, y1 + py], 1)
        np.clip(canvas, 0.0, 1.0, out=canvas)
        canvas *= 255.0
        np.rint(canvas, out=canvas)
        canvases[start:start + r.size] = canvas  # exact: whole numbers in 0..255
    return canvases, boxes, masks


def _split(labels: np.ndarray, canvases: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None) -> Split:
    return Split(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(canvases)[:, None], None, CANVAS, 1,
                 boxes=[b[None] for b in boxes], masks=None if masks is None else torch.from_numpy(masks))


def load_fmnist_loc(path: str = "fmnist-loc", split_seed: int = 0, train_subset: int | None = None,
                    val_per_class: int = VAL_PER_CLASS) -> Dataset:
    """fmnist-loc from the Fashion-MNIST idx files (``path`` ``"fmnist-loc"``: where ``--data fashion-mnist``
    finds them; else a folder of idx files, see :func:`patchmix.data.idx.idx_location`), as the module docstring
    says. ``val_per_class`` is capped so that every class keeps a training image (for small test files)."""
    folder = fashion_mnist_path() if path in ("fmnist-loc", "fashion-mnist") else path
    where = idx_location(folder)
    if where is None:
        raise DatasetError(f"fmnist-loc: no Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], ...) in {folder}")
    classes = IDX_CLASSES["fashion-mnist"]
    parts = {}
    for part in ("train", "t10k"):
        x, y, lab_path = read_idx_pair(*where, part)
        if y.size and int(y.max()) >= len(classes):
            raise DatasetError(f"fmnist-loc: {lab_path} holds labels up to {int(y.max())}: expected Fashion-MNIST's "
                               f"0..{len(classes) - 1}")
        parts[part] = (x, y)
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["t10k"]
    y = torch.from_numpy(train_y.astype(np.int64))
    counts = torch.bincount(y, minlength=len(classes))
    if int(counts.min()) < 2:
        raise DatasetError(f"fmnist-loc: every class needs 2 training images or more (a validation and a training "
                           f"image); the training labels count {counts.tolist()}")
    per_class = min(val_per_class, int(counts.min()) - 1)
    val = balanced_subset(y, per_class * len(classes), split_seed).numpy()
    rest = np.setdiff1d(np.arange(len(train_y)), val)
    what = f"the other {rest.size} training images"
    if train_subset:
        rest = rest[balanced_subset(y[rest], train_subset, split_seed).numpy()]
        what = f"a class-balanced {rest.size} of " + what
    canvases, boxes, masks = compose(train_x, split_seed, "train", np.concatenate([rest, val]))
    n = rest.size
    train = _split(train_y[rest], canvases[:n], boxes[:n], None)
    val_split = _split(train_y[val], canvases[n:], boxes[n:], masks[n:])
    test = _split(test_y, *compose(test_x, split_seed, "t10k"))
    return Dataset("fmnist-loc", list(classes), train, val_split, test, default_augment=FMNIST_LOC_AUGMENT,
                   default_model="small_resnet",
                   split_rule=f"test = the {len(test)} t10k images; val = {per_class} per class of the training "
                              f"images (box-labelled, split_seed {split_seed}); train = {what}; each a 64x64 cluttered "
                              f"canvas (fmnist-loc, seed {split_seed}) from {os.path.basename(where[0]) or where[0]}")
