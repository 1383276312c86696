"""The paper's ablations behind ``patchmix ablate``: each trains its variants with the run's jobs (the same
budget, seeds, checkpoints and resuming as ``patchmix run``) and writes its table.

* ``table6`` (paper Table 6, fitness function): the guided model ``f_O`` with the search's fitness minimised
  (the hardest compositions for ``f_T``; the paper's "min L_P", our default) or maximised ("max L_P"),
  times same-class pairs ``(c, c)`` allowed (competing with the other pairs) or excluded. One ``f_T`` per
  seed serves the four searches (it is the run's Random PatchMix job, ``checkpoints/random-seed<s>.pt``).
* ``table7`` (paper Tables 5 and 7, supervision and grid size): Random PatchMix trained with the image and
  patch terms of ``L_T`` (``train.image_weight`` / ``train.patch_weight`` of the run, 0.5 / 0.5 by default),
  the image term only (1 / 0) or the patch term only (0 / 1), at grid sizes ``P = 2, 4, 8``. A term alone
  has weight 1, as ``L_O`` trains the other methods (half of it would halve their learning rate). Trained
  on the patch term only, a separate image classifier would get no gradient and guess (measured: 1 to 3%
  top-1 after 3 epochs); so that cell shares one classifier between the heads
  (``model.separate_patch_classifier = false``): its image logits are then exactly the mean of its patch
  logits (the cells split the 8x8 map evenly), which is what a patch-supervised model predicts with.

A variant's jobs are written with its tag (``checkpoints/random-P8-image-seed0.pt``, ``policies/max-allowed-
seed0.json``); a variant whose settings are the run's own uses the run's file names. So ``patchmix ablate
table6 --preset mnist5k --out runs/mnist5k`` after ``patchmix run --preset mnist5k --out runs/mnist5k`` reuses
the run's three ``f_T`` and trains only the guided models. The folder's ``config.json`` must hold the same
settings (seeds, methods and the run-only settings of ``rundir.ABLATION_FREE`` may differ). Finished jobs and
searches (``rundir.finished_policy``) are always reused and an interrupted one continues: ``patchmix ablate``
never removes a file. The folder is checked and locked as for every command (:mod:`patchmix.workflow.session`,
its ``reuse`` mode).

Output: ``<table>.md`` (the table and, with two or more seeds, the paired differences its claims rest on),
``<table>.json`` (every cell's mean, std and per-seed accuracies, the paired differences, the command, the
settings) and ``figures/<table>.png``.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

from ..choices import ABLATIONS
from ..config import Config
from ..errors import ConfigError
from ..files import atomic_write_text
from ..training import Interrupted, train_model
from . import figures, report, rundir
from .run import search_policy, stop_if_requested, train_job
from .stats import paired_difference

#: The ablations, in the order the CLI lists them.
TABLES = ABLATIONS
#: Table 7's supervisions: label, (image_weight, patch_weight); "both" takes the run's own weights.
SUPERVISIONS = {"both": "image + patch (L_T)", "image": "image only (L_O)",
                "patch": "patch only (L_P; shared classifier)"}
GRID_SIZES = (2, 4, 8)
DIRECTIONS = {"min": "minimised (hardest for f_T; paper: min L_P)", "max": "maximised (easiest; paper: max L_P)"}
SAME_CLASS = {"allowed": "same-class pairs allowed", "excluded": "same-class pairs excluded"}


@dataclass
class Variant:
    """One cell of a table: its row and column keys, its settings over the run's (``updates``), its tag."""

    row: str
    col: str
    updates: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{self.row}-{self.col}"


def variants(table: str, cfg: Config) -> list[Variant]:
    """The cells of ``table`` for the run's configuration ``cfg``."""
    if table == "table6":
        return [Variant(d, s, {"search.direction": d, "search.same_class": s}) for d in DIRECTIONS for s in SAME_CLASS]
    if table == "table7":
        t = cfg.train
        weights = {"both": (t.image_weight, t.patch_weight), "image": (1.0, 0.0), "patch": (0.0, 1.0)}
        shared = {"patch": {"model.separate_patch_classifier": False}}  # the image head predicts with the patches'
        return [Variant(f"P{P}", sup, {"model.grid_size": P, "train.image_weight": weights[sup][0],
                                        "train.patch_weight": weights[sup][1], **shared.get(sup, {})})
                for P in GRID_SIZES for sup in SUPERVISIONS]
    raise ConfigError(f"unknown ablation {table!r}; choose from {', '.join(TABLES)}")


def row_label(table: str, row: str) -> str:
    return DIRECTIONS[row] if table == "table6" else f"{row[1:]}x{row[1:]} grid"


def col_label(table: str, col: str) -> str:
    return SAME_CLASS[col] if table == "table6" else SUPERVISIONS[col]


def run_ablation(table: str, cfg: Config, out: str, *, quiet: bool = False, command: str = "") -> dict:
    """Train every cell of ``table`` for every seed of ``cfg.run.seeds`` into ``out``; write and return the
    table (``<table>.json``'s content). The folder is checked, locked and kept as
    :func:`patchmix.workflow.session.session` does in its ``reuse`` mode: finished jobs are reused, nothing is
    removed, and a folder whose ``config.json`` holds other settings (but for ``rundir.ABLATION_FREE``) is
    refused."""
    from .session import session

    cells = variants(table, cfg)
    for cell in cells:  # every cell's settings (e.g. table7's grid sizes): refused now, not hours later
        cfg.override(cell.updates)
    t_start = time.perf_counter()
    with session(cfg, out, command="ablate", mode="reuse", quiet=quiet, line=command or None,
                 prepare=lambda ds, rt: [cfg.override(c.updates).check_dataset(ds, search=table == "table6")
                                         for c in cells]) as s:
        rt, ds, log = s.rt, s.ds, s.log
        log.info(f"ablation {table}: {len(cells)} variants x seeds {', '.join(map(str, cfg.run.seeds))}; "
                 f"data {ds.describe()}; {cfg.train.epochs} epochs")
        log.event("ablate", table=table, config=cfg.to_dict(), variants=[c.tag for c in cells])
        results = []
        try:
            for seed in cfg.run.seeds:
                if table == "table6":
                    results += _table6_seed(cfg, ds, out, rt, log, cells, seed)
                else:
                    results += _table7_seed(cfg, ds, out, rt, log, cells, seed)
        except Interrupted:
            log.info(f"interrupted: checkpoints are in place; run the same command again to continue ({out})")
            raise
        if not rt.is_main:
            return {}
        doc = tabulate(table, cells, results)
        doc.update(command=command, config=cfg.to_dict(), dataset=ds.describe(),
                   wall_seconds=round(time.perf_counter() - t_start, 2))
        doc["figure"] = os.path.relpath(figures.ablation_figure(doc, os.path.join(out, "figures", f"{table}.png")), out)
        rundir.write_metrics(os.path.join(out, f"{table}.json"), doc)
        atomic_write_text(os.path.join(out, f"{table}.md"), format_ablation(doc) + "\n")
        log.event("ablated", table=table, cells=doc["cells"], wall_seconds=doc["wall_seconds"])
        return doc


def _job_tag(cfg: Config, cell_cfg: Config, cell: Variant) -> str:
    """The cell's file tag; none when the cell's settings are the run's own (its files are the run's)."""
    return "" if cell_cfg.to_dict() == cfg.to_dict() else cell.tag


def _record(cell: Variant, seed: int, res: dict, ck: str) -> dict:
    return {"row": cell.row, "col": cell.col, "seed": seed, "test_acc": res["test_acc"], "val_acc": res["val_acc"],
            "train_seconds": res["train_seconds"], "checkpoint": ck}


def _table6_seed(cfg, ds, out, rt, log, cells, seed) -> list[dict]:
    """One ``f_T`` (the run's Random PatchMix job, trained or read when a cell's search needs it), then per
    cell its search (or its finished one's policy: :func:`rundir.finished_policy`) and the guided model."""
    f_t = None
    rows = []
    for cell in cells:
        cell_cfg = cfg.override(cell.updates)
        tag = _job_tag(cfg, cell_cfg, cell)
        policy = rundir.finished_policy(out, seed, list(ds.classes), cfg.model.grid_size, tag)
        if policy is None:
            if f_t is None:
                ck = rundir.checkpoint_path(out, "random", seed)
                f_t, _ = train_model(cfg, ds, "random", seed, rt=rt, checkpoint=ck, resume=True, log=log,
                                     desc=f"{'random':>6} seed {seed} (f_T)")
                stop_if_requested(ck)
            policy, _ = search_policy(cell_cfg, ds, out, rt, log, f_t, seed, tag=tag, resume=True)
        _, res, ck = train_job(cell_cfg, ds, out, rt, log, "guided", seed, policy=policy, tag=tag, resume=True,
                               fgsm=False)
        rows.append(_record(cell, seed, res, ck))
        stop_if_requested(ck)
    return rows


def _table7_seed(cfg, ds, out, rt, log, cells, seed) -> list[dict]:
    """Random PatchMix per cell: grid size and the weights of the image and patch terms."""
    rows = []
    for cell in cells:
        cell_cfg = cfg.override(cell.updates)
        _, res, ck = train_job(cell_cfg, ds, out, rt, log, "random", seed, tag=_job_tag(cfg, cell_cfg, cell),
                               resume=True, fgsm=False)
        rows.append(_record(cell, seed, res, ck))
        stop_if_requested(ck)
    return rows


def contrasts(table: str, rows: list[str], cols: list[str]) -> list[tuple[str, tuple, tuple]]:
    """The paired comparisons an ablation's claims rest on, as ``(label, (row, col), (row, col))``: the first
    cell minus the second. Table 6: minimised minus maximised in each column (the paper: minimising is better),
    excluded minus allowed in each row. Table 7: each supervision minus image + patch at each grid size, each
    grid size minus 4x4 for each supervision."""
    out = []
    if table == "table6":
        out += [(f"min - max, {col_label(table, c)}", ("min", c), ("max", c)) for c in cols]
        out += [(f"excluded - allowed, {row_label(table, r).split(' (')[0]}", (r, "excluded"), (r, "allowed"))
                for r in rows]
    else:
        out += [(f"{c} - both, {row_label(table, r)}", (r, c), (r, "both")) for r in rows for c in cols if c != "both"]
        out += [(f"{row_label(table, r)} - 4x4, {c}", (r, c), ("P4", c)) for c in cols for r in rows if r != "P4"]
    return [x for x in out if x[1][0] in rows and x[2][0] in rows and x[1][1] in cols and x[2][1] in cols]


def paired_contrasts(table: str, rows: list[str], cols: list[str], results: list[dict]) -> list[dict]:
    """:func:`contrasts` over the seeds both cells finished (:func:`patchmix.workflow.stats.paired_difference`)."""
    acc = {(r["row"], r["col"], r["seed"]): r["test_acc"] for r in results}
    out = []
    for label, a, b in contrasts(table, rows, cols):
        seeds = sorted(s for (r, c, s) in acc if (r, c) == a and (*b, s) in acc)
        if seeds:
            d = paired_difference([acc[(*a, s)] for s in seeds], [acc[(*b, s)] for s in seeds])
            out.append(dict(d, label=label, seeds=seeds))
    return out


def tabulate(table: str, cells: list[Variant], results: list[dict]) -> dict:
    """``{"table", "rows", "cols", "row_labels", "col_labels", "cells": {row: {col: {mean, std, n, values}}},
    "paired": [...], "results"}`` (accuracies in [0, 1]; std is the sample standard deviation, 0 for one seed;
    ``paired``: :func:`paired_contrasts`)."""
    rows = list(dict.fromkeys(c.row for c in cells))
    cols = list(dict.fromkeys(c.col for c in cells))
    grid: dict = {r: {} for r in rows}
    for c in cells:
        vals = [r["test_acc"] for r in results if r["row"] == c.row and r["col"] == c.col]
        grid[c.row][c.col] = {"mean": statistics.fmean(vals) if vals else None,
                              "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals),
                              "values": vals}
    return {"table": table, "rows": rows, "cols": cols, "row_labels": {r: row_label(table, r) for r in rows},
            "col_labels": {c: col_label(table, c) for c in cols}, "cells": grid,
            "paired": paired_contrasts(table, rows, cols, results), "results": results}


TITLES = {"table6": "Table 6: the guided model's test top-1 (%) by the search's fitness and same-class pairs",
          "table7": "Table 7 (and 5): Random PatchMix's test top-1 (%) by supervision and grid size"}


def format_ablation(doc: dict) -> str:
    """The table as markdown: mean ± std over seeds, in percent."""
    rows, cols = doc["rows"], doc["cols"]
    n = max((doc["cells"][r][c]["n"] for r in rows for c in cols), default=0)
    head = "fitness" if doc["table"] == "table6" else "grid"
    lines = [f"{TITLES[doc['table']]}, mean ± std over {n} seed{'s' if n != 1 else ''}:", "",
             "| " + " | ".join([head] + [doc["col_labels"][c] for c in cols]) + " |",
             "|" + "|".join("---" for _ in range(len(cols) + 1)) + "|"]
    for r in rows:
        vals = []
        for c in cols:
            cell = doc["cells"][r][c]
            vals.append("-" if cell["mean"] is None else f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}")
        lines.append("| " + " | ".join([doc["row_labels"][r]] + vals) + " |")
    paired = [d for d in doc.get("paired", []) if d["n"] >= 2]
    if paired:
        lines += ["", "Paired differences over the seeds both cells finished (points; mean with a 95% Student-t "
                      "interval; **≠ 0**: the interval excludes zero):", "", "| comparison | difference | n |",
                  "|---|---|---|"]
        lines += [f"| {d['label']} | {report.diff_cell(d)} | {d['n']} |" for d in paired]
    return "\n".join(lines)


__all__ = ["TABLES", "Variant", "contrasts", "format_ablation", "paired_contrasts", "run_ablation", "tabulate",
           "variants"]
