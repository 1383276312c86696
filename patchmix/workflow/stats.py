"""Paired statistics over seeds: is a method's accuracy different from a baseline's, beyond the seeds' noise?

Every method of a ``patchmix run`` trains with the same seeds, budget and test set, so the seed is a block:
per seed, ``d_s = acc(method, s) - acc(baseline, s)`` removes what the seed does to both (the split of the data
into batches, the initialisation), and the question is whether the mean of the ``d_s`` differs from zero. The
interval is Student's t: ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)`` over the ``n`` seeds both methods
finished (no interval for one seed). A difference is *distinguishable from zero* when its interval excludes zero;
at ``n = 2`` the t quantile is 12.7, so only a difference far larger than its spread can be.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from .._optional import require

#: The baselines every report compares with, in the order the report shows them.
BASELINES = ("random", "base")
#: The interval's confidence.
CONFIDENCE = 0.95


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """``a[s] - b[s]`` over paired seeds: ``n``, ``mean``, ``sd`` (sample; None for one seed), ``ci`` ``[lo, hi]``
    (None for one seed), ``distinguishable`` (the interval excludes 0), ``per_seed`` (the differences)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference: need two equally long non-empty sequences, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n, mean = len(d), statistics.fmean(d)
    out = {"n": n, "mean": mean, "sd": None, "ci": None, "distinguishable": False, "per_seed": d}
    if n >= 2:
        sd = statistics.stdev(d)
        half = float(require("scipy.stats", "workflow", "the paired intervals").t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, ci=[mean - half, mean + half], distinguishable=bool(mean - half > 0 or mean + half < 0))
    return out


def _by_seed(results: Sequence[dict], method: str, value) -> dict:
    return {r["seed"]: v for r in results if r["method"] == method and (v := value(r)) is not None}


def paired_table(results: Sequence[dict], methods: Sequence[str], value=lambda r: r.get("test_acc"),
                 baselines: Sequence[str] = BASELINES) -> dict:
    """``{baseline: {method: paired_difference}}`` for every method other than the baseline that shares at least
    one seed with it (a later baseline is compared in its own row only); ``value(result)`` picks the number
    (None: the run has none)."""
    out: dict = {}
    for base in baselines:
        ref = _by_seed(results, base, value)
        if not ref:
            continue
        rows = {}
        later = baselines[list(baselines).index(base) + 1:]
        for m in methods:
            if m == base or m in later:  # a later baseline's row holds the mirror (Random - Base, not Base - Random)
                continue
            mine = _by_seed(results, m, value)
            seeds = sorted(set(mine) & set(ref))
            if seeds:
                rows[m] = dict(paired_difference([mine[s] for s in seeds], [ref[s] for s in seeds]), seeds=seeds)
        if rows:
            out[base] = rows
    return out


def paired_summary(results: Sequence[dict], methods: Sequence[str]) -> dict | None:
    """The paired differences of test accuracy and of every FGSM epsilon, against :data:`BASELINES` (metrics.json's
    ``paired``): ``{"confidence", "method": "...", "test_acc": paired_table, "fgsm": {eps: paired_table}}``;
    None unless some method has two or more paired seeds."""
    acc = paired_table(results, methods)
    if not any(row["n"] >= 2 for table in acc.values() for row in table.values()):
        return None
    eps = sorted({e for r in results for e in (r.get("fgsm") or {}) if float(e) != 0.0}, key=float)  # 0: clean
    fgsm = {e: paired_table(results, methods, value=lambda r, e=e: (r.get("fgsm") or {}).get(e)) for e in eps}
    return {"confidence": CONFIDENCE,
            "method": "per seed, method minus baseline on the same test set; mean with a Student-t interval over the "
                      "paired seeds",
            "test_acc": acc, "fgsm": fgsm}


__all__ = ["BASELINES", "CONFIDENCE", "paired_difference", "paired_summary", "paired_table"]
