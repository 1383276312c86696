"""Paired statistics over seeds (patchmix.workflow.stats) and their place in the report."""

import math

import pytest
from scipy import stats

from patchmix.workflow.report import paired_section
from patchmix.workflow.stats import paired_difference, paired_summary, paired_table


def test_paired_difference_is_a_paired_t_interval():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.90, 0.91, 0.92]
    d = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert d["n"] == 4 and d["mean"] == pytest.approx(sum(diffs) / 4) and d["per_seed"] == pytest.approx(diffs)
    # the same interval as scipy's paired t-test
    lo, hi = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d["ci"] == pytest.approx([lo, hi]) and d["distinguishable"] == (lo > 0 or hi < 0)
    half = stats.t.ppf(0.975, 3) * d["sd"] / math.sqrt(4)
    assert d["ci"][1] - d["mean"] == pytest.approx(half)
    one = paired_difference([0.9], [0.8])
    assert one["ci"] is None and one["sd"] is None and not one["distinguishable"]
    same = paired_difference([0.9, 0.8], [0.9, 0.8])
    assert same["ci"] == [0.0, 0.0] and not same["distinguishable"]
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0], [1.0, 2.0])


def _results(accs: dict, fgsm: bool = True):
    return [{"method": m, "seed": s, "test_acc": a, **({"fgsm": {"0.1": a - 0.5}} if fgsm else {})}
            for m, per_seed in accs.items() for s, a in enumerate(per_seed)]


def test_paired_table_pairs_seeds_and_shows_each_comparison_once():
    res = _results({"base": [0.90, 0.91, 0.92], "random": [0.93, 0.94], "guided": [0.95, 0.95, 0.96]})
    t = paired_table(res, ["base", "random", "guided"])
    assert set(t) == {"random", "base"}
    assert set(t["random"]) == {"guided"}  # Base - Random lives in the Base row as Random - Base
    assert set(t["base"]) == {"random", "guided"}
    assert t["base"]["random"]["seeds"] == [0, 1] and t["base"]["guided"]["n"] == 3
    assert t["base"]["random"]["mean"] == pytest.approx(0.03)


def test_paired_summary_needs_two_seeds_and_covers_fgsm():
    assert paired_summary(_results({"base": [0.9], "random": [0.92]}), ["base", "random"]) is None
    p = paired_summary(_results({"base": [0.90, 0.91, 0.95], "random": [0.93, 0.94, 0.99]}), ["base", "random"])
    assert p["confidence"] == 0.95 and p["fgsm"]["0.1"]["base"]["random"]["mean"] == pytest.approx(0.1 / 3)
    assert p["test_acc"]["base"]["random"]["distinguishable"]  # +3, +3, +4 points
    text = "\n".join(paired_section(p))
    assert "### Paired differences" in text and "n = 3" in text and "**≠ 0**" in text and "| Random PatchMix | 0.1 |" in text
    assert paired_section(None) == []
