"""fmnist-loc: cluttered 64x64 canvases from Fashion-MNIST-style idx files written here (CI has no Fashion-MNIST),
compared with a per-image reference composition, and their ground truth taken from the item alone."""

import os

import numpy as np
import pytest
import torch

from patchmix import data
from patchmix.data import fmnist_loc
from patchmix.data.idx import write_idx


def item(c: int, i: int) -> np.ndarray:
    """A 28x28 item of class ``c``: a bright block, and for odd classes a second block apart from it (a sandal
    in two parts), on black; ``i`` moves it a little."""
    x = np.zeros((28, 28), dtype=np.uint8)
    x[4 + i % 3:14 + c % 5, 5:12 + i % 4] = 200
    if c % 2:
        x[20:25, 18 + i % 3:26] = 160
    return x


def write_items(folder, per_class=8, test_per_class=3):
    """The four idx files of a tiny Fashion-MNIST-like set in ``folder``; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for part, n in (("train", per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = np.stack([item(int(c), i) for i, c in enumerate(labels)])
        write_idx(os.path.join(folder, f"{part}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{part}-labels-idx1-ubyte.gz"), labels)
    return str(folder)


def reference(images: np.ndarray, seed: int, part: str, i: int):
    """Canvas, box and mask of image ``i``, one image at a time with plain slices (the recipe, read literally)."""
    d = fmnist_loc._draws(len(images), seed, part)
    canvas = np.zeros((64, 64), dtype=np.float32)
    for j in range(fmnist_loc.CLUTTER):
        (cy, cx), (ty, tx) = d["crop"][i, j], d["at"][i, j]
        canvas[ty:ty + 8, tx:tx + 8] += images[d["src"][i, j], cy:cy + 8, cx:cx + 8] * np.float32(1 / 255)
    canvas = np.minimum(canvas, 1.0)
    s, (y, x) = int(d["side"][i]), d["pos"][i]
    scaled = torch.nn.functional.interpolate(torch.tensor(images[i:i + 1, None], dtype=torch.float32) / 255,
                                             size=(s, s), mode="bilinear", antialias=True)[0, 0].clamp(0, 1).numpy()
    canvas[y:y + s, x:x + s] += scaled
    canvas = np.clip(canvas, 0.0, 1.0)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[y:y + s, x:x + s] = scaled > 0.1
    ys, xs = np.nonzero(mask)
    return np.rint(canvas * 255).astype(np.uint8), np.array([xs.min(), ys.min(), xs.max(), ys.max()]), mask


def test_canvases_match_the_per_image_reference(tmp_path):
    images = np.stack([item(i % 10, i) for i in range(40)])
    canvases, boxes, masks = fmnist_loc.compose(images, 3, "train")
    d = fmnist_loc._draws(len(images), 3, "train")
    assert canvases.shape == masks.shape == (40, 64, 64) and boxes.shape == (40, 4)
    assert (d["side"] >= 22).all() and (d["side"] <= 50).all()  # 0.8 .. 1.8 of 28 px
    assert (d["src"] != np.arange(40)[:, None]).all()  # clutter from other images
    for i in range(40):
        c, b, m = reference(images, 3, "train", i)
        assert np.array_equal(canvases[i], c) and np.array_equal(boxes[i], b) and np.array_equal(masks[i], m)


def test_ground_truth_is_the_item_not_the_clutter():
    images = np.stack([item(1, i) for i in range(30)])  # two parts each
    canvases, boxes, masks = fmnist_loc.compose(images, 0, "t10k")
    for c, (x0, y0, x1, y1), m in zip(canvases, boxes, masks, strict=True):
        ys, xs = np.nonzero(m)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max(), ys.max())  # tight, inclusive, around both parts
        assert 0 <= x0 <= x1 <= 63 and 0 <= y0 <= y1 <= 63
        assert (c[m == 1] > 0).all()  # the item is drawn where its mask is
    # clutter is drawn outside the masks, and the masks ignore it (the reference test pins them to the item)
    assert any((c[m == 0] > 0).any() for c, m in zip(canvases, masks, strict=True))


def test_same_seed_same_bytes_another_seed_differs(tmp_path):
    root = write_items(tmp_path / "fm")
    a = data.load_dataset(root, format="fmnist-loc", split_seed=0)
    b = data.load_dataset(root, format="fmnist-loc", split_seed=0)
    c = data.load_dataset(root, format="fmnist-loc", split_seed=1)
    for s in ("train", "val", "test"):
        sa, sb = getattr(a, s), getattr(b, s)
        assert sa.images.numpy().tobytes() == sb.images.numpy().tobytes()
        assert np.array_equal(np.concatenate(sa.boxes), np.concatenate(sb.boxes))
    assert torch.equal(a.test.masks, b.test.masks)
    assert not torch.equal(a.test.images, c.test.images)


def test_splits_subsets_and_settings(tmp_path):
    root = write_items(tmp_path / "fm", per_class=8, test_per_class=3)
    ds = data.load_dataset(root, format="fmnist-loc")
    assert ds.name == "fmnist-loc" and ds.classes == data.IDX_CLASSES["fashion-mnist"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 70, 30)  # val capped at 7 of 8 per class
    assert torch.bincount(ds.val.labels).tolist() == [7] * 10
    assert ds.val.images.shape[1:] == (1, 64, 64) and ds.val.images.dtype == torch.uint8
    assert ds.val.masks.shape == (70, 64, 64) and ds.test.masks.shape == (30, 64, 64) and ds.train.masks is None
    assert all(b.shape == (1, 4) and b.dtype == np.int64 for b in ds.test.boxes)
    assert data.augment_mode("auto", ds) == fmnist_loc.FMNIST_LOC_AUGMENT == "crop"
    # data.train_subset: a class-balanced part of the training images beside val; each canvas is the same one
    root2 = write_items(tmp_path / "fm2", per_class=12, test_per_class=2)
    full = data.load_dataset(root2, format="fmnist-loc")
    sub = data.load_dataset(root2, format="fmnist-loc", train_subset=10)
    assert len(sub.train) == 10 and torch.bincount(sub.train.labels).tolist() == [1] * 10
    assert torch.equal(sub.val.images, full.val.images)
    keys = {bytes(x.numpy()) for x in full.train.images}
    assert all(bytes(x.numpy()) in keys for x in sub.train.images)
    subset = fmnist_loc.load_fmnist_loc(root2, val_per_class=2)
    assert len(subset.val) == 20 and len(subset.train) == 100


def test_bad_files_are_dataset_errors(tmp_path):
    root = write_items(tmp_path / "fm")
    write_idx(os.path.join(root, "t10k-labels-idx1-ubyte.gz"), np.full(30, 12, np.uint8))
    with pytest.raises(data.DatasetError, match="t10k-labels.*labels up to 12"):
        data.load_dataset(root, format="fmnist-loc")
    with pytest.raises(data.DatasetError, match="no Fashion-MNIST idx files"):
        data.load_dataset(str(tmp_path), format="fmnist-loc")


def test_the_bundled_name(monkeypatch, tmp_path):
    from patchmix.data import idx

    assert data.detect_format("fmnist-loc") == "fmnist-loc" and "fmnist-loc" in data.BUNDLED
    monkeypatch.setattr(idx, "FASHION_MNIST_DIRS", (write_items(tmp_path / "deb"),))
    ds = data.load_dataset("fmnist-loc")
    assert len(ds.test) == 30 and "t10k" in ds.split_rule


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Fashion-MNIST is not installed")
def test_the_real_files_give_the_protocol_splits():
    ds = data.load_dataset("fmnist-loc", train_subset=1000)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 500, 10000)
    assert torch.bincount(ds.val.labels).tolist() == [50] * 10
    sides = np.concatenate(ds.test.boxes)[:, 2:] - np.concatenate(ds.test.boxes)[:, :2] + 1
    assert sides.max() <= 50 and sides.min() >= 1
