"""Does the pretraining method change how well features transfer? A small version of the paper's Table 3.

    python -m bench.transfer_study RUN_DIR --out runs/transfer [--seeds 0,1,2] [--probe-epochs 15]
        [--finetune-epochs 15] [--target mnist5k] [--threads 2]

``RUN_DIR``: a `patchmix run` folder (e.g. ``runs/fmnist``, from ``--preset fmnist``) whose
``checkpoints/<method>-seed<s>.pt`` are the pretrained models. For each method and seed, two trainings on the
target preset (the 5,000 MNIST digits of ``--preset mnist5k`` by default), each a ``patchmix train --method base``
started from the checkpoint with ``--init``:

* **linear probe**: ``--freeze backbone`` (the image head trains; the backbone and its BatchNorm statistics stay
  as pretrained);
* **fine-tune**: every parameter trains, from the checkpoint;

and a **from-scratch** row: the same fine-tune budget without ``--init``, on the same seeds. Every training is a
run folder under ``--out`` (``probe-<method>-seed<s>``, ``finetune-<method>-seed<s>``, ``scratch-seed<s>``), so
an interrupted study skips what finished. The table: test top-1 per protocol and pretraining method (mean ± std
over seeds), and per protocol the paired differences against Base pretraining and against Random PatchMix
pretraining (the same seed pairs the pretrained model and its transfer run), through
:func:`patchmix.workflow.stats.paired_table`; written as ``transfer.json`` and ``transfer.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from patchmix.choices import METHOD_LABELS, METHODS
from patchmix.cli import main as patchmix_main
from patchmix.workflow.report import diff_cell
from patchmix.workflow.stats import paired_table

PROTOCOLS = {"probe": "linear probe", "finetune": "fine-tune"}


def train(out: str, seed: int, epochs: int, target: str, threads: int, init: str | None = None,
          freeze: bool = False) -> dict:
    """One `patchmix train --method base` on the target preset (skipped when ``out`` holds its finished
    metrics); returns its result record."""
    metrics = os.path.join(out, "metrics.json")
    if not os.path.exists(metrics):
        argv = ["train", "--method", "base", "--preset", target, "--seeds", str(seed), "--epochs", str(epochs),
                "--threads", str(threads), "--set", "run.fgsm_epsilons=", "--quiet", "--out", out]
        if init:
            argv += ["--init", init]
        if freeze:
            argv += ["--freeze", "backbone"]
        rc = patchmix_main(argv)
        if rc != 0:
            raise SystemExit(f"transfer_study: `patchmix {' '.join(argv)}` exited {rc}")
    with open(metrics) as f:
        return json.load(f)["results"][0]


def study(run_dir: str, out: str, seeds: list[int], probe_epochs: int, finetune_epochs: int, target: str,
          threads: int) -> dict:
    rows: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    rows["scratch"] = []
    t0 = time.perf_counter()
    for method in METHODS:
        for seed in seeds:
            ck = os.path.join(run_dir, "checkpoints", f"{method}-seed{seed}.pt")
            if not os.path.exists(ck):
                continue
            for proto, epochs in (("probe", probe_epochs), ("finetune", finetune_epochs)):
                r = train(os.path.join(out, f"{proto}-{method}-seed{seed}"), seed, epochs, target, threads, init=ck,
                          freeze=proto == "probe")
                rows[proto].append({"method": method, "seed": seed, "test_acc": r["test_acc"],
                                    "train_seconds": r.get("train_seconds")})
    for seed in seeds:
        r = train(os.path.join(out, f"scratch-seed{seed}"), seed, finetune_epochs, target, threads)
        rows["scratch"].append({"method": "scratch", "seed": seed, "test_acc": r["test_acc"],
                                "train_seconds": r.get("train_seconds")})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows["probe"])]
    paired = {p: paired_table(rows[p], methods, baselines=("base", "random")) for p in PROTOCOLS}
    return {"run_dir": run_dir, "target": target, "seeds": seeds, "probe_epochs": probe_epochs,
            "finetune_epochs": finetune_epochs, "methods": methods, "rows": rows, "paired": paired,
            "seconds": round(time.perf_counter() - t0, 1)}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def markdown(doc: dict) -> str:
    """The study's tables: top-1 per protocol and pretraining, then the paired differences per protocol."""
    lines = [f"Transfer to `{doc['target']}` from `{doc['run_dir']}` (seeds {', '.join(map(str, doc['seeds']))}; "
             f"probe {doc['probe_epochs']} epochs, fine-tune and scratch {doc['finetune_epochs']}; "
             f"{doc['seconds'] / 60:.1f} min)", "",
             "| pretraining | " + " | ".join(PROTOCOLS.values()) + " |", "|---|" + "---|" * len(PROTOCOLS)]
    for m in doc["methods"]:
        cells = [_mean_std([r["test_acc"] for r in doc["rows"][p] if r["method"] == m]) for p in PROTOCOLS]
        lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    lines.append("| none (from scratch) | - | " + _mean_std([r["test_acc"] for r in doc["rows"]["scratch"]]) + " |")
    for p, name in PROTOCOLS.items():
        table = doc["paired"][p]
        bases = [b for b in ("base", "random") if b in table]
        if not bases:
            continue
        lines += ["", f"Paired differences, {name} (points, 95% interval over seeds):", "",
                  "| pretraining | " + " | ".join(f"minus {METHOD_LABELS.get(b, b)}" for b in bases) + " |",
                  "|---|" + "---|" * len(bases)]
        for m in dict.fromkeys(m for b in bases for m in table[b]):
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(diff_cell(table[b].get(m)) for b in bases)
                         + " |")
    return "\n".join(lines) + "\n"


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--probe-epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--target", default="mnist5k", help="the preset trained on (its data and model)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    doc = study(a.run_dir, a.out, [int(s) for s in a.seeds.split(",")], a.probe_epochs, a.finetune_epochs, a.target,
                a.threads)
    with open(os.path.join(a.out, "transfer.json"), "w") as f:
        json.dump(doc, f, indent=1)
    text = markdown(doc)
    with open(os.path.join(a.out, "transfer.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
