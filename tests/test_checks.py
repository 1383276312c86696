"""Data checks: the host checks of CPU tensors (``contracts._common``), and the device status word through which the
CUDA kernels report bad data without a host sync (``patchmix.ops.errors``)."""

import math

import pytest
import torch

from patchmix.ops import _extension, check_errors, errors, grid_mix, patchmix_cross_entropy
from patchmix.ops.contracts import _common
from patchmix.ops.contracts._common import Range, check_ranges


@pytest.mark.skipif(_extension.C is None, reason="the C++ extension is not built")
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float32, torch.float64, torch.float16])
def test_cpp_check_range_finds_the_first_value_outside(dtype):
    check = _extension.C.check_range
    t = torch.tensor([0, 3, 1, 2], dtype=dtype)
    assert check(t, 0, 3) is None
    assert check(t, 0, 2) == 3.0
    assert check(t, 1, 3) == 0.0
    assert check(t[:0], 0, 0) is None
    assert check(t.view(2, 2).t(), 0, 2) == 3.0  # not contiguous
    if dtype.is_floating_point:
        t[2] = math.nan
        assert math.isnan(check(t, -10, 10))


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


def test_torch_path_without_extension(monkeypatch):
    monkeypatch.setattr(_extension, "C", None)
    with pytest.raises(ValueError, match=r"^myop: b holds 5, out of range"):
        check_ranges("myop", [Range("b", torch.tensor([0, 5]), 0, 2, "for B = 3")])
    with pytest.raises(ValueError, match=r"w holds nan"):
        check_ranges("myop", [Range("w", torch.tensor([0.5, math.nan]), 0.0, 1.0)])


def test_one_host_read_per_tensor_on_the_cpu(monkeypatch):
    """CPU wrappers check each index/label tensor once, through the extension (no tolist/item of a result)."""
    reads = []
    for name in ("tolist", "item"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, real=real: reads.append(1) or real(self))
    x = torch.rand(4, 3, 8, 8)
    perm = torch.tensor([1, 0, 3, 2])
    grid_mix(x, torch.rand(4, 2, 2) < 0.5, perm, perm.flip(0))
    patchmix_cross_entropy(torch.randn(4, 5), torch.randn(4, 5, 2, 2), perm, perm, torch.rand(4), torch.rand(4, 2, 2) < 0.5)
    assert reads == [] or _extension.C is None


def test_graph_capture_uses_device_asserts(monkeypatch):
    """While a CUDA graph is captured the host may not read the device: the references' checks become
    ``torch._assert_async`` (which raises at once on the CPU, where this test runs) and read nothing."""
    monkeypatch.setattr(_common, "capturing", lambda t: True)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("host read during capture"))
    check_ranges("myop", [Range("a", torch.tensor([0, 1]), 0, 1, "x")])
    with pytest.raises(RuntimeError, match=r"myop: b holds a value out of range for B = 2 \(expected 0 <= b < 2\) \(checked on the device"):
        check_ranges("myop", [Range("a", torch.tensor([0, 1]), 0, 1, "x"),
                              Range("b", torch.tensor([0, 2]), 0, 1, "for B = 2")])


# --------------------------------------------------------------------------------------------------
# the device status word
# --------------------------------------------------------------------------------------------------


def test_codes_are_distinct_bits_with_messages():
    bits = [errors.code(op, arg) for op, arg, _ in errors.CODES]
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
    both = errors.code("grid_mix", "index_a") | errors.code("patchmix_cross_entropy", "lam")
    msg = errors.message(both)
    assert msg.startswith("grid_mix: index_a holds a value out of range (expected 0 <= index_a < B")
    assert "patchmix_cross_entropy: lam holds a value out of range (expected 0 <= lam <= 1; detected on the device)" in msg
    with pytest.raises(KeyError):
        errors.code("grid_mix", "nothing")


def test_check_errors_reads_raises_and_resets():
    check_errors("cpu")
    status = errors.status("cpu")
    status |= errors.code("population_fitness", "draws")
    with pytest.raises(ValueError, match=r"^population_fitness: draws holds a value out of range"):
        check_errors()
    assert int(status.item()) == 0
    check_errors()


class _FakeEvent:
    done = False

    def record(self):
        pass

    def query(self):
        return _FakeEvent.done


def test_snapshot_surfaces_an_error_at_a_later_call_without_a_sync(monkeypatch):
    """Every SNAPSHOT_EVERY-th call queues a copy of the status word; a later call raises once it has landed.
    (The CPU stands in for a CUDA device here: the logic is the same, the event is faked.)"""
    monkeypatch.setattr(errors, "_asynchronous", lambda device: True)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("poll must not read the device"))
    dev = torch.device("cpu")
    status = errors.status(dev)
    status.zero_()
    state = errors._STATES[dev]
    state.event, state.calls = None, 0
    status |= errors.code("grid_mix", "index_b")
    for _ in range(errors.SNAPSHOT_EVERY):
        errors.poll(dev)
        errors.launched(dev)
    assert state.event is not None
    errors.poll(dev)  # not landed yet: nothing happens
    _FakeEvent.done = True
    try:
        with pytest.raises(ValueError, match=r"grid_mix: index_b holds a value out of range"):
            errors.poll(dev)
    finally:
        _FakeEvent.done = False
    assert state.event is None and int(status[0]) == 0


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
    # target_b is not labels[ib]: PyTorch's indexing asserts on the device for the bad index the graph test plants
    out, lam = grid_mix(x, mask, None, ib)
    loss = patchmix_cross_entropy(logits, patch, labels, labels.flip(0), lam, mask)
    return out, lam, loss


def _reference(x, mask, ib, logits, patch, labels):
    from patchmix.ops import grid_mix_reference, patchmix_cross_entropy_eager

    out, lam = grid_mix_reference(x, mask, None, ib)
    return out, lam, patchmix_cross_entropy_eager(logits, patch, labels, labels.flip(0), lam, mask)


@needs_cuda
def test_cuda_graph_capture_and_replay():
    """grid_mix and the loss inside ``torch.cuda.graph``: captured without a host read, replayed on new data; bad
    data in a replay is reported by check_errors."""
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
    check_errors()
    inputs[2][0] = 6  # an index out of range in the captured buffer
    graph.replay()
    with pytest.raises(ValueError, match="grid_mix: index_b holds a value out of range"):
        check_errors()


@needs_cuda
def test_compile_reduce_overhead():
    g = torch.Generator("cuda").manual_seed(1)
    step = torch.compile(_step, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replay
        inputs = _cuda_inputs(g)
        for got, want in zip(step(*inputs), _reference(*inputs), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    check_errors()
