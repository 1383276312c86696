"""One training step of ResNet-32 at batch 128 (3x32x32, 10 classes): Random PatchMix (mix with ``grid_mix``,
patch head, fused ``PatchMixLoss``) against the same step without mixing (image logits, plain cross-entropy).

Targets: on the 2-core CPU the PatchMix step costs at most 10% more than the plain step; on CUDA (channels_last)
at most 5% more, with no host sync in the step. Both providers run in the same session; the table ends with
the measured overhead ratio.

    ./dev bench -k train_step                       # pytest-benchmark table + ratio
    .venv/bin/python bench/bench_train_step.py      # interleaved rounds, prints ms/step and the ratio
    .venv/bin/python bench/bench_train_step.py --device cuda --amp --channels-last

With ``--benchmark-disable`` (CI) each provider runs one step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F

try:  # under pytest the benchmark conftest sets the Triton interpreter rule before patchmix is imported
    from tests.conftest import devices
except ImportError:  # run as a script from anywhere
    def devices():
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

BATCH, SIZE, CLASSES, GRID = 128, 32, 10, 4
PROVIDERS = ["plain", "patchmix"]
_medians: dict = {}


def make_step(provider: str, device: str = "cpu", amp: bool = False, channels_last: bool = False, seed: int = 0):
    """A closure running one optimizer step of ResNet-32 (patch head included in both providers)."""
    from patchmix import RandomPatchMix
    from patchmix.losses import PatchMixLoss
    from patchmix.models import create_model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = create_model("resnet32", CLASSES, grid_size=GRID, in_channels=3).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)
    mixer = RandomPatchMix(GRID, 1.0, generator=g)
    loss_fn = PatchMixLoss()
    use_amp = amp and device.startswith("cuda")
    dtype = torch.bfloat16

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=use_amp):
            if provider == "patchmix":
                batch = mixer(x, y)
                out = model(batch.images)
                loss = loss_fn(out, batch)
            else:
                out = model(x)
                loss = F.cross_entropy(out[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(benchmark, provider, device):
    benchmark.group = f"train_step resnet32 b{BATCH} {device}"
    step = make_step(provider, device)

    def run():
        loss = step()
        _sync(device)
        return loss

    # disabled (CI): one step; enabled: one warm-up step (allocator, first-call dispatch), then 5 timed rounds
    loss = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert torch.isfinite(loss)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not benchmark.disabled:
        _medians[(device, provider)] = stats.stats.median
        if (device, "plain") in _medians and (device, "patchmix") in _medians:
            ratio = _medians[(device, "patchmix")] / _medians[(device, "plain")]
            benchmark.extra_info["overhead_vs_plain"] = ratio
            print(f"\n[train_step {device}] patchmix / plain = {ratio:.3f} (target <= 1.10)")


def measure(device: str = "cpu", rounds: int = 10, amp: bool = False, channels_last: bool = False) -> dict:
    """Interleaved rounds of both steps (so machine load hits both alike); medians in ms and the ratio."""
    steps = {p: make_step(p, device, amp, channels_last) for p in PROVIDERS}
    for s in steps.values():
        s()
        s()
    times = {p: [] for p in PROVIDERS}
    for _ in range(rounds):
        for p, s in steps.items():
            _sync(device)
            t = time.perf_counter()
            s()
            _sync(device)
            times[p].append(time.perf_counter() - t)
    med = {p: 1e3 * statistics.median(v) for p, v in times.items()}
    return {"device": device, "rounds": rounds, "threads": torch.get_num_threads(), "plain_ms": med["plain"],
            "patchmix_ms": med["patchmix"], "ratio": med["patchmix"] / med["plain"],
            "plain_min_ms": 1e3 * min(times["plain"]), "patchmix_min_ms": 1e3 * min(times["patchmix"]),
            "ratio_min": min(times["patchmix"]) / min(times["plain"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = measure(a.device, a.rounds, a.amp, a.channels_last)
    print(f"ResNet-32, batch {BATCH}, {SIZE}x{SIZE}, {a.device}, {r['threads']} threads, {a.rounds} interleaved rounds"
          f"{', amp' if a.amp else ''}{', channels_last' if a.channels_last else ''}")
    print(f"  plain step    median {r['plain_ms']:8.1f} ms  (min {r['plain_min_ms']:.1f})")
    print(f"  PatchMix step median {r['patchmix_ms']:8.1f} ms  (min {r['patchmix_min_ms']:.1f})")
    print(f"  overhead ratio {r['ratio']:.3f} of medians, {r['ratio_min']:.3f} of minima  (target <= 1.10; on a busy "
          "machine the minima are the steadier figure)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
    sys.exit(main())
