"""The figures of a run (matplotlib, Agg backend: no display needed), each written atomically as a PNG.

* :func:`mixed_samples_figure`: a grid of mixed samples, each titled with its soft label.
* :func:`fitness_figure`: the search's best / mean / worst fitness per generation.
* :func:`pairs_figure`: the discovered class pairs as a ``K x K`` heat map (how many seeds chose each pair).
* :func:`accuracy_figure`: test accuracy per method, mean with the spread over seeds, every seed as a dot.
* :func:`curves_figure`: validation accuracy per epoch, per method (mean over seeds).
* :func:`fidelity_figure`: the search check: the fitness against the exact one, the chosen policy among random ones.
* :func:`ablation_figure`: an ablation's table (``patchmix ablate``) as grouped bars.
* :func:`render_samples`: a PNG of samples mixed by any method (drawn by :mod:`.samples`).
* :func:`make_figures`: every figure of a ``patchmix run``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from .._optional import require
from ..choices import METHOD_LABELS
from ..files import atomic_path
from .report import fidelity_summary
from .samples import draw_samples

METHOD_COLORS = {"base": "#7f7f7f", "mixup": "#1f77b4", "cutmix": "#2ca02c", "random": "#ff7f0e",
                 "guided": "#d62728", "mix": "#9467bd"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display); one line naming the extra when matplotlib is missing."""
    require("matplotlib", "workflow", "patchmix's figures").use("Agg", force=True)
    return require("matplotlib.pyplot", "workflow", "patchmix's figures")


def _save(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def _label_text(a: int, b: int, lam: float, names: Sequence[str]) -> str:
    na, nb = names[a], names[b]
    if a == b or lam >= 0.995:
        return na
    if lam <= 0.005:
        return f"{nb}"
    return f"{lam:.2f} {na}\n{1 - lam:.2f} {nb}"


# the two sources of a grid sample: each cell's frame and its title line share the colour of the cell's label
SOURCE_COLORS = ("#ff9f1c", "#2ec4ff")


def _cell_edges(size: int, P: int) -> list[int]:
    """First pixel of each of the ``P`` cells along a side of ``size`` pixels, and ``size``: pixel ``h`` is in cell
    ``floor(h * P / size)`` (the ops' integer cell rule), so cell ``r`` starts at ``ceil(r * size / P)``."""
    return [-(-r * size // P) for r in range(P)] + [size]


def _patch_labels(ax, mask, H: int, W: int, a: str, b: str, lam: float) -> None:
    """Frame every cell of a ``(P, P)`` grid mask in its source's colour (per-patch labels: ``a`` where the mask is
    True), and title the axes with the soft label, each line in its source's colour."""
    patches = require("matplotlib.patches", "workflow", "patchmix's figures")
    P = mask.shape[-1]
    rows, cols = _cell_edges(H, P), _cell_edges(W, P)
    inset = 0.25 + 0.02 * max(H, W) / P  # half a frame's width in pixels: neighbouring frames do not overlap
    for r in range(P):
        for c in range(P):
            ax.add_patch(patches.Rectangle((cols[c] - 0.5 + inset, rows[r] - 0.5 + inset),
                                           cols[c + 1] - cols[c] - 2 * inset, rows[r + 1] - rows[r] - 2 * inset,
                                           fill=False, lw=1.2, edgecolor=SOURCE_COLORS[0 if mask[r, c] else 1]))
    ax.text(0.5, 1.17, f"{lam:.2f} {a}", color=SOURCE_COLORS[0], transform=ax.transAxes, ha="center",
            va="bottom", fontsize=7, fontweight="bold")
    ax.text(0.5, 1.03, f"{1 - lam:.2f} {b}", color=SOURCE_COLORS[1], transform=ax.transAxes, ha="center",
            va="bottom", fontsize=7, fontweight="bold")


def mixed_samples_figure(batch, class_names: Sequence[str], path: str, title: str = "", columns: int = 8,
                         grid_lines: bool = True) -> str:
    """A grid of the samples of a :class:`patchmix.MixedBatch` (images in ``[0, 1]``), each titled with its
    soft label ``lam * a + (1 - lam) * b``. With ``grid_lines``, a grid sample of two classes frames each cell in
    the colour of its label (the class of the image it comes from) and colours the title's two lines alike; other
    grid samples show the grid."""
    plt = pyplot()
    images = batch.images.detach().float().cpu().clamp(0, 1)
    n = images.shape[0]
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.85 * rows + 0.5), squeeze=False)
    H, W = images.shape[-2:]
    mask = None if batch.mask is None else batch.mask.detach().cpu()
    has_grid = None if batch.has_grid is None else batch.has_grid.detach().cpu()
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray_r" if H <= 16 else "gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        a, b, lam = int(batch.target_a[k]), int(batch.target_b[k]), float(batch.lam[k])
        label = _label_text(a, b, lam, class_names)
        grid = grid_lines and mask is not None and (has_grid is None or bool(has_grid[k]))
        if grid and "\n" in label:
            _patch_labels(ax, mask[k], H, W, class_names[a], class_names[b], lam)
            continue
        if grid:
            P = mask.shape[-1]
            for i in range(1, P):
                ax.axhline(i * H / P - 0.5, color="#00a0ff", lw=0.5, alpha=0.6)
                ax.axvline(i * W / P - 0.5, color="#00a0ff", lw=0.5, alpha=0.6)
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(hspace=0.3, wspace=0.15, top=1 - 0.5 / (1.85 * rows + 0.5))
    return _save(fig, path)


def fitness_figure(logbooks: dict, path: str, title: str = "Genetic search: fitness per generation") -> str:
    """``logbooks``: ``{label: [{"gen", "best", "mean", "worst"}, ...]}`` (one curve set per seed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    styles = {"best": ("#d62728", "-"), "mean": ("#1f77b4", "--"), "worst": ("#7f7f7f", ":")}
    for i, (_label, book) in enumerate(logbooks.items()):
        gens = [r["gen"] for r in book]
        for key, (color, ls) in styles.items():
            vals = [r[key] for r in book]
            ax.plot(gens, vals, color=color, ls=ls, lw=1.4, alpha=1.0 if i == 0 else 0.45,
                    label=f"{key}" if i == 0 else None)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (f_T's mean patch score)")
    ax.set_title(title + (f" ({len(logbooks)} seeds)" if len(logbooks) > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pairs_figure(policies: Sequence, class_names: Sequence[str], path: str,
                 title: str = "Discovered class pairs") -> str:
    """Heat map ``K x K``: cell ``(i, j)`` counts the policies (seeds) whose active set holds pair ``{i, j}``;
    the number in a cell is the mean share of the mask taken from row class ``i``."""
    plt = pyplot()
    K = len(class_names)
    count = np.zeros((K, K))
    share = np.zeros((K, K))
    for pol in policies:
        pairs = np.asarray(pol.pairs).reshape(-1, 2)
        masks = np.asarray(pol.masks, dtype=bool)
        for (a, b), m in zip(pairs, masks, strict=False):
            f = float(m.mean())
            count[a, b] += 1
            share[a, b] += f
            if a != b:
                count[b, a] += 1
                share[b, a] += 1 - f
    fig, ax = plt.subplots(figsize=(0.45 * K + 2.2, 0.45 * K + 1.6))
    im = ax.imshow(count, cmap="magma_r", vmin=0, vmax=max(1, len(policies)))
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels(class_names, rotation=90 if K > 10 or max(len(c) for c in class_names) > 3 else 0, fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("class c_j")
    ax.set_ylabel("class c_i")
    if K <= 20:
        for i in range(K):
            for j in range(K):
                if count[i, j]:
                    v = share[i, j] / count[i, j]
                    ax.text(j, i, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center", fontsize=6,
                            color="white" if count[i, j] > 0.6 * max(1, len(policies)) else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("policies (seeds) choosing the pair", fontsize=8)
    ax.set_title(title + "\n(number: mean share of the image from c_i)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_figure(summary: dict, results: Sequence[dict], path: str, title: str = "Test top-1 accuracy",
                    paired: dict | None = None) -> str:
    """Left: mean test accuracy per method (bars), standard deviation over seeds (error bars), each seed (dots).
    Right, with ``paired`` (:func:`patchmix.workflow.stats.paired_summary`): each method minus Random PatchMix and
    minus Base on the same seeds, mean with its 95% interval; an interval clear of zero is drawn solid."""
    plt = pyplot()
    methods = list(summary)
    table = (paired or {}).get("test_acc") or {}
    if table:
        fig, (ax, dax) = plt.subplots(1, 2, figsize=(1.3 * len(methods) + 7, 3.8),
                                      gridspec_kw={"width_ratios": [1.3, 1]})
    else:
        fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 3.8))
    means = [100 * summary[m]["mean"] for m in methods]
    stds = [100 * summary[m]["std"] for m in methods]
    x = np.arange(len(methods))
    ax.bar(x, means, yerr=stds, capsize=5, color=[METHOD_COLORS.get(m, "#999999") for m in methods], alpha=0.8)
    all_acc = []
    for i, m in enumerate(methods):
        accs = [100 * r["test_acc"] for r in results if r["method"] == m]
        all_acc += accs
        jitter = np.linspace(-0.12, 0.12, len(accs)) if len(accs) > 1 else [0.0]
        ax.scatter(x[i] + np.asarray(jitter), accs, color="black", s=12, zorder=3)
        ax.text(x[i] + 0.2, means[i], f"{means[i]:.2f}", ha="left", va="bottom", fontsize=8)
    lo = min(all_acc + means) if all_acc else 0
    hi = max(all_acc + [m + s for m, s in zip(means, stds, strict=False)]) if all_acc else 100
    pad = max(0.5, (hi - lo) * 0.3)
    ax.set_ylim(max(0, lo - pad), min(100.5, hi + pad))
    ax.set_xticks(x)
    ax.set_xticklabels([METHOD_LABELS.get(m, m) for m in methods], fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    n = max((summary[m]["n"] for m in methods), default=0)
    ax.set_title(f"{title} (mean ± std over {n} seed{'s' if n != 1 else ''})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if table:
        rows = [(base, m, d) for base, ms in table.items() for m, d in ms.items() if d["ci"] is not None]
        for k, (_base, m, d) in enumerate(rows):
            lo_, hi_ = 100 * d["ci"][0], 100 * d["ci"][1]
            style = "-" if d["distinguishable"] else "--"
            dax.plot([lo_, hi_], [k, k], style, color=METHOD_COLORS.get(m, "#999999"), lw=2)
            dax.plot([100 * d["mean"]], [k], "o", color=METHOD_COLORS.get(m, "#999999"))
        dax.axvline(0, color="black", lw=0.8)
        dax.set_yticks(range(len(rows)))
        dax.set_yticklabels([f"{METHOD_LABELS.get(m, m)} − {METHOD_LABELS.get(b, b)}" for b, m, _ in rows], fontsize=7)
        dax.invert_yaxis()
        dax.set_xlabel("difference in test top-1 (points), same seeds")
        dax.set_title("Paired differences, 95% interval (solid: excludes 0)", fontsize=9)
        dax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def curves_figure(results: Sequence[dict], path: str, title: str = "Validation accuracy per epoch") -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    by_method: dict[str, list] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append([h["val_acc"] for h in r.get("history", [])])
    for m, runs in by_method.items():
        L = min(len(h) for h in runs)
        if not L:
            continue
        arr = 100 * np.array([h[:L] for h in runs])
        ax.plot(np.arange(1, L + 1), arr.mean(0), color=METHOD_COLORS.get(m), label=METHOD_LABELS.get(m, m), lw=1.4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title + " (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lo = ax.get_ylim()
    ax.set_ylim(max(lo[0], 50), 100.5)
    fig.tight_layout()
    return _save(fig, path)


def fidelity_figure(searches: dict, path: str) -> str:
    """The search check of every seed, two panels. Left: the search's fitness (x) against f_T's exact fitness
    (y) of the random policies (circles) and the final population (crosses), the chosen policy as a star, one
    colour per seed. Right: the exact fitness of the random policies (histogram per seed) with the chosen
    policy's as a vertical line: where it lies is the search's efficacy."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    for i, (seed, s) in enumerate(searches.items()):
        fid = s.get("fidelity") or {}
        rnd, fin, eff = fid.get("random"), fid.get("final"), fid.get("efficacy")
        if not rnd or "proxy" not in rnd:
            continue
        color = f"C{i}"
        rho = "n/a" if rnd["spearman"] is None else f"{rnd['spearman']:.2f}"
        left.scatter(rnd["proxy"], rnd["exact"], s=10, color=color, alpha=0.6, label=f"seed {seed}: random, rho {rho}")
        if fin:
            left.scatter(fin["proxy"], fin["exact"], s=18, color=color, marker="x", label=f"seed {seed}: final")
        right.hist(rnd["exact"], bins=30, color=color, alpha=0.35, label=f"seed {seed}: random policies")
        if eff:
            left.scatter([eff["proxy"]], [eff["exact"]], s=120, color=color, marker="*", edgecolor="black", zorder=4)
            right.axvline(eff["exact"], color=color, lw=2,
                          label=f"seed {seed}: chosen (percentile {eff['percentile']:.0f})")
    kind = next((s["fidelity"].get("fitness") for s in searches.values() if (s.get("fidelity") or {}).get("fitness")), "")
    left.set_xlabel(f"search's fitness ({kind} table)" if kind else "search's fitness")
    left.set_ylabel("exact fitness (f_T on composed images)")
    left.set_title("Fidelity: does the fitness rank policies as f_T does?", fontsize=9)
    right.set_xlabel("exact fitness (lower: harder for f_T)")
    right.set_ylabel("random policies")
    right.set_title("Efficacy: the chosen policy among random ones", fontsize=9)
    for ax, where in ((left, "best"), (right, "upper center")):  # the chosen policies' lines sit at an edge
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc=where)
    fig.tight_layout()
    return _save(fig, path)


def ablation_figure(doc: dict, path: str) -> str:
    """Grouped bars of an ablation table (:func:`patchmix.workflow.ablation.tabulate`): one group per row, one bar per
    column (mean test top-1, error bar: std over seeds, dots: each seed)."""
    plt = pyplot()
    rows, cols = doc["rows"], doc["cols"]
    fig, ax = plt.subplots(figsize=(1.7 * len(rows) * len(cols) / 2 + 2.5, 3.8))
    width = 0.8 / len(cols)
    everything = []
    for j, c in enumerate(cols):
        x = np.arange(len(rows)) + (j - (len(cols) - 1) / 2) * width
        means = [100 * (doc["cells"][r][c]["mean"] or 0.0) for r in rows]
        stds = [100 * doc["cells"][r][c]["std"] for r in rows]
        ax.bar(x, means, width * 0.9, yerr=stds, capsize=3, color=f"C{j}", alpha=0.8, label=doc["col_labels"][c])
        for xi, r in zip(x, rows, strict=True):
            vals = [100 * v for v in doc["cells"][r][c]["values"]]
            everything += vals
            ax.scatter([xi] * len(vals), vals, color="black", s=8, zorder=3)
    if everything:
        lo, hi = min(everything), max(everything)
        pad = max(0.5, (hi - lo) * 0.4)
        ax.set_ylim(max(0, lo - pad), min(100.5, hi + pad))
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels([doc["row_labels"][r].split(" (")[0] for r in rows], fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(doc["table"].replace("table", "Table ") + (": fitness x same-class pairs" if doc["table"] == "table6"
                                                            else ": supervision x grid size"), fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)




def cam_figure(rows: dict, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Class activation maps with their boxes, one row per model (``rows``: ``{label: examples}`` from
    :func:`patchmix.workflow.localize.cam_examples`, the same images in every row): the image in grey under its
    CAM (jet), the GT boxes in white, the predicted box (the largest contour's at MaxBoxAcc's threshold chosen on
    val) in red."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    labels = list(rows)
    cols = max(len(r["cams"]) for r in rows.values())
    fig, axes = plt.subplots(len(labels), cols, figsize=(1.45 * cols + 1.2, 1.5 * len(labels) + 0.4), squeeze=False)
    for i, label in enumerate(labels):
        ex = rows[label]
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(ex["cams"]):
                ax.axis("off")
                continue
            img = ex["images"][j].float().div(255)
            ax.imshow(img.mean(0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(ex["cams"][j].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            for color, boxes in (("white", ex["gt"][j]), ("red", ex["pred"][j])):
                for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4).tolist():
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color=color,
                                           lw=1.2))
            if i == 0 and "labels" in ex:
                ax.set_title(class_names[int(ex["labels"][j])], fontsize=7)
        axes[i][0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return _save(fig, path)


def render_samples(cfg, ds, method: str, path: str, n: int = 16, seed: int = 0, policy=None,
                   split: str = "train") -> str:
    """A PNG grid of ``n`` samples of ``split`` mixed by ``method`` (:func:`.samples.draw_samples`)."""
    mb = draw_samples(cfg, ds, method, n, seed, policy, split)
    title = "original samples" if method == "base" else METHOD_LABELS[method]
    legend = "title: soft label" + ("; frame: each patch's label" if mb.mask is not None else "")
    return mixed_samples_figure(mb, list(ds.classes), path, title=f"{title} on {ds.name} ({legend})")


def make_figures(cfg, ds, out: str, results, summary, policy, policies, logbooks, searches=None,
                 paired: dict | None = None) -> dict:
    """Write a run's PNGs under ``out/figures``; returns ``{name: path relative to out}``.

    ``policy``: the first seed's policy (its guided samples are drawn); ``policies``: every seed's (the pair
    heat map); ``logbooks``: ``{label: logbook}`` of the searches; ``searches``: ``{seed: search record}``
    (the search check's points); ``paired``: the paired differences (the accuracy figure's right panel)."""
    figdir = os.path.join(out, "figures")
    figs: dict[str, str] = {}

    def add(name: str, path: str) -> None:
        figs[name] = os.path.relpath(path, out)

    if cfg.run.show_samples:
        n = cfg.run.show_samples
        add("samples", render_samples(cfg, ds, "random", os.path.join(figdir, "samples.png"), n, seed=0))
        if policy is not None:
            add("guided_samples", render_samples(cfg, ds, "guided", os.path.join(figdir, "guided_samples.png"), n,
                                                 seed=0, policy=policy))
    if logbooks:
        add("fitness", fitness_figure(logbooks, os.path.join(figdir, "fitness.png")))
    if policies:
        add("pairs", pairs_figure(policies, list(ds.classes), os.path.join(figdir, "pairs.png")))
    if fidelity_summary(searches or {}):
        add("fidelity", fidelity_figure(searches, os.path.join(figdir, "fidelity.png")))
    if summary:
        add("accuracy", accuracy_figure(summary, results, os.path.join(figdir, "accuracy.png"), paired=paired))
        add("curves", curves_figure(results, os.path.join(figdir, "curves.png")))
    return figs

