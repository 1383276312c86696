"""``cifar10`` / ``cifar100``: the "python version" pickle batches, as unpacked from the official archives.

CIFAR's "python version" files are pickles by format. They are read with a restricted unpickler that builds
only numpy arrays and plain containers: a file that would run code is refused with a :class:`DatasetError`.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from ..errors import DatasetError
from .dataset import Dataset, Split, find_root, layout_error
from .splits import carve_val

#: the expected layouts of the two formats
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
}


def _error(fmt: str, problem: str) -> DatasetError:
    return layout_error(fmt, LAYOUTS[fmt], problem)


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


def _unpickle(path: str, fmt: str) -> dict:
    if not os.path.isfile(path):
        raise _error(fmt, f"{fmt}: missing file {path}")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise _error(fmt, f"{fmt}: cannot unpickle {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise _error(fmt, f"{fmt}: {path} does not hold a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(obj: dict, label_key: str, path: str, fmt: str, num_classes: int):
    if "data" not in obj or label_key not in obj:
        raise _error(fmt, f"{fmt}: {path} lacks the keys 'data' and '{label_key}' (has {sorted(obj)})")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise _error(fmt, f"{fmt}: {path}: 'data' must be (n, 3072) with n labels, got data "
                          f"{data.shape} and {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _error(fmt, f"{fmt}: {path}: labels outside 0..{num_classes - 1}")
    images = torch.from_numpy(data.astype(np.uint8).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def load_cifar(path: str, num_classes: int, val_fraction: float, split_seed: int,
               train_subset: int | None = None) -> Dataset:
    fmt = "cifar10" if num_classes == 10 else "cifar100"
    if num_classes == 10:
        root = find_root(path, "cifar-10-batches-py", "batches.meta")
        meta = _unpickle(os.path.join(root, "batches.meta"), fmt)
        names = meta.get("label_names")
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key = ["test_batch"], "labels"
    else:
        root = find_root(path, "cifar-100-python", "meta")
        meta = _unpickle(os.path.join(root, "meta"), fmt)
        names = meta.get("fine_label_names")
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        raise _error(fmt, f"{fmt}: the meta file must list {num_classes} class names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def read(files):
        parts = [_cifar_arrays(_unpickle(os.path.join(root, f), fmt), label_key, os.path.join(root, f), fmt,
                               num_classes) for f in files]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    keep, held, pool = carve_val(train_y, val_fraction, split_seed, train_subset)
    full = Split(train_y, train_x, None, 32, 3)
    return Dataset(fmt, classes, full.subset(keep), full.subset(held), Split(test_y, test_x, None, 32, 3),
                   split_rule=f"test = the test batch(es); val = {val_fraction:g} of {pool} (the training batches), "
                              f"class-balanced (split_seed {split_seed})")
