"""The shared data checks (``patchmix.ops._checks``): one host read per op, device asserts under graph capture."""

import math

import pytest
import torch

from patchmix.ops import _checks, grid_mix, patchmix_cross_entropy
from patchmix.ops._checks import Range, check_ranges, value_ranges
from tests.conftest import triton_device, triton_launcher


@pytest.mark.parametrize("sizes", [(1,), (5, 1), (1023, 1024, 1025), (3000, 0), (0,)])
def test_value_ranges_kernel_matches_torch(sizes):
    """The Triton kernel (interpreted without a GPU) against the PyTorch path: ints, floats with NaN, empty,
    single elements, lengths around the 1024-element block."""
    kernel = triton_launcher("value_ranges")
    dev = triton_device()
    g = torch.Generator().manual_seed(sum(sizes))
    tensors = []
    for k, n in enumerate(sizes):
        if k % 2 == 0:
            tensors.append(torch.randint(-(2**40), 2**40, (n,), generator=g).to(dev))
        else:
            t = torch.rand(n, generator=g, dtype=torch.float64) * 3 - 1
            t[:: 7] = math.nan
            tensors.append(t.to(dev))
    got = kernel(tensors)
    assert [(g[2], *(() if g[2] else g[:2])) for g in got] == [
        (w[2], *(() if w[2] else w[:2])) for w in value_ranges([t.cpu() for t in tensors])
    ]  # NaN != NaN: compare the flags, and the bounds where there is no NaN
    for t, (lo, hi, has_nan) in zip(tensors, got, strict=True):
        t = t.cpu().double()
        assert has_nan == bool(t.isnan().any())
        if has_nan:
            assert math.isnan(lo) and math.isnan(hi)
        else:
            assert (lo, hi) == ((t.min().item(), t.max().item()) if t.numel() else (math.inf, -math.inf))


def test_value_ranges_multidimensional_and_strided():
    kernel = triton_launcher("value_ranges")
    t = torch.arange(24).reshape(2, 3, 4).transpose(0, 2).to(triton_device())  # not contiguous
    assert kernel([t]) == [(0.0, 23.0, False)] == value_ranges([t.cpu()])


def test_check_ranges_names_first_bad_tensor_and_value():
    ok = torch.tensor([0, 1, 2])
    bad = torch.tensor([0, 5, 1])
    with pytest.raises(ValueError, match=r"^myop: b holds 5, out of range for B = 3 \(expected 0 <= b < 3\)$"):
        check_ranges("myop", [Range("a", ok, 0, 2, "for B = 3"), Range("b", bad, 0, 2, "for B = 3")])
    with pytest.raises(ValueError, match=r"^myop: w holds nan, outside \[0, 1\]$"):
        check_ranges("myop", [Range("w", torch.tensor([0.5, math.nan]), 0.0, 1.0)])
    with pytest.raises(ValueError, match=r"^myop: w holds -0.5, outside"):
        check_ranges("myop", [Range("w", torch.tensor([-0.5, 0.25]), 0.0, 1.0)])
    check_ranges("myop", [Range("a", ok, 0, 2, "x"), Range("e", torch.empty(0, dtype=torch.long), 0, 0, "x")])


def test_one_host_read_per_op(monkeypatch):
    """grid_mix and the loss read their data with one ``tolist`` each (on CUDA: one sync)."""
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real(self))
    x = torch.rand(4, 3, 8, 8)
    perm = torch.tensor([1, 0, 3, 2])
    grid_mix(x, torch.rand(4, 2, 2) < 0.5, perm, perm.flip(0))
    assert len(reads) == 1
    reads.clear()
    patchmix_cross_entropy(torch.randn(4, 5), torch.randn(4, 5, 2, 2), perm, perm, torch.rand(4), torch.rand(4, 2, 2) < 0.5)
    assert len(reads) == 1


def test_graph_capture_uses_device_asserts(monkeypatch):
    """While a CUDA graph is captured the host may not read the device: the checks become
    ``torch._assert_async`` (which raises at once on the CPU, where this test runs) and read nothing."""
    monkeypatch.setattr(_checks, "capturing", lambda t: True)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("host read during capture"))
    check_ranges("myop", [Range("a", torch.tensor([0, 1]), 0, 1, "x")])
    with pytest.raises(RuntimeError, match=r"myop: b holds a value out of range for B = 2 \(expected 0 <= b < 2\) \(checked on the device"):
        check_ranges("myop", [Range("a", torch.tensor([0, 1]), 0, 1, "x"),
                              Range("b", torch.tensor([0, 2]), 0, 1, "for B = 2")])
    with pytest.raises(RuntimeError, match="lam holds a value outside"):
        check_ranges("myop", [Range("lam", torch.tensor([math.nan]), 0.0, 1.0)])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_inputs(g):
    x = torch.rand(6, 3, 10, 10, device="cuda", generator=g)
    mask = torch.rand(6, 2, 2, device="cuda", generator=g) < 0.5
    ib = torch.randperm(6, device="cuda", generator=g)
    logits = torch.randn(6, 5, device="cuda", generator=g)
    patch = torch.randn(6, 5, 2, 2, device="cuda", generator=g)
    labels = torch.randint(5, (6,), device="cuda", generator=g)
    return x, mask, ib, logits, patch, labels


def _step(x, mask, ib, logits, patch, labels):
    out, lam = grid_mix(x, mask, None, ib)
    loss = patchmix_cross_entropy(logits, patch, labels, labels[ib], lam, mask)
    return out, lam, loss


def _reference(x, mask, ib, logits, patch, labels):
    from patchmix.ops import grid_mix_reference, patchmix_cross_entropy_reference

    out, lam = grid_mix_reference(x, mask, None, ib)
    return out, lam, patchmix_cross_entropy_reference(logits, patch, labels, labels[ib], lam, mask)


@needs_cuda
def test_cuda_graph_capture_and_replay():
    """grid_mix and the loss inside ``torch.cuda.graph``: captured without a host read, replayed on new data."""
    g = torch.Generator("cuda").manual_seed(0)
    inputs = _cuda_inputs(g)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles) off the capture, as torch.cuda.graph asks
        for _ in range(2):
            _step(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _step(*inputs)
    for t, new in zip(inputs, _cuda_inputs(g), strict=True):  # new data in the captured buffers
        t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, _reference(*inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_compile_reduce_overhead():
    g = torch.Generator("cuda").manual_seed(1)
    step = torch.compile(_step, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replay
        inputs = _cuda_inputs(g)
        for got, want in zip(step(*inputs), _reference(*inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
