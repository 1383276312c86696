"""The budget curve of a preset: each method's validation top-1 per epoch (from ``metrics.json`` of `patchmix
train` / `patchmix run` folders), smoothed over a few epochs, drawn into one figure, and the table that picks the
epoch budget (mean validation top-1 over windows of epochs, test top-1, seconds per epoch).

    .venv/bin/python -m bench.budget_curve runs/fmnist-budget/*/metrics.json -o docs/figures/fmnist-budget.png \\
        --title "fmnist, seed 0" --windows 21-30,41-50,61-70,71-80 [--dotted runs/fmnist-short/*/metrics.json] \
        [--seed 0]

Folders given with ``--dotted`` (another budget of the same methods) are drawn dotted.
"""

from __future__ import annotations

import argparse
import json

from patchmix.choices import METHOD_LABELS, METHODS


def load_results(paths: list[str], seed: int | None = None) -> list[dict]:
    """Every training record (method, seed, history, test_acc, train_seconds) of the given metrics.json files
    (of ``seed`` only, when given), in the order of :data:`patchmix.choices.METHODS`."""
    out = []
    for p in paths:
        with open(p) as f:
            out += [r for r in json.load(f)["results"] if seed is None or r["seed"] == seed]
    return sorted(out, key=lambda r: (METHODS.index(r["method"]), r["seed"], -r["epochs"]))


def window_mean(history: list[dict], lo: int, hi: int) -> float:
    """Mean validation top-1 (%) over epochs ``lo..hi`` (1-based, inclusive)."""
    vals = [h["val_acc"] for h in history if lo <= h["epoch"] <= hi]
    return 100 * sum(vals) / len(vals) if vals else float("nan")


def seconds_per_epoch(history: list[dict]) -> float:
    """The median of the per-epoch wall times (``elapsed_s`` differences): robust to a few epochs that another
    job slowed."""
    t = [0.0] + [h["elapsed_s"] for h in history]
    d = sorted(b - a for a, b in zip(t, t[1:], strict=False))
    return d[len(d) // 2] if d else float("nan")


def table(results: list[dict], windows: list[tuple[int, int]]) -> str:
    head = "| method | epochs | test top-1 | " + " | ".join(f"val {a}-{b}" for a, b in windows) + " | s/epoch |"
    rows = [head, "|" + "---|" * (4 + len(windows))]
    for r in results:
        cells = [METHOD_LABELS[r["method"]], str(r["epochs"]), f"{100 * r['test_acc']:.2f}"]
        cells += [f"{window_mean(r['history'], a, b):.2f}" for a, b in windows]
        cells.append(f"{seconds_per_epoch(r['history']):.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def figure(results: list[dict], dotted: list[dict], path: str, title: str, smooth: int, ymin: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"base": "tab:gray", "mixup": "tab:blue", "cutmix": "tab:green", "random": "tab:orange",
              "guided": "tab:red", "mix": "tab:purple"}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for group, style in ((results, "-"), (dotted, ":")):
        for r in group:
            acc = [100 * h["val_acc"] for h in r["history"]]
            sm = [sum(acc[max(0, i - smooth + 1): i + 1]) / len(acc[max(0, i - smooth + 1): i + 1])
                  for i in range(len(acc))]
            label = f"{METHOD_LABELS[r['method']]}" + ("" if style == "-" else f", {r['epochs']}-epoch budget")
            ax.plot(range(1, len(sm) + 1), sm, style, color=colors[r["method"]],
                    label=f"{label} (test {100 * r['test_acc']:.1f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation top-1 (%), {smooth}-epoch mean")
    if ymin is not None:
        ax.set_ylim(bottom=ymin)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics.json files (solid lines)")
    p.add_argument("--dotted", nargs="*", default=[], help="metrics.json files of another budget (dotted)")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    p.add_argument("--title", default="validation top-1 per epoch")
    p.add_argument("--windows", default="", help="epoch windows of the table, e.g. 21-30,41-50")
    p.add_argument("--smooth", type=int, default=5, help="epochs of the moving mean")
    p.add_argument("--ymin", type=float, help="lower end of the accuracy axis")
    p.add_argument("--seed", type=int, help="only this seed's trainings")
    a = p.parse_args()
    results, dotted = load_results(a.metrics, a.seed), load_results(a.dotted, a.seed)
    figure(results, dotted, a.output, a.title, a.smooth, a.ymin)
    windows = [tuple(int(x) for x in w.split("-")) for w in a.windows.split(",") if w]
    print(table(results + dotted, windows))


if __name__ == "__main__":
    main()
