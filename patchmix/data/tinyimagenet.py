"""``tinyimagenet``: the ``tiny-imagenet-200`` folder layout; its labelled ``val`` split is the test split (the test
labels are not public), the validation split a class-balanced ``val_fraction`` of ``train/``."""

from __future__ import annotations

import functools
import os

import torch

from .dataset import Dataset, Split, find_root, layout_error
from .folder import IMAGE_EXTENSIONS
from .splits import stratified_split

LAYOUT = """Tiny ImageNet (tiny-imagenet-200.zip, unpacked):
    <path>/                      (the folder itself, or a folder holding tiny-imagenet-200/)
      wnids.txt                  one class id (wnid) per line
      words.txt                  optional: "<wnid>\\t<name>" per line
      train/<wnid>/images/*.JPEG
      val/images/*.JPEG
      val/val_annotations.txt    "<file>\\t<wnid>\\t..." per line (this labelled split is used as the test set)"""
_error = functools.partial(layout_error, "tinyimagenet", LAYOUT)


def load_tinyimagenet(path: str, val_fraction: float, split_seed: int, image_size: int | None) -> Dataset:
    fmt = "tinyimagenet"
    root = find_root(path, "tiny-imagenet-200", "wnids.txt")
    wnids_file = os.path.join(root, "wnids.txt")
    if not os.path.isfile(wnids_file):
        raise _error(f"tinyimagenet: missing {wnids_file}")
    with open(wnids_file) as f:
        wnids = [line.strip() for line in f if line.strip()]
    if not wnids:
        raise _error(f"tinyimagenet: {wnids_file} lists no classes")
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
            raise _error(f"tinyimagenet: missing folder {d}")
        imgs = sorted(x for x in os.listdir(d) if x.lower().endswith(IMAGE_EXTENSIONS))
        if not imgs:
            raise _error(f"tinyimagenet: no images in {d}")
        files += [os.path.join(d, x) for x in imgs]
        labels += [index[w]] * len(imgs)
    ann = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(ann):
        raise _error(f"tinyimagenet: missing {ann}")
    test_files, test_labels = [], []
    with open(ann) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise _error(f"tinyimagenet: {ann} line {n}: expected '<file>\\t<wnid>\\t...' with a wnid "
                                        f"from wnids.txt, got {line.strip()!r}")
            p = os.path.join(root, "val", "images", parts[0])
            if not os.path.isfile(p):
                raise _error(f"tinyimagenet: {ann} names {parts[0]} but {p} does not exist")
            test_files.append(p)
            test_labels.append(index[parts[1]])
    size = image_size or 64
    full = Split(torch.tensor(labels, dtype=torch.int64), None, files, size, 3)
    keep, held = stratified_split(full.labels, val_fraction, split_seed)
    test = Split(torch.tensor(test_labels, dtype=torch.int64), None, test_files, size, 3)
    return Dataset(fmt, classes, full.subset(keep), full.subset(held), test,
                   split_rule=f"test = val/ (labelled; the test labels are not public); val = {val_fraction:g} "
                              f"of train/, class-balanced (split_seed {split_seed})")

