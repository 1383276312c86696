"""``folder``: any class-per-folder image tree, optionally already split into ``train/`` + ``val/`` + ``test/``.

A tree's images are greyscale (1 channel) when every image is, else colour (3 channels); every image is
converted to that mode (palette and alpha images to RGB) and resized to ``image_size`` when it is read."""

from __future__ import annotations

import functools
import os

import torch

from ..errors import DatasetError
from .dataset import Dataset, Split, layout_error
from .splits import stratified_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LAYOUT = """class-per-folder image tree:
    <path>/<class name>/*.png|jpg|jpeg|bmp|...        (test and val each carved from it by data.val_fraction)
  or, already split:
    <path>/train/<class name>/*.png ...
    <path>/val/<class name>/*.png ...                  (optional; the test set when there is no test/)
    <path>/test/<class name>/*.png ...                 (optional; else val/ is the test set, or it is carved
                                                        from train; val is carved from train when val/ is
                                                        missing or is the test set)"""
_error = functools.partial(layout_error, "folder", LAYOUT)


def _scan_class_tree(root: str, path: str, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    if classes is None:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        if len(classes) < 2:
            raise _error(f"folder: {root} must hold one sub-folder per class (found {len(classes)})")
    files, labels = [], []
    for i, c in enumerate(classes):
        d = os.path.join(root, c)
        if not os.path.isdir(d):
            raise _error(f"folder: class {c!r} has no folder {d}")
        imgs = sorted(x for x in os.listdir(d) if x.lower().endswith(IMAGE_EXTENSIONS))
        files += [os.path.join(d, x) for x in imgs]
        labels += [i] * len(imgs)
    if not files:
        raise _error(f"folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return classes, files, labels


GREYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def image_channels(files: list[str]) -> int:
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
    channels = image_channels(files + [f for f2, _ in given.values() for f in f2])

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

