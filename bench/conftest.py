"""Benchmark set-up: same Triton/interpreter rule as the tests, and one ratio table per run.

Every bench parametrises ``provider``; the table puts, per group (shape/dtype/device), each provider's
median beside the eager reference (``eager``) and the bandwidth floor (a provider named ``clone`` or
``copy``), all measured in the same run.
"""

from tests.conftest import devices  # noqa: F401  (sets TRITON_INTERPRET before patchmix is imported)

FLOORS = ("clone", "copy", "floor", "plain")  # plain: the training step without mixing


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) or []
    rows = {}
    for b in benches:
        stats = getattr(b, "stats", None)
        if stats is None or not getattr(b, "params", None):
            continue
        provider = b.params.get("provider")
        if provider is None:
            continue
        rows.setdefault(b.group or b.fullname.split("[")[0], {})[provider] = stats.median
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "patchmix: ratios measured in this run (median times)")
    tr.write_line(f"{'group':<48} {'provider':<12} {'median ms':>10} {'x eager':>9} {'x floor':>9}")
    for group, provs in sorted(rows.items()):
        eager = provs.get("eager")
        floor = next((provs[p] for p in provs if p in FLOORS), None)
        for p, t in sorted(provs.items(), key=lambda kv: kv[1]):
            speed = f"{eager / t:8.2f}x" if eager else "        -"
            vs_floor = f"{t / floor:8.2f}x" if floor else "        -"
            tr.write_line(f"{group:<48} {p:<12} {t * 1e3:>10.3f} {speed:>9} {vs_floor:>9}")
    tr.write_line("x eager: speed-up over the eager reference; x floor: time over the bandwidth floor (lower is better)")
