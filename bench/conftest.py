"""Benchmark set-up: same Triton/interpreter rule as the tests, and one ratio table per run.

Every bench parametrises ``provider``; the table puts, per group (shape/dtype/device), each provider's
median beside the eager reference (``eager``), the bandwidth floor (a provider named ``clone``, ``copy`` or
``plain``) and, where the group has one, the copy into a preallocated buffer (``prealloc_copy``), all
measured in the same run. The codegen audit's table (``bench_codegen.py``) follows.
"""

import torch

from tests.conftest import devices  # noqa: F401  (sets TRITON_INTERPRET before patchmix is imported)

FLOORS = ("clone", "copy", "floor", "plain")  # plain: the training step without mixing


def cuda_device_ms(fn, reps: int = 20) -> float:
    """Device time of one ``fn()`` in ms: the summed durations of its CUDA kernels, copies and memsets, from the
    profiler, averaged over ``reps`` calls. Wall-clock medians of small CUDA steps measure the host (Python,
    dispatcher, launches, syncs); this measures what the GPU does, which is what a bandwidth target is about."""
    return cuda_device_breakdown(fn, reps)[0]


def cuda_device_breakdown(fn, reps: int = 20) -> tuple[float, dict[str, float]]:
    """``cuda_device_ms`` and, per kernel / copy / memset name, its device ms per call (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    per: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == cuda:
            per[e.name[:60]] = per.get(e.name[:60], 0.0) + e.time_range.elapsed_us() / reps / 1e3
    return sum(per.values()), per


def record_device_time(benchmark, fn) -> None:
    """``benchmark.extra_info["device_ms"]`` for a CUDA step (see ``cuda_device_ms``); the ratio table prints it."""
    if not benchmark.disabled:
        benchmark.extra_info["device_ms"] = cuda_device_ms(fn)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _ratio_table(terminalreporter, config)
    from tests import codegen

    if codegen.LAST_ROWS:
        terminalreporter.write_sep("=", "patchmix: Triton codegen audit (AOT, no GPU)")
        terminalreporter.write_line(codegen.table(codegen.LAST_ROWS))


def _ratio_table(terminalreporter, config):
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
        device_ms = (getattr(b, "extra_info", None) or {}).get("device_ms")
        rows.setdefault(b.group or b.fullname.split("[")[0], {})[provider] = (stats.median, device_ms)
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", "patchmix: ratios measured in this run (median times)")
    tr.write_line(
        f"{'group':<48} {'provider':<14} {'median ms':>10} {'x eager':>9} {'x floor':>9} {'x prealloc':>10} "
        f"{'device ms':>10} {'x floor':>9}"
    )
    for group, provs in sorted(rows.items()):
        eager = provs.get("eager", (None, None))[0]
        floor, floor_dev = next((provs[p] for p in provs if p in FLOORS), (None, None))
        prealloc = provs.get("prealloc_copy", (None, None))[0]
        for p, (t, dev) in sorted(provs.items(), key=lambda kv: kv[1][0]):
            speed = f"{eager / t:8.2f}x" if eager else "        -"
            vs_floor = f"{t / floor:8.2f}x" if floor else "        -"
            vs_prealloc = f"{t / prealloc:9.2f}x" if prealloc else "         -"
            dev_ms = f"{dev:10.4f}" if dev is not None else "         -"
            dev_floor = f"{dev / floor_dev:8.2f}x" if dev is not None and floor_dev else "        -"
            tr.write_line(f"{group:<48} {p:<14} {t * 1e3:>10.3f} {speed:>9} {vs_floor:>9} {vs_prealloc:>10} {dev_ms} "
                          f"{dev_floor:>9}")
    tr.write_line("x eager: speed-up over the eager reference; x floor: time over the bandwidth floor (lower is better);")
    tr.write_line("x prealloc: time over a copy into a preallocated buffer (the floor of grid_mix's out=)")
    tr.write_line("device ms (CUDA only): the GPU's own time per call (kernels + copies, from the profiler), and its ratio")
    tr.write_line("to the floor's device time: what a bandwidth target is about, without host launch overhead")
