"""Where a dataset comes from: the ``--data`` names that need no path, the format of a path
(:func:`detect_format`), and :func:`load_dataset`, which reads any format, checks the splits, applies
``limit_train``, decodes image files once when they fit, and measures the channel statistics."""

from __future__ import annotations

import os

from ..errors import DatasetError
from .cifar import LAYOUTS as CIFAR_LAYOUTS
from .cifar import load_cifar
from .dataset import Dataset, layout_error
from .digits import LAYOUT as DIGITS_LAYOUT
from .digits import load_digits_dataset
from .fmnist_loc import LAYOUT as FMNIST_LOC_LAYOUT
from .fmnist_loc import load_fmnist_loc
from .folder import LAYOUT as FOLDER_LAYOUT
from .folder import load_folder
from .idx import LAYOUT as IDX_LAYOUT
from .idx import idx_location, load_idx
from .loading import DECODE_MAX_MB, channel_stats, decode_in_memory
from .mnist5k import LAYOUT as MNIST5K_LAYOUT
from .mnist5k import load_mnist5k
from .splits import balanced_subset
from .tinyimagenet import LAYOUT as TINYIMAGENET_LAYOUT
from .tinyimagenet import load_tinyimagenet
from .wsol import LAYOUT as WSOL_LAYOUT
from .wsol import load_wsol, wsol_location

#: every format's expected layout, by format name: the text a :class:`DatasetError` about a dataset carries
LAYOUTS = {**CIFAR_LAYOUTS, "tinyimagenet": TINYIMAGENET_LAYOUT, "folder": FOLDER_LAYOUT, "idx": IDX_LAYOUT,
           "digits": DIGITS_LAYOUT, "mnist5k": MNIST5K_LAYOUT, "wsol": WSOL_LAYOUT, "fmnist-loc": FMNIST_LOC_LAYOUT}


def all_layouts() -> str:
    return "Expected one of these layouts:\n  " + "\n  ".join(LAYOUTS.values())


def _layout_error(fmt: str, problem: str) -> DatasetError:
    """``problem`` with ``fmt``'s layout, or every layout when ``fmt`` names none."""
    if fmt in LAYOUTS:
        return layout_error(fmt, LAYOUTS[fmt], problem)
    return DatasetError(problem, layout=all_layouts())


def detect_format(path: str) -> str:
    """Guess the format of a dataset folder; raises :class:`DatasetError` listing every layout."""
    if path in ("digits", "mnist5k", "fmnist-loc"):
        return path
    if path == "fashion-mnist":
        return "idx"
    if not os.path.exists(path) and idx_location(path) is None:  # EMNIST's <folder>/<prefix> names no file
        raise DatasetError(f"dataset not found: {path}", layout=all_layouts())
    checks = [("cifar10", ("batches.meta", "cifar-10-batches-py/batches.meta")),
              ("cifar100", ("meta", "cifar-100-python/meta")),
              ("tinyimagenet", ("wnids.txt", "tiny-imagenet-200/wnids.txt"))]
    for fmt, markers in checks:
        if any(os.path.exists(os.path.join(path, m)) for m in markers):
            return fmt
    if wsol_location(path) is not None:  # before "folder": its image folders look like classes
        return "wsol"
    if idx_location(path) is not None:  # before "folder": torchvision's root holds sub-folders
        return "idx"
    if os.path.isfile(path) and path.endswith((".csv", ".csv.gz")):
        return "mnist5k"
    if os.path.isdir(path) and any(os.path.isdir(os.path.join(path, d)) for d in os.listdir(path)):
        return "folder"
    raise DatasetError(f"cannot tell the format of {path}: no dataset layout patchmix reads (name one with --format)",
                       layout=all_layouts())


#: the ``--data`` names that need no path: shipped with a package (digits, mnist5k) or found where a package or
#: torchvision puts it (fashion-mnist, and fmnist-loc built from it: :data:`patchmix.data.idx.FASHION_MNIST_DIRS`)
BUNDLED = ("digits", "mnist5k", "fashion-mnist", "fmnist-loc")
#: the formats ``data.train_subset`` applies to
TRAIN_SUBSET_FORMATS = ("idx", "cifar10", "cifar100", "fmnist-loc")


def load_dataset(source: str = "digits", format: str = "auto", *, val_fraction: float = 0.1, split_seed: int = 0,
                 image_size: int | None = None, limit_train: int | None = None, train_subset: int | None = None,
                 decode_max_mb: float = DECODE_MAX_MB, workers: int = 0) -> Dataset:
    """Load a dataset (see the module docstring); raises :class:`DatasetError` with the expected layout.

    ``train_subset`` (idx, CIFAR and fmnist-loc: formats with a given test set) keeps a class-balanced subset of that many
    training images *before* the validation split is carved from them; ``limit_train`` keeps a class-balanced
    subset of the training split *after* it (the validation set unchanged).
    Image files are decoded once into uint8 tensors when all of them fit in ``decode_max_mb`` MiB
    (:func:`decode_in_memory`, by ``workers`` processes); else they stay files, decoded per batch."""
    fmt = detect_format(source) if format == "auto" else format
    bundled = source in BUNDLED  # shipped with a package or found in known places: no path
    if not bundled and fmt != "idx" and not os.path.exists(source):  # idx: EMNIST's <folder>/<prefix>
        raise _layout_error(fmt, f"dataset not found: {source}")
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
    elif fmt == "wsol":
        ds = load_wsol(source, image_size)
    elif fmt == "fmnist-loc":
        ds = load_fmnist_loc(source, split_seed, train_subset)
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}; choose from {', '.join(LAYOUTS)}")
    for name in ("train", "val", "test"):
        if len(getattr(ds, name)) == 0:
            raise _layout_error(fmt, f"{ds.name}: the {name} split is empty")
    if limit_train:
        ds.train = ds.train.subset(balanced_subset(ds.train.labels, limit_train, split_seed))
        ds.split_rule += f"; train limited to {len(ds.train)} images, class-balanced"
    decode_in_memory(ds, decode_max_mb, workers)
    ds.mean, ds.std = channel_stats(ds.train)
    return ds


def from_config(cfg) -> Dataset:
    """``load_dataset`` with the ``data`` section of a :class:`patchmix.config.Config`."""
    d = cfg.data
    return load_dataset(d.source, d.format, val_fraction=d.val_fraction, split_seed=d.split_seed,
                        image_size=d.image_size, limit_train=d.limit_train, train_subset=d.train_subset,
                        decode_max_mb=d.decode_max_mb, workers=d.workers)

