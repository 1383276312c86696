"""Forward + backward of the PatchMix loss: the fused op beside the eager reference and torch.compile of it.

Workload: ``N = 256`` samples, ``P = 4`` (16 patches), ``K in {10, 100, 1000}``, float32 image logits
``(N, K)`` and patch logits in the head's natural ``(N, K, P, P)`` layout, Random-PatchMix targets, default
weights, ``reduction="mean"``; one step is ``loss = f(...); loss.backward()``.

Floor: the fused op must read the logits once and write their gradient once, the bytes of ``logits.clone()``
(provider ``clone``). ``extra_info`` records that floor, the peak memory allocated during one step, and the
largest single allocation (the fused op's largest is the gradient itself: no intermediate larger than the
logits). Targets: on the 2-core CPU at ``K = 1000`` at least 4x faster than eager and 1.5x faster than compiled;
on CUDA (device time from the profiler, forward and backward) at most 1.5x the clone floor at ``K = 1000`` and
2x at ``K = 10`` and ``100``. ``./dev bench -k patchmix_cross_entropy`` prints the ratio table.
"""

import pytest
import torch

from bench.conftest import record_device_time
from patchmix.ops import patchmix_cross_entropy, patchmix_cross_entropy_eager
from tests.conftest import devices

N, P = 256, 4
CLASSES = [10, 100, 1000]
PROVIDERS = ["patchmix", "eager", "compiled", "clone"]
_compiled = {}


def make(K, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    image = (torch.randn(N, K, generator=g) * 2).to(device, dtype).requires_grad_()
    patch = (torch.randn(N, K, P, P, generator=g) * 2).to(device, dtype).requires_grad_()
    target_a = torch.randint(K, (N,), generator=g).to(device)
    target_b = target_a[torch.randperm(N, generator=g)]
    mask = (torch.rand(N, P, P, generator=g) < torch.rand(N, 1, 1, generator=g)).to(device)
    lam = mask.flatten(1).float().mean(1)
    return image, patch, target_a, target_b, lam, mask


def _compiled_eager(device):
    if device not in _compiled:
        # dynamic=None: the second K recompiles once with a dynamic K, the third reuses it
        _compiled[device] = torch.compile(patchmix_cross_entropy_eager)
    return _compiled[device]


def _cpu_peak_and_largest(step) -> tuple[int, int]:
    """Peak of live bytes allocated during ``step()`` and the largest allocation, from the profiler's per-op
    memory accounting (CPU tensors have no allocator statistics; op granularity, so approximate)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = largest = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
        largest = max(largest, e.self_cpu_memory_usage)
    return peak, largest


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("K", CLASSES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_patchmix_cross_entropy(benchmark, provider, K, device):
    image, patch, ta, tb, lam, mask = make(K, device)
    if provider == "patchmix":
        loss_fn = patchmix_cross_entropy
    elif provider == "eager":
        loss_fn = patchmix_cross_entropy_eager
    elif provider == "compiled":
        loss_fn = _compiled_eager(device)

    if provider == "clone":
        def step():
            return image.detach().clone(), patch.detach().clone()
    else:
        def step():
            image.grad = patch.grad = None
            loss = loss_fn(image, patch, ta, tb, lam, mask)
            loss.backward()
            return loss

    fn = step
    if device == "cuda":
        def fn():  # time the kernels, not the launch
            out = step()
            torch.cuda.synchronize()
            return out

    fn()  # warm-up: compilation, first touch of the gradient pages
    if provider != "clone":  # every provider computes the same loss and gradients
        loss = fn()
        gi, gp = image.grad.clone(), patch.grad.clone()
        image.grad = patch.grad = None
        ref = patchmix_cross_entropy_eager(image, patch, ta, tb, lam, mask)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gi, image.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gp, patch.grad, rtol=1e-4, atol=1e-6)
        assert gp.stride() == patch.stride()

    logits_bytes = (image.numel() + patch.numel()) * image.element_size()
    benchmark.group = f"patchmix_cross_entropy {device} N={N} P*P={P * P} K={K} float32"
    benchmark.extra_info["bytes_floor"] = 2 * logits_bytes  # one read + one write of the logits
    benchmark.extra_info["logits_bytes"] = logits_bytes
    if not benchmark.disabled:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            benchmark.extra_info["peak_bytes_above_inputs"] = torch.cuda.max_memory_allocated() - base
        else:
            peak, largest = _cpu_peak_and_largest(fn)
            benchmark.extra_info["peak_bytes_allocated"] = peak
            benchmark.extra_info["largest_allocation_bytes"] = largest
            benchmark.extra_info["largest_over_patch_logits"] = largest / (patch.numel() * patch.element_size())
    if device == "cuda":
        record_device_time(benchmark, fn)
    benchmark(fn)
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s_vs_floor"] = 2 * logits_bytes / benchmark.stats.stats.median / 1e9
