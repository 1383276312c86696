"""wsolevaluation's layout: folders written here by hand (boxes on images of several sizes, OpenImages-style masks)
and by ``write_wsol``; every damaged metadata file is exit 2 with one line naming the file and the line."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from patchmix import data
from patchmix.cli import main
from patchmix.data import wsol

#: (label, (width, height), boxes) per image of each split; val and test images have one or two boxes
SPLITS = {
    "train": [(0, (40, 30), []), (1, (30, 40), []), (2, (20, 20), []), (0, (24, 18), [])],
    "val": [(0, (50, 40), [(3, 5, 20, 30)]), (1, (33, 61), [(0, 0, 32, 60), (10, 11, 12, 13)]),
            (2, (64, 64), [(7, 9, 50, 41)])],
    "test": [(2, (61, 33), [(11, 2, 59, 31)]), (0, (45, 45), [(1, 1, 44, 44), (20, 20, 21, 22)])],
}


def write_folder(root, nested: str | None = None, boxes: bool = True):
    """A wsolevaluation-layout folder at ``root`` (metadata under ``metadata/<nested>/`` when given)."""
    meta = os.path.join(root, "metadata", *([nested] if nested else []))
    rng = np.random.default_rng(0)
    for split, rows in SPLITS.items():
        os.makedirs(os.path.join(meta, split), exist_ok=True)
        ids, labels, sizes, loc = [], [], [], []
        for i, (label, (w, h), bxs) in enumerate(rows):
            rel = f"images/class{label}/{split}_{i}.png"
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, rel))
            ids.append(rel)
            labels.append(f"{rel},{label}")
            sizes.append(f"{rel},{w},{h}")
            loc += [f"{rel},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in bxs]
        files = {"image_ids": ids, "class_labels": labels, "image_sizes": sizes}
        if boxes or split != "train":
            files["localization"] = loc
        for name, lines in files.items():
            with open(os.path.join(meta, split, f"{name}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    return str(root)


def wsol_resize_bbox(box, image_size, resize_size):
    """wsolevaluation's ``evaluation.resize_bbox``, as it is written there (Python floats, int())."""
    box_x0, box_y0, box_x1, box_y1 = map(float, box)
    image_w, image_h = map(float, image_size)
    new_image_w, new_image_h = map(float, resize_size)
    return (int(box_x0 * new_image_w / image_w), int(box_y0 * new_image_h / image_h),
            int(box_x1 * new_image_w / image_w), int(box_y1 * new_image_h / image_h))


def test_a_wsol_folder_is_detected_read_and_its_boxes_scaled_as_wsolevaluation(tmp_path):
    root = write_folder(tmp_path / "cub")
    assert data.detect_format(root) == "wsol"
    ds = data.load_dataset(root, image_size=16)
    assert ds.classes == ["class0", "class1", "class2"]  # the images' folders name the classes
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 3, 2) and ds.image_size == 16 and ds.channels == 3
    assert ds.train.boxes is None and ds.train.masks is None and ds.val.masks is None
    for split in ("val", "test"):
        sp = getattr(ds, split)
        assert sp.labels.tolist() == [r[0] for r in SPLITS[split]]
        assert sp.images.shape[1:] == (3, 16, 16)  # decoded once, resized without a crop
        for got, (_, size, bxs) in zip(sp.boxes, SPLITS[split], strict=True):
            assert got.dtype == np.int64 and got.shape == (len(bxs), 4)
            assert [tuple(b) for b in got.tolist()] == [wsol_resize_bbox(b, size, (16, 16)) for b in bxs]
    # the images are Pillow's bilinear resize of the file, as the folder loader (and torchvision's Resize) do
    with Image.open(os.path.join(root, "images/class1/val_1.png")) as im:
        want = np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR))
    assert np.array_equal(ds.val.images[1].permute(1, 2, 0).numpy(), want)
    assert data.load_dataset(root).image_size == data.WSOL_SIZE == 224
    assert "train-fullsup" in ds.split_rule


def test_resize_box_is_wsolevaluations_resize_bbox():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        w, h = rng.integers(1, 2000, 2)
        nw, nh = rng.integers(1, 500, 2)
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        box = (int(x0), int(y0), int(x1), int(y1))
        got = data.resize_box(np.array([box]), (int(w), int(h)), (int(nw), int(nh)))
        assert tuple(got[0].tolist()) == wsol_resize_bbox(box, (w, h), (nw, nh))
    # a product that lands exactly on an integer, where dividing first would truncate one lower
    assert data.resize_box(np.array([[3, 3, 3, 3]]), (10, 10), (70, 70)).tolist() == [[21, 21, 21, 21]]


def test_one_dataset_one_level_down_and_several_refused(tmp_path):
    root = write_folder(tmp_path / "wsol", nested="CUB")
    ds = data.load_dataset(root, image_size=8)
    assert len(ds.val) == 3 and "metadata/CUB/val" in ds.split_rule
    write_folder(tmp_path / "wsol", nested="ILSVRC")
    with pytest.raises(data.DatasetError, match=r"2 datasets \(CUB, ILSVRC\)"):
        data.load_dataset(root)


def _edit(root, split, name, fn):
    path = os.path.join(root, "metadata", split, name)
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(fn(lines)) + "\n")


def _set(i, text):
    return lambda lines: lines[:i] + [text] + lines[i + 1:]


#: case -> (split, file, edit, the file named in the message, the line, words of the message)
DAMAGE = {
    "missing image": ("test", "image_ids.txt", _set(1, "images/class0/nowhere.png"), "image_ids.txt", 2,
                      "not found"),
    "box outside": ("val", "localization.txt", _set(0, "images/class0/val_0.png,3,5,50,30"), "localization.txt", 1,
                    "outside"),
    "negative box": ("val", "localization.txt", _set(0, "images/class0/val_0.png,-1,5,20,30"), "localization.txt", 1,
                     "outside"),
    "x1 < x0": ("test", "localization.txt", _set(0, "images/class2/test_0.png,30,2,11,31"), "localization.txt", 1,
                "x1 < x0"),
    "y1 < y0": ("val", "localization.txt", _set(3, "images/class2/val_2.png,7,41,50,9"), "localization.txt", 4,
                "y1 < y0"),
    "label out of range": ("test", "class_labels.txt", _set(1, "images/class0/test_1.png,3"), "class_labels.txt", 2,
                           "out of range"),
    "negative label": ("train", "class_labels.txt", _set(0, "images/class0/train_0.png,-2"), "class_labels.txt", 1,
                       "out of range"),
    "malformed number": ("val", "image_sizes.txt", _set(2, "images/class2/val_2.png,64,six"), "image_sizes.txt", 3,
                         "expected <width>,<height>"),
    "malformed fields": ("test", "localization.txt", _set(1, "images/class0/test_1.png,1,1,44"), "localization.txt",
                         2, "expected"),
    "not in image_ids": ("val", "class_labels.txt", lambda ls: ls + ["images/class0/other.png,0"], "class_labels.txt",
                         4, "not listed in"),
    "no label": ("train", "class_labels.txt", lambda ls: ls[:2] + ls[3:], "image_ids.txt", 3, "no line in"),
    "no box": ("test", "localization.txt", lambda ls: ls[1:], "image_ids.txt", 1, "has no box"),
    "listed twice": ("val", "image_ids.txt", lambda ls: ls + ls[:1], "image_ids.txt", 4, "listed again"),
    "wrong size": ("val", "image_sizes.txt", _set(0, "images/class0/val_0.png,51,40"), "image_sizes.txt", 1,
                   "the file is 50x40"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_metadata_exits_2_with_one_line_naming_file_and_line(tmp_path, capsys, case):
    split, name, edit, named, line, words = DAMAGE[case]
    root = write_folder(tmp_path / "d")
    _edit(root, split, name, edit)
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset(root, image_size=8)
    msg = str(info.value)
    assert "\n" not in msg and f"{split}/{named} line {line}:" in msg and words in msg, msg
    assert main(["export", "--data", root, "--image-size", "8", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{named} line {line}" in err


def write_masks(root, size=(20, 12)):
    """OpenImages-style mask lines in ``root``'s val and test localization.txt: two instance masks per image
    (the second line without an ignore file) and an ignore box overlapping the first."""
    w, h = size
    for split in ("val", "test"):
        meta = os.path.join(root, "metadata", split)
        with open(os.path.join(meta, "image_ids.txt")) as f:
            ids = f.read().split()
        lines = []
        for k, image in enumerate(ids):
            a, b, ign = (np.zeros((h, w), np.uint8) for _ in range(3))
            a[1:5, 2 + k:9] = 255
            b[8:11, 12:19] = 1  # any non-zero value is foreground
            ign[0:7, 0:14] = 255
            names = [f"masks/{split}_{k}_{j}.png" for j in ("a", "b", "ignore")]
            os.makedirs(os.path.join(root, "masks"), exist_ok=True)
            for arr, name in zip((a, b, ign), names, strict=True):
                Image.fromarray(arr).save(os.path.join(root, name))
            lines += [f"{image},{names[0]},{names[2]}", f"{image},{names[1]},"]
        with open(os.path.join(meta, "localization.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def test_openimages_masks_are_wsolevaluations_get_mask(tmp_path):
    root = write_folder(tmp_path / "oi")
    write_masks(root)
    ds = data.load_dataset(root, image_size=16)
    assert ds.val.boxes is None and ds.val.masks.shape == (3, 16, 16) and ds.val.masks.dtype == torch.uint8
    m = ds.val.masks[0].numpy()
    assert set(np.unique(m).tolist()) == {0, 1, 255}
    # the rule: cv2.resize(mask, (16, 16), INTER_NEAREST) > 0.5 per instance, their union, ignore minus the union
    rows, cols = np.floor(np.arange(16) * (12 / 16)).astype(int), np.floor(np.arange(16) * (20 / 16)).astype(int)
    with Image.open(os.path.join(root, "masks/val_0_a.png")) as a, Image.open(os.path.join(root, "masks/val_0_b.png")) \
            as b, Image.open(os.path.join(root, "masks/val_0_ignore.png")) as ign:
        fg = (np.asarray(a)[rows][:, cols] > 0) | (np.asarray(b)[rows][:, cols] > 0)
        ignore = (np.asarray(ign)[rows][:, cols] > 0) & ~fg
    assert np.array_equal(m, fg.astype(np.uint8) + 255 * ignore.astype(np.uint8))


def test_mask_resize_is_opencvs_nearest():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for h, w, size in ((12, 20, 16), (375, 500, 224), (7, 3, 224), (300, 301, 64)):
        arr = rng.integers(0, 2, (h, w)).astype(np.float32)
        want = cv2.resize(arr, (size, size), interpolation=cv2.INTER_NEAREST)
        got = arr[wsol._nearest(h, size)[:, None], wsol._nearest(w, size)[None, :]]
        assert np.array_equal(got, want), (h, w, size)


def test_write_then_read_gives_the_same_dataset(tmp_path):
    from tests.test_fmnist_loc import write_items

    ds = data.load_dataset(write_items(tmp_path / "fm"), format="fmnist-loc")
    out = data.write_wsol(ds, str(tmp_path / "out"))
    back = data.load_dataset(out, image_size=64)
    assert back.classes == ds.classes and back.channels == 1
    for split in ("train", "val", "test"):
        a, b = getattr(ds, split), getattr(back, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        if split != "train":  # train's boxes are written (as wsolevaluation's CUB) but never read
            assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
            assert torch.equal(a.masks, b.masks)
    with open(os.path.join(out, "metadata", "test", "localization.txt")) as f:
        first = f.readline().strip().split(",")
    assert first[0] == "test/000000.png" and [int(v) for v in first[1:]] == ds.test.boxes[0][0].tolist()
    assert os.path.isfile(os.path.join(out, "metadata", "test", "mask_localization.txt"))


def test_export_command(tmp_path, capsys):
    from tests.test_fmnist_loc import write_items

    root = write_items(tmp_path / "fm")
    out = str(tmp_path / "out")
    assert main(["export", "--data", root, "--format", "fmnist-loc", "--out", out]) == 0
    assert "wsolevaluation's layout" in capsys.readouterr().out
    assert data.detect_format(out) == "wsol" and len(data.load_dataset(out, image_size=64).test) == 30
    assert main(["export", "--data", root, "--format", "fmnist-loc", "--out", out]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--data", "digits", "--out", str(tmp_path / "d")]) == 2  # no boxes
    assert "no boxes" in capsys.readouterr().err


def test_the_ground_truth_figure(tmp_path):
    from patchmix.workflow.export import draw_ground_truth
    from tests.test_fmnist_loc import write_items

    ds = data.load_dataset(write_items(tmp_path / "fm"), format="fmnist-loc")
    path = draw_ground_truth(ds.test, ds.classes, str(tmp_path / "f" / "gt.png"), num=4)
    with Image.open(path) as im:
        assert im.size[0] > 100
