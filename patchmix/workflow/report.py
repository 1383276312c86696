"""Figures (matplotlib, Agg backend: no display needed), tables and the run's ``report.md``.

* :func:`render_samples`: a PNG of ``n`` samples mixed by any method (``patchmix show``, the run's figures).
* :func:`mixed_samples_figure`: a grid of mixed samples, each titled with its soft label.
* :func:`fitness_figure`: the search's best / mean / worst fitness per generation.
* :func:`pairs_figure`: the discovered class pairs as a ``K x K`` heat map (how many seeds chose each pair).
* :func:`accuracy_figure`: test accuracy per method, mean with the spread over seeds, every seed as a dot.
* :func:`curves_figure`: validation accuracy per epoch, per method (mean over seeds).
* :func:`fidelity_figure`: the search check: the fitness against the exact one, the chosen policy among random ones.
* :func:`ablation_figure`: an ablation's table (``patchmix ablate``) as grouped bars.
* :func:`make_figures`: every figure of a ``patchmix run``.
* :func:`summarize`, :func:`format_table`, :func:`fidelity_summary`, :func:`fidelity_text`, :func:`fidelity_event`,
  :func:`write_report`.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence

import numpy as np

from ..choices import METHOD_LABELS
from ..files import atomic_path, atomic_write_text

METHOD_COLORS = {"base": "#7f7f7f", "mixup": "#1f77b4", "cutmix": "#2ca02c", "random": "#ff7f0e",
                 "guided": "#d62728", "mix": "#9467bd"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _label_text(a: int, b: int, lam: float, names: Sequence[str]) -> str:
    na, nb = names[a], names[b]
    if a == b or lam >= 0.995:
        return na
    if lam <= 0.005:
        return f"{nb}"
    return f"{lam:.2f} {na}\n{1 - lam:.2f} {nb}"


def mixed_samples_figure(batch, class_names: Sequence[str], path: str, title: str = "", columns: int = 8,
                         grid_lines: bool = True) -> str:
    """A grid of the samples of a :class:`patchmix.MixedBatch` (images in ``[0, 1]``), each titled with its
    soft label ``lam * a + (1 - lam) * b``; grid masks are outlined when present."""
    plt = _plt()
    images = batch.images.detach().float().cpu().clamp(0, 1)
    n = images.shape[0]
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.85 * rows + 0.5), squeeze=False)
    H, W = images.shape[-2:]
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray_r" if H <= 16 else "gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        if grid_lines and batch.mask is not None:
            P = batch.mask.shape[-1]
            for i in range(1, P):
                ax.axhline(i * H / P - 0.5, color="#00a0ff", lw=0.5, alpha=0.6)
                ax.axvline(i * W / P - 0.5, color="#00a0ff", lw=0.5, alpha=0.6)
        lam = float(batch.lam[k])
        ax.set_title(_label_text(int(batch.target_a[k]), int(batch.target_b[k]), lam, class_names), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(hspace=0.3, wspace=0.15, top=1 - 0.5 / (1.85 * rows + 0.5))
    return _save(fig, path)


def fitness_figure(logbooks: dict, path: str, title: str = "Genetic search: fitness per generation") -> str:
    """``logbooks``: ``{label: [{"gen", "best", "mean", "worst"}, ...]}`` (one curve set per seed)."""
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
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
    kind = next((s["fidelity"].get("table") for s in searches.values() if (s.get("fidelity") or {}).get("table")), "")
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
    plt = _plt()
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


def render_samples(cfg, ds, method: str, path: str, n: int = 16, seed: int = 0, policy=None,
                   split: str = "train") -> str:
    """A PNG grid of ``n`` samples of ``split`` mixed by ``method`` (``guided`` needs ``policy``: its samples
    come from phase four's batch builder with only the guided part)."""
    import torch

    from .. import data as data_mod
    from ..mixing.augment import MixedBatch
    from ..seeding import seeded_generator
    from ..training import make_mixer

    g = seeded_generator(seed, "show")
    sp = getattr(ds, split)
    if method == "guided":
        from ..mixing.guided import GuidedPatchMix, MixedBatchSampler, MixedCollate

        counts = (0, 0, n)
        guided = GuidedPatchMix(policy, sp.labels)
        idx = next(iter(MixedBatchSampler(guided, counts, num_batches=1, generator=g)))
        x, y = sp.get(idx)
        mb = MixedCollate(guided, counts).mix(data_mod.to_float(x, "cpu"), y)
    else:
        x, y = sp.get(torch.randperm(len(sp), generator=g)[: max(n, 2)])
        mb = make_mixer(method, cfg, g)(data_mod.to_float(x, "cpu"), y)
        mb = MixedBatch(mb.images[:n], mb.target_a[:n], mb.target_b[:n], mb.lam[:n],
                        None if mb.mask is None else mb.mask[:n])
    title = "original samples" if method == "base" else METHOD_LABELS[method]
    return mixed_samples_figure(mb, list(ds.classes), path, title=f"{title} on {ds.name} (title: soft label)")


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


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _fidelity_section(search: dict, summary: dict | None, figures: dict[str, str]) -> list[str]:
    """report.md's "Search check" section: per seed the fitness's fidelity (with its ceiling) and the search's
    efficacy, and plain sentences on what they mean."""
    if not any(s.get("fidelity") for s in search.values()):
        return []
    lines = ["## Search check: fidelity and efficacy", "",
             "f_T run on composed validation images (draws of the check's own, independent of the ones the "
             "fitness was fitted on) gives the exact fitness of random policies built like the search's, of the "
             "distinct policies of its final population and of the chosen policy. **Fidelity**: Spearman rank "
             "correlation of the search's fitness with the exact one; the **ceiling** is what a perfect fitness "
             "would reach against an exact fitness measured on this many draws (from the exact fitness against "
             "itself on two halves of the draws). **Efficacy**: the chosen policy's exact fitness as a percentile "
             "among the random policies (0: lower, i.e. harder for f_T, than all of them)."]
    if summary:
        lines[-1] += (f" Goal: Spearman >= {summary['goal']}; {summary['draws']} draws per class pair, "
                      f"{summary.get('policies', '?')} random policies.")
    lines += ["", "| seed | fitness | Spearman, random (ceiling) | linear cache | Spearman, final (ceiling) | "
              "policy's exact fitness | percentile among random (median) | uniform masks | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for seed, s in search.items():
        fid = s.get("fidelity") or {}
        if "skipped" in fid:
            lines.append(f"| {seed} | not measured: {fid['skipped']} | | | | | | | |")
            continue
        rnd, fin, eff = fid.get("random") or {}, fid.get("final"), fid.get("efficacy") or {}
        final = f"{_fmt(fin['spearman'])} ({_fmt(fin.get('ceiling'))}), n = {fin['n']}" if fin else "n/a"
        lines.append(f"| {seed} | {fid.get('table', '?')} | {_fmt(rnd.get('spearman'))} ({_fmt(rnd.get('ceiling'))}), "
                     f"n = {rnd.get('n')} | {_fmt(fid.get('linear_spearman'))} | {final} | "
                     f"{_fmt(eff.get('exact'), '.4f')} | {_fmt(eff.get('percentile'), '.1f')} "
                     f"({_fmt(eff.get('random_median'), '.4f')}) | {eff.get('uniform_masks')} / {eff.get('masks')} | "
                     f"{fid.get('seconds', 0):.1f} |")
        if eff:
            verdicts.append(f"- seed {seed}: {eff['verdict']}.")
        low = _low_ceiling(fid)
        if low:
            verdicts.append(f"- seed {seed}: {low}")
    lines += [""] + verdicts + [""]
    if summary and summary.get("not_effective"):
        lines += [f"**Not harder than random policies** on seed(s) {', '.join(map(str, summary['not_effective']))}: "
                  "there the guided policy is no better a choice than a random one, whatever its fitness says.", ""]
    if summary and summary["below_goal"]:
        lines += [FIDELITY_BELOW_GOAL, ""]
    elif summary:
        lines += ["At or above the goal: the fitness ranks these policies as f_T does.", ""]
    if "fidelity" in figures:
        lines += [f"![search check]({figures['fidelity']})", ""]
    return lines


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def summarize(results: Sequence[dict], methods: Sequence[str], key: str = "test_acc") -> dict:
    """Per method: ``mean``, ``std`` (sample standard deviation, 0 for one seed), ``min``, ``max``, ``n``."""
    out = {}
    for m in methods:
        vals = [float(r[key]) for r in results if r["method"] == m and r.get(key) is not None]
        if not vals:
            continue
        out[m] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                  "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def format_table(summary: dict, fgsm: dict | None = None, markdown: bool = False, ema: dict | None = None) -> str:
    """The accuracy table (percent), one row per method; an EMA column when given (``summarize(..., key=
    "ema_test_acc")``, runs with ``train.ema_decay``); FGSM columns when given (``{method: {eps: mean}}``)."""
    eps = sorted({e for v in (fgsm or {}).values() for e in v if e != "0"}, key=float)
    head = ["method", "test top-1 (%)", "min", "max", "seeds"] + (["EMA top-1 (%)"] if ema else []) + \
        [f"FGSM eps={e}" for e in eps]
    rows = []
    for m, s in summary.items():
        row = [METHOD_LABELS.get(m, m), f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}", f"{100 * s['min']:.2f}",
               f"{100 * s['max']:.2f}", str(s["n"])]
        if ema:
            row.append(f"{100 * ema[m]['mean']:.2f} ± {100 * ema[m]['std']:.2f}" if m in ema else "-")
        row += [f"{100 * fgsm[m][e]:.1f}" if fgsm and m in fgsm and e in fgsm[m] else "-" for e in eps]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def fidelity_summary(searches: dict) -> dict | None:
    """Over the seeds' search checks: per population (``random``, ``final``) the mean and the lowest Spearman
    correlation, the mean ceiling and the seeds measured; the efficacy percentiles per seed; ``below_goal`` when
    any correlation is under the goal, ``not_effective``: the seeds whose policy is not harder (or, maximising,
    not easier) for f_T than the median random policy. None without a check."""
    from ..search.fidelity import GOAL

    checks = {seed: s["fidelity"] for seed, s in searches.items() if (s.get("fidelity") or {}).get("random")}
    if not checks:
        return None
    first = next(iter(checks.values()))
    out: dict = {"goal": GOAL, "draws": first["draws"], "policies": first["random"]["n"], "table": first.get("table")}
    for key in ("random", "final"):
        parts = [c[key] for c in checks.values() if c.get(key) and c[key]["spearman"] is not None]
        rhos = [p["spearman"] for p in parts]
        ceilings = [p["ceiling"] for p in parts if p.get("ceiling") is not None]
        out[key] = ({"mean": statistics.fmean(rhos), "min": min(rhos), "seeds": len(rhos),
                     "ceiling": statistics.fmean(ceilings) if ceilings else None} if rhos else None)
    out["below_goal"] = any(out[k] is not None and out[k]["min"] < GOAL for k in ("random", "final"))
    eff = {seed: c["efficacy"] for seed, c in checks.items() if c.get("efficacy")}
    out["percentiles"] = {seed: e["percentile"] for seed, e in eff.items()}
    out["not_effective"] = [seed for seed, e in eff.items()
                            if (e["percentile"] if e["direction"] == "min" else 100 - e["percentile"]) >= 50]
    return out


def fidelity_event(fid: dict) -> dict:
    """The scalar part of a seed's search check (the log's ``fidelity`` event)."""
    if "skipped" in fid:
        return {"skipped": fid["skipped"]}
    eff = fid.get("efficacy") or {}
    return {"table": fid.get("table"), "draws": fid.get("draws"), "seconds": fid.get("seconds"),
            "random": (fid.get("random") or {}).get("spearman"), "final": (fid.get("final") or {}).get("spearman"),
            "ceiling": (fid.get("random") or {}).get("ceiling"), "linear": fid.get("linear_spearman"),
            "percentile": eff.get("percentile"), "uniform_masks": eff.get("uniform_masks")}


def fidelity_text(fid: dict) -> str:
    """One line for a seed's search check (the log and the report)."""
    if "skipped" in fid:
        return f"search check not run: {fid['skipped']}"

    def rho(part):
        if not part:
            return "n/a"
        return f"{_fmt(part['spearman'])} (ceiling {_fmt(part.get('ceiling'))}, n = {part['n']})"

    eff = fid.get("efficacy") or {}
    linear = f"; the linear cache {_fmt(fid['linear_spearman'])}" if fid.get("linear_spearman") is not None else ""
    return (f"fidelity of the {fid.get('table', '?')} fitness (Spearman with f_T's exact fitness): random policies "
            f"{rho(fid.get('random'))}, final population {rho(fid.get('final'))}{linear}. Efficacy: "
            f"{eff.get('verdict', 'n/a')} (percentile {_fmt(eff.get('percentile'), '.1f')}, "
            f"{eff.get('uniform_masks')} of {eff.get('masks')} masks uniform); {fid.get('seconds', 0):.1f} s"
            + (f". {_low_ceiling(fid)}" if _low_ceiling(fid) else ""))


def _low_ceiling(fid: dict) -> str:
    """A sentence when the check's ceiling is under its ``min_ceiling`` (too few draws to resolve the goal)."""
    c, floor = (fid.get("random") or {}).get("ceiling"), fid.get("min_ceiling")
    if c is None or floor is None or c >= floor:
        return ""
    need = fid.get("draws_needed")
    more = f"; about {need} draws per pair would reach it (--set run.fidelity_draws={need})" if need else ""
    return f"the check's ceiling {_fmt(c)} is under {floor}: too few draws to resolve the fidelity{more}."


FIDELITY_BELOW_GOAL = (
    "Below the goal: the search's fitness ranks these policies differently from f_T on the composed images, so "
    "the search optimises its proxy rather than the model; read the guided row as 'guided by the proxy' and look "
    "at the efficacy column, which says whether the chosen policy is nevertheless hard for f_T. A correlation "
    "near its ceiling is as good as this check can show; where the final population's correlation is the low "
    "one, the policies the search chose between differ by less than the fitness's error, so which of them won is "
    "arbitrary, though all of them may still be good. The linear cache (each cell scored on its unmixed source) "
    "is blind to what the other image does to a cell and fails this way on models whose cells see their "
    "neighbours; the interaction fitness (search.table = interaction, the default) models it.")


def diff_cell(d: dict | None, scale: float = 100.0) -> str:
    """A paired difference as a table cell: mean [95% interval] in points, marked where it excludes zero."""
    if d is None:
        return "-"
    if d["ci"] is None:
        return f"{scale * d['mean']:+.2f} (n = 1)"
    mark = " **≠ 0**" if d["distinguishable"] else ""
    return f"{scale * d['mean']:+.2f} [{scale * d['ci'][0]:+.2f}, {scale * d['ci'][1]:+.2f}]{mark}"


def paired_section(paired: dict | None) -> list[str]:
    """report.md's "Paired differences" section (runs with two or more seeds): test accuracy and every FGSM
    epsilon, each method minus Random PatchMix and minus Base on the same seeds."""
    if not paired:
        return []
    from .stats import BASELINES

    acc = paired["test_acc"]
    bases = [b for b in BASELINES if b in acc]
    methods = list(dict.fromkeys(m for b in bases for m in acc[b]))
    n = max(d["n"] for b in bases for d in acc[b].values())
    lines = ["### Paired differences", "",
             f"Per seed, a method's test top-1 minus the baseline's on the same test set (points); mean over the n = "
             f"{n} paired seeds with a {100 * paired['confidence']:.0f}% Student-t interval. **≠ 0**: the interval "
             "excludes zero (distinguishable from the seeds' noise); every other difference is not.", "",
             "| method | " + " | ".join(f"minus {METHOD_LABELS.get(b, b)}" for b in bases) + " |",
             "|---|" + "---|" * len(bases)]
    for m in methods:
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(diff_cell(acc[b].get(m)) for b in bases) + " |")
    lines.append("")
    fgsm = {e: t for e, t in (paired.get("fgsm") or {}).items() if t}
    if fgsm:
        lines += ["Under FGSM (top-1 at each epsilon, the same paired differences):", "",
                  "| method | epsilon | " + " | ".join(f"minus {METHOD_LABELS.get(b, b)}" for b in bases) + " |",
                  "|---|---|" + "---|" * len(bases)]
        for m in methods:
            for e, t in fgsm.items():
                lines.append(f"| {METHOD_LABELS.get(m, m)} | {e} | "
                             + " | ".join(diff_cell(t.get(b, {}).get(m)) for b in bases) + " |")
        lines.append("")
    return lines


def write_report(out: str, metrics: dict, figures: dict[str, str]) -> str:
    """``report.md`` in ``out``, linking the figures (paths relative to ``out``) and files."""
    cfg = metrics.get("config", {})
    lines = ["# PatchMix run report", ""]
    ds = metrics.get("dataset", {})
    lines += [f"- data: {ds.get('description', '?')}",
              f"- model: `{metrics.get('model', '?')}`, grid P = {cfg.get('model', {}).get('grid_size')}, "
              f"{cfg.get('train', {}).get('epochs')} epochs, batch {cfg.get('train', {}).get('batch_size')}, "
              f"lr {cfg.get('train', {}).get('lr')} ({cfg.get('train', {}).get('schedule')})",
              f"- seeds: {', '.join(str(s) for s in cfg.get('run', {}).get('seeds', []))}; "
              f"wall time {metrics.get('wall_seconds', 0):.0f} s on {metrics.get('device', '?')}",
              f"- re-run: `patchmix run --config {os.path.join(out, 'config.json')}`", ""]
    lines += ["## Test accuracy", "", format_table(metrics.get("summary", {}), metrics.get("fgsm_summary"),
                                                   markdown=True, ema=metrics.get("ema_summary")), "",
              "Top-1 on the test split, mean ± sample standard deviation over the seeds (every method: same "
              "epochs, steps, batch size and seeds). FGSM columns: top-1 under the FGSM white-box attack at that "
              "epsilon (pixel units, images in [0, 1]), mean over seeds (paper Table 4). Random PatchMix is "
              "phase one's f_T (trained with L_T); Guided PatchMix is phase four's f_O (L_O on original + "
              "random + guided samples).", ""]
    lines += paired_section(metrics.get("paired"))
    if "accuracy" in figures:
        lines += [f"![accuracy]({figures['accuracy']})", ""]
    if "curves" in figures:
        lines += [f"![validation curves]({figures['curves']})", ""]
    search = metrics.get("search", {})
    if search:
        lines += ["## Guided search (phase two)", ""]
        for seed, s in search.items():
            pairs = ", ".join(f"{a}+{b}" for a, b in s.get("pairs", [])[:12])
            more = "" if len(s.get("pairs", [])) <= 12 else f" (+{len(s['pairs']) - 12} more)"
            build = s.get("fitness_build") or {}
            how = (f"{build.get('table')} table" + (f" fitted on {build['forward_passes']} composed images "
                                                   f"({build['seconds']:.1f} s)" if build.get("forward_passes") else "")
                   if build else "")
            lines.append(f"- seed {seed}: fitness {s.get('fitness'):.4f} after {s.get('generations')} generations "
                         f"({s.get('seconds', 0):.1f} s){'; ' + how if how else ''}; pairs: {pairs}{more}")
        lines.append("")
        for key, text in (("fitness", "fitness per generation"), ("pairs", "discovered class pairs")):
            if key in figures:
                lines += [f"![{text}]({figures[key]})", ""]
        lines += _fidelity_section(search, metrics.get("fidelity"), figures)
    if "samples" in figures or "guided_samples" in figures:
        lines += ["## Mixed samples", ""]
        for key in ("samples", "guided_samples"):
            if key in figures:
                lines += [f"![{key}]({figures[key]})", ""]
    files = metrics.get("files", {})
    if files:
        lines += ["## Files", ""] + [f"- {k}: [{v}]({v})" for k, v in files.items()] + [""]
    path = os.path.join(out, "report.md")
    atomic_write_text(path, "\n".join(lines))
    return path

