"""The run's tables and its ``report.md`` (markdown): :func:`summarize`, :func:`format_table`,
:func:`fidelity_summary`, :func:`fidelity_text`, :func:`fidelity_event`, :func:`paired_section`,
:func:`write_report`. The figures it links are drawn by :mod:`.figures`.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

from ..choices import METHOD_LABELS
from ..files import atomic_write_text


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
        lines.append(f"| {seed} | {fid.get('fitness', '?')} | {_fmt(rnd.get('spearman'))} ({_fmt(rnd.get('ceiling'))}), "
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


def fgsm_summary(results: Sequence[dict], methods: Sequence[str]) -> dict:
    """``{method: {eps: mean FGSM accuracy over the method's seeds}}`` for the methods whose results have FGSM."""
    out = {}
    for m in methods:
        rows = [r["fgsm"] for r in results if r["method"] == m and r.get("fgsm")]
        if rows:
            out[m] = {e: sum(r[e] for r in rows) / len(rows) for e in rows[0]}
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
    out: dict = {"goal": GOAL, "draws": first["draws"], "policies": first["random"]["n"], "fitness": first.get("fitness")}
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
    return {"fitness": fid.get("fitness"), "draws": fid.get("draws"), "seconds": fid.get("seconds"),
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
    return (f"fidelity of the {fid.get('fitness', '?')} fitness (Spearman with f_T's exact fitness): random policies "
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
    "neighbours; the interaction fitness (search.fitness = interaction, the default) models it.")


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


#: The localisation table's columns: (metrics key, header).
LOCALIZATION_COLUMNS = (("top1", "top-1"), ("maxboxacc_v2", "MaxBoxAccV2"), ("maxboxacc_v2_30", "IoU 30"),
                        ("maxboxacc_v2_50", "IoU 50"), ("maxboxacc_v2_70", "IoU 70"),
                        ("boxacc_v2_val_tau", "V2 at val's thresholds"), ("maxboxacc", "MaxBoxAcc"),
                        ("top1_loc", "top-1 loc"), ("pxap", "PxAP"))


def localization_section(loc: dict | None, figures: dict[str, str]) -> list[str]:
    """report.md's "Localisation" section: per CAM head, each method's scores (mean ± std over seeds) beside the
    centre baseline, and the paired differences of MaxBoxAccV2 and top-1 localisation."""
    if not loc:
        return []
    from .stats import BASELINES

    lines = ["## Weakly supervised localisation", "",
             "Class activation maps of the true class (GT-known), scored as clovaai/wsolevaluation scores them "
             "(docs/localization.md): MaxBoxAccV2 (every contour's box, IoU 30/50/70), MaxBoxAcc (the largest "
             "contour's box, IoU 50), each at the best CAM threshold on the test split; \"V2 at val's thresholds\" "
             "and top-1 localisation use the thresholds chosen on the box-labelled val split. Percent, mean ± std "
             "over seeds.", ""]
    centre = loc.get("centre") or {}
    for head, part in loc["heads"].items():
        rows = part["summary"]
        cols = [(k, h) for k, h in LOCALIZATION_COLUMNS if any(k in r for r in rows.values()) or k in centre]
        lines += [f"### CAM of the {head} classifier", "",
                  "| method | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
        for m, r in rows.items():
            lines.append(f"| {METHOD_LABELS.get(m, m)} | " + " | ".join(
                f"{r[k]['mean']:.2f} ± {r[k]['std']:.2f}" if k in r else "-" for k, _ in cols) + " |")
        if centre and head == "image":
            lines.append("| centre baseline | " + " | ".join(f"{centre[k]:.2f}" if k in centre else "-"
                                                           for k, _ in cols) + " |")
        lines.append("")
        for key, name in (("maxboxacc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 localisation")):
            table = part["paired"].get(key) or {}
            bases = [b for b in BASELINES if b in table]
            if not bases:
                continue
            methods = list(dict.fromkeys(m for b in bases for m in table[b]))
            lines += [f"Paired differences of {name} (points, {100 * loc['confidence']:.0f}% interval over seeds):",
                      "", "| method | " + " | ".join(f"minus {METHOD_LABELS.get(b, b)}" for b in bases) + " |",
                      "|---|" + "---|" * len(bases)]
            for m in methods:
                lines.append(f"| {METHOD_LABELS.get(m, m)} | "
                             + " | ".join(diff_cell(table[b].get(m), scale=1.0) for b in bases) + " |")
            lines.append("")
    if "cams" in figures:
        lines += [f"![class activation maps]({figures['cams']})", ""]
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
    lines += localization_section(metrics.get("localization"), figures)
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
            how = (f"{build.get('fitness')} fitness" + (f" fitted on {build['forward_passes']} composed images "
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

