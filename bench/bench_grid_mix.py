"""Throughput of grid_mix beside the eager reference, torch.compile of it, Kornia's CutMix and the floor.

Floor: composition must read N*C*H*W elements once and write them once: the bytes of ``x.clone()`` (on CUDA a
device-to-device copy). ``prealloc_copy`` copies into an output that already exists: on the CPU a fresh 154 MB
output costs more in page faults than the copy itself (the kernel asks for huge pages); ``patchmix_out`` is
``grid_mix(..., out=)`` into a preallocated buffer, its like-for-like comparison.

Targets. CPU (2 cores): at 256x3x224x224 float32 ``grid_mix`` at most 0.6x ``x.clone()`` and at least 4x faster
than eager; ``patchmix_out`` at 256x3x224x224 float32 and uint8 at most 1.5x ``prealloc_copy``; at 256x3x32x32
float32 ``grid_mix`` at most 2x ``x.clone()``. CUDA (device time from the profiler): at least 80% of a
device-to-device copy's bandwidth at 256x3x224x224 float32, uint8 and channels_last, at least 60% at
256x3x32x32 float32, counting all device work of the call. ``./dev bench -k grid_mix`` prints the ratio table.
"""

import pytest
import torch

from bench.conftest import record_device_time
from patchmix.ops import grid_mix
from patchmix.ops.grid_mix import grid_mix_compose, grid_mix_reference
from tests.conftest import devices

SHAPES = [  # (B, C, H, W, dtype, channels_last)
    (256, 3, 32, 32, torch.float32, False),
    (256, 3, 224, 224, torch.float32, False),
    (256, 3, 224, 224, torch.uint8, False),
    (256, 3, 224, 224, torch.float32, True),  # CUDA only (its target); the CPU kernel is layout-agnostic
]
PROVIDERS = ["patchmix", "patchmix_out", "eager", "compiled", "kornia", "clone", "prealloc_copy"]
_compiled = {}


def _kornia_cutmix():
    try:
        from kornia.augmentation import RandomCutMixV2
    except Exception:  # optional peer: not installed, or does not import beside this torch
        return None
    return RandomCutMixV2(p=1.0, data_keys=["input", "class"])


def label(shape) -> str:
    B, C, H, W, dtype, channels_last = shape
    return f"{B}x{C}x{H}x{W} {str(dtype)[6:]}{' CL' if channels_last else ''}"


def make(shape, device):
    B, C, H, W, dtype, channels_last = shape
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, C, H, W, generator=g) * 255).to(dtype).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(B, 4, 4, generator=g) < 0.5).to(device)
    perm = torch.randperm(B, generator=g).to(device)
    return x, mask, perm


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: label(s).replace(" ", "-"))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_grid_mix(benchmark, provider, shape, device):
    if shape[5] and device != "cuda":
        pytest.skip("channels_last is a CUDA target (the CPU kernel copies rows the same way in either layout)")
    x, mask, perm = make(shape, device)
    arange = torch.arange(x.shape[0], device=device)
    if provider == "patchmix":
        fn = lambda: grid_mix(x, mask, None, perm)  # noqa: E731
    elif provider == "patchmix_out":
        out = torch.empty_like(x)
        fn = lambda: grid_mix(x, mask, None, perm, out=out)  # noqa: E731
    elif provider == "eager":
        fn = lambda: grid_mix_reference(x, mask, None, perm)  # noqa: E731
    elif provider == "compiled":
        key = (shape, device)
        if key not in _compiled:
            torch._dynamo.reset()
            _compiled[key] = torch.compile(grid_mix_compose, dynamic=False)
        compiled = _compiled[key]
        fn = lambda: compiled(x, mask, arange, perm)  # noqa: E731
    elif provider == "kornia":
        cutmix = _kornia_cutmix()
        if cutmix is None or not x.is_floating_point():
            pytest.skip("kornia not importable, or its CutMix takes floating images only")
        labels = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        fn = lambda: cutmix(x, labels)  # noqa: E731
    elif provider == "clone":
        fn = x.clone
    else:  # the copy alone, into memory already faulted in: what bandwidth allows without allocation
        buf = torch.empty_like(x)
        fn = lambda: buf.copy_(x)  # noqa: E731

    if device == "cuda":
        run = fn
        def fn():  # noqa: F811 - time the kernels, not the launch
            out = run()
            torch.cuda.synchronize()
            return out

    fn()  # warm-up (compilation, first-touch of the output pages)
    if provider in ("patchmix", "patchmix_out", "eager", "compiled"):
        out, lam = fn()
        ref, ref_lam = grid_mix_reference(x, mask, None, perm)
        assert torch.equal(out, ref) and torch.equal(lam, ref_lam)
    moved = 2 * x.numel() * x.element_size()
    benchmark.group = f"grid_mix {device} {label(shape)}"
    benchmark.extra_info["bytes_floor"] = moved
    if device == "cuda":
        record_device_time(benchmark, fn)
    benchmark(fn)
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.median / 1e9
