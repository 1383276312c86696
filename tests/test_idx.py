"""The idx format (MNIST, Fashion-MNIST, KMNIST, EMNIST): tiny files written here in the real layout, gzipped or
plain, loaded through ``load_dataset`` and the CLI; every malformed file is a one-line DatasetError naming it."""

import gzip
import os

import numpy as np
import pytest
import torch

from patchmix import data
from patchmix.cli import main
from patchmix.data.idx import read_idx, write_idx

FILES = data.IDX_FILES


def write_idx_dataset(folder, per_class=6, test_per_class=2, gz=True, prefix="", classes=range(10), seed=0):
    """The four files of an idx dataset in ``folder``: class ``c`` (label value ``c``) has a bright row at
    ``5 + index % 22``, on noise; returns the folder."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for part, n in (("train", per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.asarray(list(classes), dtype=np.uint8), n)
        images = rng.integers(0, 40, (labels.size, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 5 + list(classes).index(int(c)) % 22] = 255
        ext = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{prefix}{part}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(folder, f"{prefix}{part}-labels-idx1-ubyte{ext}"), labels)
    return str(folder)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_is_padded_split_and_kept_uint8(tmp_path, gz):
    root = write_idx_dataset(tmp_path / "FashionMNIST" / "raw", per_class=10, gz=gz)
    assert data.detect_format(root) == "idx"
    ds = data.load_dataset(root, val_fraction=0.2, split_seed=1)
    assert ds.name == "fashion-mnist" and ds.classes == data.IDX_CLASSES["fashion-mnist"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 20)  # test = t10k; val = 0.2 of train per class
    assert torch.bincount(ds.val.labels).tolist() == [2] * 10 and torch.bincount(ds.test.labels).tolist() == [2] * 10
    for split in (ds.train, ds.val, ds.test):
        x = split.images
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 32, 32)
        assert int(x[:, :, :2].max()) == int(x[:, :, 30:].max()) == int(x[..., :2].max()) == int(x[..., 30:].max()) == 0
        assert all(int(x[i, 0, 2 + 5 + int(c), 2:30].min()) == 255 for i, c in enumerate(split.labels))
    train_val = torch.cat([ds.train.images, ds.val.images])
    assert len({bytes(v.numpy()) for v in train_val}) == 100  # every training image exactly once
    assert "t10k" in ds.split_rule and "0.2 of the 100 training images" in ds.split_rule
    assert ds.default_augment == data.IDX_AUGMENT and data.augment_mode("auto", ds) == data.IDX_AUGMENT
    from patchmix import config
    from patchmix.training.model import model_name

    assert model_name(config.Config(), ds) == "small_resnet"
    again = data.load_dataset(root, val_fraction=0.2, split_seed=1)
    assert torch.equal(again.val.images, ds.val.images)
    assert not torch.equal(data.load_dataset(root, val_fraction=0.2, split_seed=2).val.images, ds.val.images)


def test_read_idx_round_trips_and_reads_big_endian_sizes(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(str(tmp_path / name), a)
        assert np.array_equal(read_idx(str(tmp_path / name), 3, "images"), a)
    raw = open(tmp_path / "x-idx3-ubyte", "rb").read()
    assert raw[:16] == bytes.fromhex("00000803" "00000002" "0000001c" "0000001c")  # MNIST's own header layout


def test_torchvision_roots_and_the_names_they_give(tmp_path):
    """torchvision's root (root/<Name>/raw/), one or two levels above the files, and the class names per dataset."""
    write_idx_dataset(tmp_path / "tv" / "KMNIST" / "raw", per_class=3, test_per_class=1)
    for path in (tmp_path / "tv", tmp_path / "tv" / "KMNIST", tmp_path / "tv" / "KMNIST" / "raw"):
        assert data.detect_format(str(path)) == "idx"
        ds = data.load_dataset(str(path), val_fraction=0.34)
        assert ds.name == "kmnist" and ds.classes[:3] == ["o", "ki", "su"] and len(ds.test) == 10
    write_idx_dataset(tmp_path / "m" / "MNIST" / "raw", per_class=3, test_per_class=1, gz=False)
    assert data.load_dataset(str(tmp_path / "m"), val_fraction=0.34).classes == [str(i) for i in range(10)]
    other = write_idx_dataset(tmp_path / "my-digits", per_class=3, test_per_class=1)
    ds = data.load_dataset(other, val_fraction=0.34)
    assert ds.name == "idx:my-digits" and ds.classes == [str(i) for i in range(10)]
    # two datasets under one root: which one is meant is asked, not guessed
    write_idx_dataset(tmp_path / "tv" / "MNIST" / "raw", per_class=3, test_per_class=1)
    with pytest.raises(data.DatasetError, match="2 sets of idx files"):
        data.load_dataset(str(tmp_path / "tv"))


def test_emnist_letters_count_from_one_and_are_mapped(tmp_path):
    """EMNIST's letters are labelled 1..26: mapped to 0..25 (the distinct sorted labels), named by their values;
    the prefixed files are named by <folder>/<prefix>; the images are turned upright (EMNIST stores them
    transposed)."""
    raw = tmp_path / "EMNIST" / "raw"
    write_idx_dataset(raw, per_class=3, test_per_class=1, prefix="emnist-letters-", classes=range(1, 27))
    write_idx_dataset(raw, per_class=3, test_per_class=1, prefix="emnist-digits-")
    with pytest.raises(data.DatasetError, match="expected one; pass the one to use"):
        data.detect_format(str(raw))
    path = str(raw / "emnist-letters")
    assert data.detect_format(path) == "idx"
    ds = data.load_dataset(path, val_fraction=0.34)
    assert ds.name == "emnist-letters" and ds.num_classes == 26 and ds.classes[0] == "1" and ds.classes[-1] == "26"
    assert sorted(set(ds.test.labels.tolist())) == list(range(26)) and "1..26 mapped to 0..25" in ds.split_rule
    # transposed upright: class 0 (label 1) had its bright row 5 in the file, so it is column 5 now
    i = int(torch.nonzero(ds.test.labels == 0)[0])
    assert int(ds.test.images[i, 0, 2:30, 2 + 5].min()) == 255


def test_train_subset_is_taken_before_the_validation_split(tmp_path):
    root = write_idx_dataset(tmp_path / "f" / "FashionMNIST" / "raw", per_class=20)
    ds = data.load_dataset(root, val_fraction=0.1, train_subset=100)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 20)
    assert torch.bincount(ds.train.labels).tolist() == [9] * 10 and torch.bincount(ds.val.labels).tolist() == [1] * 10
    assert "a class-balanced subset of 100 of the 200 training images" in ds.split_rule
    after = data.load_dataset(root, val_fraction=0.1, limit_train=90)  # limit_train: after the split (val 20)
    assert (len(after.train), len(after.val)) == (90, 20)
    with pytest.raises(data.DatasetError, match="data.train_subset applies to"):
        data.load_dataset("digits", train_subset=100)
    from patchmix import config

    with pytest.raises(config.ConfigError, match="data.train_subset"):
        config.Config().override({"data.train_subset": 0})


def test_fashion_mnist_by_name_looks_in_the_torchvision_root_then_the_debian_package(tmp_path, monkeypatch):
    from patchmix.data import idx

    monkeypatch.setattr(idx, "FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"), str(tmp_path / "deb")))
    with pytest.raises(data.DatasetError, match="apt-get install dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist")
    write_idx_dataset(tmp_path / "deb", per_class=3, test_per_class=1)
    assert data.detect_format("fashion-mnist") == "idx"
    ds = data.load_dataset("fashion-mnist", val_fraction=0.34)
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top" and len(ds.test) == 10


def _corrupt(folder, case):
    """Spoil one file of a plain-file idx dataset in ``folder``; returns the file's name."""
    name = {"magic": FILES[2], "dims": FILES[0], "truncated": FILES[0], "header": FILES[3], "padded": FILES[1],
            "count": FILES[1], "labels": FILES[3], "missing": FILES[3], "size": FILES[2]}[case]
    path = os.path.join(folder, name)
    raw = bytearray(open(path, "rb").read())
    if case == "magic":
        raw[2] = 0x09  # signed bytes
    elif case == "dims":
        raw[3] = 2
    elif case == "truncated":
        raw = raw[:-100]
    elif case == "header":
        raw = raw[:6]
    elif case == "padded":
        raw += b"\0"
    elif case == "count":  # 59 labels for 60 images
        raw[4:8] = (len(raw) - 9).to_bytes(4, "big")
        raw = raw[:-1]
    elif case == "labels":
        raw[-1] = 10
    elif case == "size":
        raw[8:12] = (20).to_bytes(4, "big")  # 20x28 images: the byte count still checks, the shape does not
        raw = raw[: 16 + len(raw[16:]) * 20 // 28]
    if case == "missing":
        os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write(bytes(raw))
    return name


@pytest.mark.parametrize("case,needle", [
    ("magic", "has magic number 0x00000903, expected 0x00000803"), ("dims", "expected 0x00000803"),
    ("truncated", "is truncated: its header announces 60 x 28 x 28 = 47040 bytes"), ("header", "inside its header"),
    ("padded", "holds more than the 60 bytes"), ("count", "holds 59 labels but"),
    ("labels", "labels [10] outside the expected range: 0..9"), ("missing", "missing file"),
    ("size", "expected 28x28")])
def test_bad_idx_files_are_one_line_errors_naming_the_file(tmp_path, case, needle):
    root = write_idx_dataset(tmp_path / "FashionMNIST", per_class=6, test_per_class=2, gz=False)
    name = _corrupt(root, case)
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset(root)
    msg = str(info.value)
    assert needle in msg and os.path.join(root, name) in msg and "\n" not in msg, msg


def test_corrupt_and_truncated_gzip_are_dataset_errors(tmp_path):
    root = write_idx_dataset(tmp_path / "f", per_class=2, test_per_class=1)
    path = os.path.join(root, FILES[0] + ".gz")
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])  # a gzip stream cut short
    with pytest.raises(data.DatasetError, match="cannot read .*train-images-idx3-ubyte.gz"):
        data.load_dataset(root)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b" + b"not gzip at all" * 4)
    with pytest.raises(data.DatasetError, match="cannot read .*train-images-idx3-ubyte.gz"):
        data.load_dataset(root)


def test_a_hostile_header_allocates_nothing(tmp_path):
    """A header announcing 2**32 - 1 images of 2**32 - 1 x 2**32 - 1 bytes is compared with the bytes present
    (the file's size, or the gzip stream read in 1 MiB chunks) before anything is allocated from it."""
    head = bytes.fromhex("00000803") + b"\xff" * 12
    for name, opener in (("h-idx3-ubyte", open), ("h-idx3-ubyte.gz", gzip.open)):
        path = str(tmp_path / name)
        with opener(path, "wb") as f:
            f.write(head + b"\0" * 1000)
        with pytest.raises(data.DatasetError, match="is truncated: its header announces 4294967295 x"):
            read_idx(path, 3, "images")


def test_cli_trains_on_an_idx_folder_and_exits_2_on_a_bad_one(tmp_path, capsys, one_thread):
    write_idx_dataset(tmp_path / "FashionMNIST" / "raw", per_class=8, test_per_class=2)
    out = tmp_path / "t"
    rc = main(["train", "--method", "random", "--data", str(tmp_path), "--epochs", "1", "--batch-size", "16",
               "--set", "model.width=4", "--set", "run.fgsm_epsilons=", "--quiet", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "Random PatchMix" in text
    assert (out / "checkpoints" / "random-seed0.pt").exists()
    _corrupt(write_idx_dataset(tmp_path / "bad", gz=False), "truncated")
    rc = main(["train", "--method", "base", "--data", str(tmp_path / "bad"), "--epochs", "1", "--quiet",
               "--out", str(tmp_path / "t2")])
    err = capsys.readouterr().err
    assert rc == 2 and "train-images-idx3-ubyte is truncated" in err and err.count("\n") == 1, err
