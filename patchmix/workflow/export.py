"""``patchmix export``: a dataset written in wsolevaluation's layout (:func:`patchmix.data.write_wsol`), for other
tools, wsolevaluation's own ``evaluation.py`` among them, to read."""

from __future__ import annotations

import os

from .. import data as data_mod
from ..config import Config
from ..errors import OutputError
from .rundir import check_writable
from .session import load_data


def export_wsol(cfg: Config, out: str) -> data_mod.Dataset:
    """Load the configured dataset and write it into the new or empty folder ``out``; returns the dataset.

    Refuses (:class:`~patchmix.errors.OutputError`) a folder that holds anything, before loading the data, so that
    an export never mixes with other files; a write that fails (a full disk) is an ``OutputError`` naming ``out``,
    with what was written left in place."""
    check_writable(out, "--out", folder=True)
    if os.path.isdir(out) and os.listdir(out):
        raise OutputError(f"--out {out} is not empty: export writes into a new or empty folder")
    ds = load_data(cfg)
    try:
        data_mod.write_wsol(ds, out)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot write {exc.filename or 'it'} ({exc.strerror or exc})") from None
    return ds


def draw_ground_truth(split: data_mod.Split, classes: list[str], path: str, num: int = 16, columns: int = 8) -> str:
    """A PNG of the first ``num`` images of ``split`` with their ground truth: the mask's foreground tinted red
    (its ignore region blue) and every box outlined in yellow, inclusive pixels; titled with the class. Returns
    ``path``."""
    import numpy as np

    from .figures import pyplot

    plt = pyplot()

    num = min(num, len(split))
    rows = -(-num // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in zip(range(num), axes.flat, strict=False):
        x = split.load(i).permute(1, 2, 0).numpy()
        rgb = np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x.copy()
        if split.masks is not None:
            m = split.masks[i].numpy()
            rgb[m == 1] = (0.55 * rgb[m == 1] + 0.45 * np.array([255, 0, 0])).astype(np.uint8)
            rgb[m == 255] = (0.55 * rgb[m == 255] + 0.45 * np.array([0, 80, 255])).astype(np.uint8)
        ax.imshow(rgb, interpolation="nearest")
        for x0, y0, x1, y1 in (split.boxes[i] if split.boxes is not None else []):
            # pixel k covers [k - 0.5, k + 0.5]: the outline runs along the outer edges of the inclusive box
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="yellow",
                                       linewidth=1.2))
        ax.set_title(classes[int(split.labels[i])], fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
