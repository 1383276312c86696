"""A dataset in memory: :class:`Split` (labels plus uint8 images or image files) and :class:`Dataset` (three splits,
the class names and what ``auto`` settings mean for them), and the helpers every format shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import DatasetError


def layout_error(fmt: str, layout: str, problem: str) -> DatasetError:
    """A one-line :class:`DatasetError` (``problem``) carrying ``fmt``'s expected ``layout`` (its ``layout``)."""
    return DatasetError(problem, layout=f"Expected layout for {fmt}:\n  {layout}")


@dataclass
class Split:
    """One split: labels plus either in-memory uint8 images ``(N, C, H, W)`` or image files, and, for a
    localisation set, its ground truth in the coordinates of the images as loaded (``image_size`` square):

    * ``boxes``: per image an int64 array ``(k_i, 4)`` of ``x0, y0, x1, y1``, inclusive pixels (wsolevaluation's
      convention: ``0 <= x0 <= x1 <= W - 1``);
    * ``masks``: uint8 ``(N, H, W)``, 1 foreground, 0 background, 255 ignored (wsolevaluation's PxAP masks).

    Both are ``None`` for a classification set."""

    labels: Tensor
    images: Tensor | None = None
    files: list[str] | None = None
    image_size: int = 32
    channels: int = 3
    boxes: list[np.ndarray] | None = None
    masks: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | Tensor) -> Split:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return Split(self.labels[idx].clone(),
                     None if self.images is None else self.images[idx].clone(),
                     None if self.files is None else [self.files[i] for i in idx.tolist()],
                     self.image_size, self.channels,
                     None if self.boxes is None else [self.boxes[i] for i in idx.tolist()],
                     None if self.masks is None else self.masks[idx].clone())

    def load(self, i: int) -> Tensor:
        """Image ``i`` as uint8 ``(C, H, W)``."""
        if self.images is not None:
            return self.images[i]
        return read_image(self.files[i], self.image_size, self.channels)

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


def read_image(path: str, size: int, channels: int) -> Tensor:
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


def pad_to_32(images: np.ndarray) -> Tensor:
    """uint8 ``(n, 28, 28)`` digits -> uint8 ``(n, 1, 32, 32)``: 2 px of zero each side (MNIST's background
    colour), so that ``P = 4`` gives 8x8-pixel cells as on CIFAR."""
    padded = np.zeros((images.shape[0], 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return torch.from_numpy(padded)


def find_root(path: str, inner: str, marker: str) -> str:
    if os.path.exists(os.path.join(path, marker)):
        return path
    if os.path.exists(os.path.join(path, inner, marker)):
        return os.path.join(path, inner)
    return path


def resize_box(boxes, image_size, resize_size) -> np.ndarray:
    """Boxes ``(4,)`` or ``(..., 4)`` ``x0, y0, x1, y1`` of an image of ``image_size = (w, h)`` in the coordinates of
    that image resized to ``resize_size = (w', h')`` -> int64 of the same shape: wsolevaluation's ``resize_bbox``,
    ``int(x * w' / w)`` in float64 (multiplied first, then divided, then truncated), so the ground truth matches
    its evaluator's to the pixel (evaluation resizes every image to 224 x 224 without a crop).

    Raises:
        ValueError: a negative coordinate, ``x1 < x0`` or ``y1 < y0``, a last axis other than 4, or a size that is
            not positive.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 0 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (4,) or (..., 4) (x0, y0, x1, y1), got {b.shape}")
    if (b < 0).any() or (b[..., 2] < b[..., 0]).any() or (b[..., 3] < b[..., 1]).any():
        raise ValueError(f"boxes must be (x0, y0, x1, y1) with 0 <= x0 <= x1 and 0 <= y0 <= y1, got {b.tolist()}")
    (w, h), (nw, nh) = (tuple(float(v) for v in image_size), tuple(float(v) for v in resize_size))
    if min(w, h, nw, nh) <= 0:
        raise ValueError(f"image_size and resize_size must be positive (width, height), got {tuple(image_size)}, "
                         f"{tuple(resize_size)}")
    scaled = b * np.array([nw, nh, nw, nh], dtype=np.float64) / np.array([w, h, w, h], dtype=np.float64)
    return np.trunc(scaled).astype(np.int64)
