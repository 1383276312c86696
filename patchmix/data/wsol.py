"""``wsol``: wsolevaluation's layout (clovaai/wsolevaluation, Choe et al., CVPR 2020), read and written.

A folder holds ``metadata/{train,val,test}/`` (or wsolevaluation's ``metadata/<NAME>/{train,val,test}/`` with one
dataset ``NAME``), and the images at the paths the metadata lists, relative to the folder. The splits follow the
protocol: ``train`` gives the classifier's labels only (its boxes are never read); ``val`` is train-fullsup, the
only box-labelled data allowed for choosing a CAM threshold or a checkpoint; ``test`` is reported once. They become
the :class:`~patchmix.data.Dataset`'s train, val and test.

Images are decoded with Pillow as the folder loader does (greyscale when every image is, else RGB) and resized to
``image_size`` (default :data:`WSOL_SIZE`, 224, no crop: wsolevaluation's evaluation transform); boxes are scaled
from the sizes ``image_sizes.txt`` gives with wsolevaluation's ``int()`` truncation (:func:`resize_box`); masks are
resized with OpenCV's nearest-neighbour rule, as wsolevaluation's ``load_mask_image`` does. A metadata problem is a
one-line :class:`~patchmix.errors.DatasetError` naming the file and the line.

:func:`write_wsol` writes a dataset with boxes (and masks) in this layout, readable by wsolevaluation's own
``data_loaders`` and ``evaluation``: PNG images, box lines in ``localization.txt`` (what its CUB / ILSVRC evaluator
reads), and masks as PNG files listed in ``mask_localization.txt`` in OpenImages' line format.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from ..errors import DatasetError
from .dataset import Dataset, Split, layout_error, resize_box
from .folder import image_channels

#: the side images are resized to unless ``data.image_size`` says otherwise (wsolevaluation's crop size)
WSOL_SIZE = 224
SPLITS = ("train", "val", "test")
#: patchmix's extra files: mask lines beside the box lines of localization.txt; the class names, one a line
#: in label order (wsolevaluation has none: without it a class is named by its images' folder or its label)
MASK_FILE = "mask_localization.txt"
NAMES_FILE = "class_names.txt"
LAYOUT = """wsolevaluation's layout (CUB, ILSVRC and OpenImages as clovaai/wsolevaluation ships them; patchmix export):
    <path>/metadata/<split>/     for each split train, val (train-fullsup, box-labelled) and test (or
                                 <path>/metadata/<NAME>/<split>/ with a single dataset NAME)
      image_ids.txt              one image path per line, relative to <path>
      class_labels.txt           <image path>,<label 0..K-1>
      image_sizes.txt            <image path>,<width>,<height>   (val and test: what the boxes refer to)
      localization.txt           <image path>,<x0>,<y0>,<x1>,<y1>: one line per box, inclusive pixels (val, test);
                                 or OpenImages' <image path>,<mask.png>,<ignore.png or empty> per mask
      mask_localization.txt      optional, mask lines beside the box lines of localization.txt
    <path>/metadata/class_names.txt   optional, one class name per line in label order
    train needs image_ids.txt and class_labels.txt (its labels train the classifier; its boxes are not read)"""
_error = functools.partial(layout_error, "wsol", LAYOUT)


def _is_split_root(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, s, "image_ids.txt")) for s in SPLITS)


def wsol_location(path: str) -> str | None:
    """The metadata folder holding ``train/``, ``val/`` and ``test/`` under ``path`` (``path/metadata`` or
    ``path/metadata/<NAME>`` when it names one dataset), else None; several datasets raise :class:`DatasetError`."""
    meta = os.path.join(path, "metadata")
    if not os.path.isdir(meta):
        return None
    if _is_split_root(meta):
        return meta
    names = sorted(d for d in os.listdir(meta) if _is_split_root(os.path.join(meta, d)))
    if len(names) > 1:
        raise DatasetError(f"wsol: {meta} holds {len(names)} datasets ({', '.join(names)}): expected one; keep the "
                           f"one to use, or move its train/, val/ and test/ up into {meta}")
    return os.path.join(meta, names[0]) if names else None


def _bad(path: str, line: int, problem: str) -> DatasetError:
    return _error(f"wsol: {path} line {line}: {problem}")


def _lines(path: str) -> list[tuple[int, list[str]]]:
    """``(line number, comma-separated fields)`` of every non-blank line of ``path``."""
    if not os.path.isfile(path):
        raise _error(f"wsol: missing file {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"wsol: cannot read {path}: {exc}") from None
    return [(n, line.split(",")) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _ints(path: str, line: int, fields: list[str], what: str) -> list[int]:
    try:
        return [int(v) for v in fields]
    except ValueError:
        raise _bad(path, line, f"expected {what}, got {','.join(fields)!r}") from None


class _Split:
    """The metadata of one split, checked: image ids (in order, with their lines), labels, sizes, boxes, masks."""

    def __init__(self, meta: str, root: str, split: str):
        self.root, self.dir = root, os.path.join(meta, split)
        self.ids_file = self._file("image_ids.txt")
        self.ids: list[str] = []
        self.line: dict[str, int] = {}
        for n, f in _lines(self.ids_file):
            if len(f) != 1:
                raise _bad(self.ids_file, n, "expected one image path per line (no commas)")
            p = f[0].strip()
            if p in self.line:
                raise _bad(self.ids_file, n, f"{p} is listed again (first on line {self.line[p]})")
            if not os.path.isfile(os.path.join(root, p)):
                raise _bad(self.ids_file, n, f"image {p} not found: no file {os.path.join(root, p)}")
            self.line[p] = n
            self.ids.append(p)
        if not self.ids:
            raise _error(f"wsol: {self.ids_file} lists no images")

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _check_id(self, path: str, n: int, image: str) -> None:
        if image not in self.line:
            raise _bad(path, n, f"image {image} is not listed in {self.ids_file}")

    def per_image(self, name: str, what: str, count: int) -> dict[str, tuple[int, list[int]]]:
        """``{image: (line, ints)}`` of a file with one line per image of ``image_ids.txt`` (``count`` ints)."""
        path = self._file(name)
        out: dict[str, tuple[int, list[int]]] = {}
        for n, f in _lines(path):
            if len(f) != count + 1:
                raise _bad(path, n, f"expected <image path>,{what}")
            image = f[0].strip()
            self._check_id(path, n, image)
            if image in out:
                raise _bad(path, n, f"{image} is listed again (first on line {out[image][0]})")
            out[image] = (n, _ints(path, n, f[1:], what))
        for image in self.ids:
            if image not in out:
                raise _bad(self.ids_file, self.line[image], f"image {image} has no line in {path}")
        return out

    def labels(self, num_classes: int | None) -> torch.Tensor:
        path = self._file("class_labels.txt")
        rows = self.per_image("class_labels.txt", "<label>", 1)
        for image, (n, (label,)) in rows.items():
            if label < 0 or (num_classes is not None and label >= num_classes):
                expected = "0 or more" if num_classes is None else f"0..{num_classes - 1} (train's classes)"
                raise _bad(path, n, f"label {label} of {image} is out of range: expected {expected}")
        return torch.tensor([rows[i][1][0] for i in self.ids], dtype=torch.int64)

    def sizes(self) -> dict[str, tuple[int, int, int]]:
        """``{image: (line, w, h)}``, each checked against the image file's own size."""
        from PIL import Image

        path = self._file("image_sizes.txt")
        out = {}
        for image, (n, (w, h)) in self.per_image("image_sizes.txt", "<width>,<height>", 2).items():
            file = os.path.join(self.root, image)
            try:
                with Image.open(file) as im:
                    actual = im.size
            except Exception as exc:  # PIL raises many types for corrupt files
                raise DatasetError(f"wsol: cannot read image {file}: {exc}") from None
            if actual != (w, h):
                raise _bad(path, n, f"says {image} is {w}x{h} but the file is {actual[0]}x{actual[1]}")
            out[image] = (n, w, h)
        return out

    def ground_truth(self, size: int) -> tuple[list[np.ndarray] | None, torch.Tensor | None]:
        """Boxes and masks in the coordinates of the image resized to ``size`` (either may be None)."""
        sizes = self.sizes()
        boxes: dict[str, list[list[int]]] = {}
        masks: dict[str, list[tuple[str, int, str, str]]] = {}
        loc = self._file("localization.txt")
        sources = [loc] + ([self._file(MASK_FILE)] if os.path.isfile(self._file(MASK_FILE)) else [])
        for path in sources:
            for n, f in _lines(path):
                image = f[0].strip()
                if len(f) == 5 and path == loc:
                    self._check_id(path, n, image)
                    x0, y0, x1, y1 = _ints(path, n, f[1:], "<x0>,<y0>,<x1>,<y1>")
                    _, w, h = sizes[image]
                    if x1 < x0 or y1 < y0:
                        raise _bad(path, n, f"box {x0},{y0},{x1},{y1} of {image} has x1 < x0 or y1 < y0")
                    if min(x0, y0) < 0 or x1 >= w or y1 >= h:
                        raise _bad(path, n, f"box {x0},{y0},{x1},{y1} lies outside {image} ({w}x{h}: inclusive "
                                            f"pixels 0..{w - 1}, 0..{h - 1})")
                    boxes.setdefault(image, []).append([x0, y0, x1, y1])
                elif len(f) == 3:
                    self._check_id(path, n, image)
                    masks.setdefault(image, []).append((path, n, f[1].strip(), f[2].strip()))
                else:
                    raise _bad(path, n, "expected <image path>,<x0>,<y0>,<x1>,<y1>" if path == loc and len(f) != 3
                               else "expected <image path>,<mask.png>,<ignore.png or empty>")
        if not boxes and not masks:
            raise _error(f"wsol: {loc} holds no boxes or masks: val and test need them")
        for found, kind in ((boxes, "box"), (masks, "mask")):
            missing = [i for i in self.ids if found and i not in found]
            if missing:
                raise _bad(self.ids_file, self.line[missing[0]], f"image {missing[0]} has no {kind} in {self.dir}")
        out_boxes = None if not boxes else [
            resize_box(np.asarray(boxes[i], dtype=np.int64), sizes[i][1:], (size, size)) for i in self.ids]
        out_masks = None if not masks else torch.from_numpy(np.stack([self._mask(i, masks[i], size) for i in self.ids]))
        return out_boxes, out_masks

    def _mask(self, image: str, lines: list[tuple[str, int, str, str]], size: int) -> np.ndarray:
        """wsolevaluation's ``get_mask``: the union of the instance masks (1), the ignore region outside them (255)."""
        fg = np.zeros((size, size), dtype=bool)
        for k, (path, n, mask, ignore) in enumerate(lines):
            if k and ignore:
                raise _bad(path, n, f"a second ignore mask for {image}: only its first mask line may name one")
            fg |= _read_mask(path, n, os.path.join(self.root, mask), size)
        path, n, _, ignore = lines[0]
        out = fg.astype(np.uint8)
        if ignore:
            out[_read_mask(path, n, os.path.join(self.root, ignore), size) & ~fg] = 255
        return out


def _nearest(n_src: int, n_dst: int) -> np.ndarray:
    """OpenCV's ``INTER_NEAREST`` source index of each destination pixel: ``floor(d * (1 / (n_dst / n_src)))``."""
    return np.minimum(np.floor(np.arange(n_dst) * (1.0 / (n_dst / n_src))).astype(np.int64), n_src - 1)


def _read_mask(path: str, line: int, file: str, size: int) -> np.ndarray:
    """A mask PNG as bool ``(size, size)``: non-zero pixels, resized as ``cv2.resize(..., INTER_NEAREST)``."""
    from PIL import Image

    if not os.path.isfile(file):
        raise _bad(path, line, f"mask {file} not found")
    try:
        with Image.open(file) as im:
            arr = np.asarray(im.convert("L"))
    except Exception as exc:  # PIL raises many types for corrupt files
        raise _bad(path, line, f"cannot read mask {file}: {exc}") from None
    h, w = arr.shape
    return arr[_nearest(h, size)[:, None], _nearest(w, size)[None, :]] > 0


def _class_names(meta: str, split: _Split, labels: torch.Tensor, num_classes: int) -> list[str]:
    """The names of ``metadata/class_names.txt``, else each class named by the one folder its training images sit
    in (CUB's ``001.Black_footed_Albatross``) when every class has one and they differ, else by its label."""
    path = os.path.join(meta, NAMES_FILE)
    if os.path.isfile(path):
        names = [",".join(f).strip() for _, f in _lines(path)]
        if len(names) != num_classes:
            raise _error(f"wsol: {path} names {len(names)} classes; train's labels are 0..{num_classes - 1}")
        return names
    tops: dict[int, set[str]] = {}
    for image, label in zip(split.ids, labels.tolist(), strict=True):
        tops.setdefault(label, set()).add(os.path.basename(os.path.dirname(image)))
    names = [next(iter(tops[c])) if len(tops.get(c, ())) == 1 else "" for c in range(num_classes)]
    return names if all(names) and len(set(names)) == num_classes else [str(c) for c in range(num_classes)]


def load_wsol(path: str, image_size: int | None = None) -> Dataset:
    """A folder in wsolevaluation's layout (see the module docstring) as a :class:`Dataset` whose val and test
    splits carry ``boxes`` and / or ``masks`` at ``image_size`` (default :data:`WSOL_SIZE`)."""
    meta = wsol_location(path)
    if meta is None:
        raise _error(f"wsol: no metadata/{{train,val,test}}/image_ids.txt under {path}")
    size = image_size or WSOL_SIZE
    train_meta = _Split(meta, path, "train")
    train_labels = train_meta.labels(None)
    num_classes = int(train_labels.max()) + 1
    files = [os.path.join(path, i) for i in train_meta.ids]
    parts = {}
    for name in ("val", "test"):
        sp = _Split(meta, path, name)
        labels = sp.labels(num_classes)
        boxes, masks = sp.ground_truth(size)
        parts[name] = (labels, [os.path.join(path, i) for i in sp.ids], boxes, masks)
        files += parts[name][1]
    channels = image_channels(files)
    train = Split(train_labels, None, files[:len(train_labels)], size, channels)
    val, test = (Split(lab, None, f, size, channels, boxes=b, masks=m) for lab, f, b, m in parts.values())
    where = os.path.relpath(meta, path)
    classes = _class_names(meta, train_meta, train_labels, num_classes)
    return Dataset("wsol:" + os.path.basename(os.path.normpath(path)), classes, train, val, test,
                   split_rule=f"train = {where}/train (labels only); val = {where}/val (train-fullsup: the boxes "
                              f"for choosing the threshold and checkpoint); test = {where}/test (reported once); "
                              f"images resized to {size}x{size} (no crop), boxes scaled as wsolevaluation does")


def write_wsol(dataset: Dataset | dict[str, Split], out_dir: str) -> str:
    """Write ``dataset`` (a :class:`Dataset`, or ``{"train": Split, "val": ..., "test": ...}``) into ``out_dir`` in
    wsolevaluation's layout: ``<split>/<index>.png`` images (greyscale or RGB as loaded), ``metadata/<split>/``
    with ``image_ids.txt``, ``class_labels.txt``, ``image_sizes.txt``, ``localization.txt`` (box lines, or mask
    lines when a split has masks and no boxes) and ``mask_localization.txt`` (mask lines beside the box lines; the
    masks ``<split>/masks/<index>.png``, 255 foreground, and ``<index>_ignore.png``, 255 ignored), and a
    :class:`Dataset`'s class names in ``metadata/class_names.txt``. Val and test need boxes or masks. Returns
    ``out_dir``."""
    from PIL import Image

    splits = dataset if isinstance(dataset, dict) else {s: getattr(dataset, s) for s in SPLITS}
    if isinstance(dataset, Dataset):
        os.makedirs(os.path.join(out_dir, "metadata"), exist_ok=True)
        with open(os.path.join(out_dir, "metadata", NAMES_FILE), "w", encoding="utf-8") as f:
            f.write("".join(name.replace("\n", " ") + "\n" for name in dataset.classes))
    for name in ("val", "test"):
        if splits[name].boxes is None and splits[name].masks is None:
            raise DatasetError(f"write_wsol: the {name} split has no boxes or masks (wsolevaluation evaluates "
                               f"val and test on them)")
    for name in SPLITS:
        sp = splits[name]
        meta = os.path.join(out_dir, "metadata", name)
        os.makedirs(meta, exist_ok=True)
        os.makedirs(os.path.join(out_dir, name, "masks" if sp.masks is not None else ""), exist_ok=True)
        ids, labels, sizes, box_lines, mask_lines = [], [], [], [], []
        for i in range(len(sp)):
            rel = f"{name}/{i:06d}.png"
            x = sp.load(i).numpy()
            Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)).save(os.path.join(out_dir, rel))
            ids.append(rel)
            labels.append(f"{rel},{int(sp.labels[i])}")
            sizes.append(f"{rel},{x.shape[2]},{x.shape[1]}")
            if sp.boxes is not None:
                box_lines += [f"{rel},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in np.asarray(sp.boxes[i]).tolist()]
            if sp.masks is not None:
                m = sp.masks[i].numpy()
                mask, ignore = f"{name}/masks/{i:06d}.png", f"{name}/masks/{i:06d}_ignore.png"
                Image.fromarray(((m == 1) * 255).astype(np.uint8)).save(os.path.join(out_dir, mask))
                Image.fromarray(((m == 255) * 255).astype(np.uint8)).save(os.path.join(out_dir, ignore))
                mask_lines.append(f"{rel},{mask},{ignore}")  # an ignore file always: wsolevaluation opens it
        files = {"image_ids.txt": ids, "class_labels.txt": labels, "image_sizes.txt": sizes}
        if box_lines:
            files["localization.txt"] = box_lines
            if mask_lines:
                files[MASK_FILE] = mask_lines
        elif mask_lines:
            files["localization.txt"] = mask_lines
        for fname, lines in files.items():
            with open(os.path.join(meta, fname), "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
    return out_dir
