"""patchmix::grid_mix: every backend against the reference, autograd, registration, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import patchmix
from patchmix.ops import check_errors, grid_mix, grid_mix_reference
from patchmix.ops.grid_mix import grid_mix_backward_reference, upsample_mask
from tests.conftest import devices, poison_like, triton_device, triton_launcher

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]


def make_inputs(B, C, H, W, P, N=None, dtype=torch.float32, device="cpu", channels_last=False, with_a=True, gen=None):
    N = B if N is None else N
    x = torch.rand(B, C, H, W, dtype=torch.float64, generator=gen) * 200
    x = x.to(dtype).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(N, P, P, generator=gen) < 0.5).to(device)
    index_a = torch.randint(0, B, (N,), generator=gen).to(device) if with_a else None
    index_b = torch.randint(0, B, (N,), generator=gen).to(device)
    return x, mask, index_a, index_b


def by_definition(x, mask, index_a, index_b):
    """The semantics (cell of pixel h: floor(h * P / H)) written as loops over pixels, float64: the reference's own check."""
    B, C, H, W = x.shape
    N, P = mask.shape[0], mask.shape[1]
    ia = range(N) if index_a is None else index_a.tolist()
    ib = index_b.tolist()
    out = torch.empty(N, C, H, W, dtype=torch.float64)
    lam = torch.empty(N, dtype=torch.float64)
    for n in range(N):
        count = 0
        for h in range(H):
            for w in range(W):
                a = bool(mask[n, h * P // H, w * P // W])
                count += a
                out[n, :, h, w] = x[ia[n] if a else ib[n], :, h, w].double()
        lam[n] = count / (H * W)
    return out, lam


CASES = [  # (B, C, H, W, P, N)
    (1, 1, 1, 1, 1, 1),
    (1, 3, 5, 7, 2, 1),
    (3, 2, 7, 5, 3, 3),
    (5, 3, 8, 8, 4, 5),
    (4, 3, 13, 11, 4, 7),  # N != B, uneven cells
    (2, 1, 9, 9, 9, 3),  # P == H == W
    (3, 4, 6, 10, 5, 0),  # empty
    (2, 3, 12, 16, 4, 3),  # Triton moves 4-byte words of uint8
    (1, 2, 8, 24, 3, 2),  # ... and 8-byte words
]


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_definition(case):
    B, C, H, W, P, N = case
    x, mask, ia, ib = make_inputs(B, C, H, W, P, N, dtype=torch.float64)
    out, lam = grid_mix_reference(x, mask, ia, ib)
    want, want_lam = by_definition(x, mask, ia, ib)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(lam.double(), want_lam, rtol=0, atol=1e-7)


def backends_to_test():
    """(name, callable, device) for every kernel: the dispatcher per device and the Triton launcher."""
    out = [(f"dispatch-{d}", torch.ops.patchmix.grid_mix, d) for d in devices()]
    out.append(("triton", "triton", triton_device()))
    return out


@pytest.mark.parametrize("backend,fn,device", backends_to_test(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_backend_matches_reference(backend, fn, device, case, dtype, channels_last):
    if fn == "triton":
        fn = triton_launcher("grid_mix")
    B, C, H, W, P, N = case
    for with_a in ([True, False] if N == B else [True]):
        x, mask, ia, ib = make_inputs(B, C, H, W, P, N, dtype=dtype, device=device,
                                      channels_last=channels_last, with_a=with_a)
        out, lam = fn(x, mask, ia, ib)
        ref, ref_lam = grid_mix_reference(x.cpu(), mask.cpu(), None if ia is None else ia.cpu(), ib.cpu())
        assert out.dtype == x.dtype and out.shape == (N, C, H, W) and out.device == x.device
        assert lam.dtype == torch.float32 and lam.shape == (N,)
        assert out.stride() == ref.stride(), "output must keep the input's memory format"
        # Exact: each element is a copy of one source element. Compared in float64.
        torch.testing.assert_close(out.cpu().double(), ref.double(), rtol=0, atol=0)
        torch.testing.assert_close(lam.cpu(), ref_lam, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (poisons the caching allocator)")
def test_cuda_output_fully_written():
    x, mask, ia, ib = make_inputs(6, 3, 37, 29, 4, 9, device="cuda")
    for _ in range(3):  # poison: fill the block the kernel will get from the caching allocator with NaN
        torch.full((9, 3, 37, 29), float("nan"), device="cuda")
        out, _ = grid_mix(x, mask, ia, ib)
        assert not torch.isnan(out).any()
        torch.testing.assert_close(out.cpu(), grid_mix_reference(x.cpu(), mask.cpu(), ia.cpu(), ib.cpu())[0])


def test_large_batch_parallel_path():
    # Large enough that at::parallel_for splits the rows over threads.
    x, mask, ia, ib = make_inputs(64, 3, 40, 36, 4, 96)
    out, lam = grid_mix(x, mask, ia, ib)
    ref, ref_lam = grid_mix_reference(x, mask, ia, ib)
    assert torch.equal(out, ref) and torch.equal(lam, ref_lam)


def test_non_contiguous_input_is_handled():
    x = torch.rand(4, 3, 16, 20)[:, :, ::2, 1:11]  # neither contiguous nor channels_last
    mask = torch.rand(4, 2, 2) < 0.5
    ib = torch.tensor([3, 2, 1, 0])
    out, lam = grid_mix(x, mask, None, ib)
    ref, ref_lam = grid_mix_reference(x.contiguous(), mask, None, ib)
    assert out.is_contiguous() and torch.equal(out, ref) and torch.equal(lam, ref_lam)


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 4), C=st.integers(1, 3), H=st.integers(1, 12), W=st.integers(1, 12),
    P=st.integers(1, 12), N=st.integers(0, 5), seed=st.integers(0, 2**31 - 1),
)
def test_property_pixels_come_from_sources_and_lam_is_mask_mean(B, C, H, W, P, N, seed):
    P = min(P, H, W)
    gen = torch.Generator().manual_seed(seed)
    x, mask, ia, ib = make_inputs(B, C, H, W, P, N, gen=gen)
    out, lam = grid_mix(x, mask, ia, ib)
    full = upsample_mask(mask, H, W)[:, None]
    from_a = out == x[ia]
    from_b = out == x[ib]
    assert bool((from_a | from_b).all()), "every output pixel equals one of its two sources"
    assert bool(torch.where(full, from_a, from_b).all()), "and the one the mask names"
    torch.testing.assert_close(lam, full.float().mean((1, 2, 3)) if N else lam, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# autograd, registration, compile
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
def test_gradcheck(device):
    x, mask, ia, ib = make_inputs(3, 2, 5, 7, 3, 4, dtype=torch.float64, device=device)
    ia[1] = ia[0]  # one image used several times: gradients must accumulate
    ib[2] = ia[0]
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: grid_mix(t, mask, ia, ib)[0], (x,))
    assert torch.autograd.gradgradcheck(lambda t: grid_mix(t, mask, ia, ib)[0], (x,))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradient_matches_reference_autograd(channels_last):
    x, mask, ia, ib = make_inputs(4, 3, 9, 7, 3, 6, channels_last=channels_last)
    ia[:] = 1  # every sample uses image 1 as source a
    g = torch.randn(6, 3, 9, 7)
    x1 = x.detach().clone().requires_grad_(True)
    grid_mix(x1, mask, ia, ib)[0].backward(g)
    x2 = x.detach().clone().requires_grad_(True)
    full = upsample_mask(mask, 9, 7)[:, None]
    torch.where(full, x2[ia], x2[ib]).backward(g)  # plain autograd of the definition
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_opcheck(device, dtype):
    x, mask, ia, ib = make_inputs(3, 2, 7, 5, 2, 4, dtype=dtype, device=device)
    if dtype.is_floating_point:
        x.requires_grad_(True)
    torch.library.opcheck(torch.ops.patchmix.grid_mix.default, (x, mask, ia, ib))
    x, mask, _, ib = make_inputs(3, 2, 7, 5, 2, dtype=dtype, device=device, channels_last=True)
    torch.library.opcheck(torch.ops.patchmix.grid_mix.default, (x, mask, None, ib))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(x, mask, ib):
        mixed, lam = grid_mix(x, mask, None, ib)
        return mixed * 2, lam

    x, mask, _, ib = make_inputs(3, 2, 7, 5, 2)
    out, lam = step(x, mask, ib)
    ref, ref_lam = grid_mix_reference(x, mask, None, ib)
    torch.testing.assert_close(out, ref * 2)
    torch.testing.assert_close(lam, ref_lam)


def test_torch_compile_inductor_with_backward():
    torch._dynamo.reset()
    x, mask, _, ib = make_inputs(3, 2, 8, 8, 4)
    x.requires_grad_(True)
    f = torch.compile(lambda t: grid_mix(t, mask, None, ib)[0].square().sum(), fullgraph=True)
    f(x).backward()
    x2 = x.detach().clone().requires_grad_(True)
    grid_mix_reference(x2, mask, None, ib)[0].square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_backends_report():
    info = patchmix.backends()
    assert info["ops"]["grid_mix"]["cpu"].startswith("C++"), info
    assert "Triton" in info["ops"]["grid_mix"]["cuda"]
    assert info["build"]["extension"] is True and "compiler" in info["build"] and "openmp" in info["build"]


def test_fallback_without_extension_warns_once_and_works():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import patchmix, patchmix.mixing.mixers\n"
        "msgs = [str(m.message) for m in w if 'patchmix._C' in str(m.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "info = patchmix.backends()\n"
        "assert info['ops']['grid_mix']['cpu'].startswith('reference'), info\n"
        "x = torch.rand(3, 2, 5, 5); m = torch.rand(3, 2, 2) < .5; ib = torch.tensor([2, 0, 1])\n"
        "out, lam = patchmix.ops.grid_mix(x, m, None, ib)\n"
        "ref, rl = patchmix.ops.grid_mix_reference(x, m, None, ib)\n"
        "assert torch.equal(out, ref) and torch.equal(lam, rl)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PATCHMIX_DISABLE_EXTENSION="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_cmake_library_registers_the_op():
    lib = ROOT / "build" / "cmake" / "libpatchmix_ops.so"
    if not lib.exists():
        pytest.skip("CMake build not present (./dev test builds it before the tests)")
    code = (
        "import torch\n"
        f"torch.ops.load_library({str(lib)!r})\n"
        "x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)\n"
        "m = torch.tensor([[[True, False], [False, True]]] * 2)\n"
        "out, lam = torch.ops.patchmix.grid_mix(x, m, None, torch.tensor([1, 0]))\n"
        "assert lam.tolist() == [0.5, 0.5] and out[0, 0, 0, 0] == 0 and out[0, 0, 0, 3] == 16 + 3\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument, before any kernel reads memory
# ------------------------------------------------------------------------------------------------

def _ok():
    return make_inputs(3, 2, 8, 8, 4)


BAD = {
    "x rank": (lambda x, m, a, b: (x[0], m, a, b), ValueError, r"x must have shape \(B, C, H, W\)"),
    "x dtype": (lambda x, m, a, b: (x.int(), m, a, b), ValueError, r"x has dtype torch.int32"),
    "mask dtype": (lambda x, m, a, b: (x, m.float(), a, b), ValueError, r"mask must be a bool tensor"),
    "mask shape": (lambda x, m, a, b: (x, m[:, :, :2], a, b), ValueError, r"mask must have shape \(N, P, P\)"),
    "P too large": (lambda x, m, a, b: (x, torch.ones(3, 9, 9, dtype=torch.bool), a, b), ValueError, r"grid size P = 9"),
    "P zero": (lambda x, m, a, b: (x, torch.ones(3, 0, 0, dtype=torch.bool), a, b), ValueError, r"grid size P = 0"),
    "index_b dtype": (lambda x, m, a, b: (x, m, a, b.int()), ValueError, r"index_b must be int64"),
    "index_a shape": (lambda x, m, a, b: (x, m, a[:2], b), ValueError, r"index_a must have shape \(N,\) = \(3,\)"),
    "index_a None N != B": (lambda x, m, a, b: (x, m[:2], None, b[:2]), ValueError, r"index_a is None"),
    "index_b high": (lambda x, m, a, b: (x, m, a, torch.tensor([0, 3, 1])), ValueError, r"index_b.* out of range for x with batch size B = 3"),
    "index_a negative": (lambda x, m, a, b: (x, m, torch.tensor([0, -1, 1]), b), ValueError, r"index_a.* out of range"),
    "device": (lambda x, m, a, b: (x, m.to("meta"), a, b), ValueError, r"mask is on meta but x is on cpu"),
    "not a tensor": (lambda x, m, a, b: (x.numpy(), m, a, b), TypeError, r"x must be a torch.Tensor"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_public(name):
    change, exc, msg = BAD[name]
    with pytest.raises(exc, match=msg):
        grid_mix(*change(*_ok()))


@pytest.mark.parametrize("name", ["x rank", "x dtype", "mask dtype", "mask shape", "P too large", "index_b dtype",
                                  "index_a shape", "index_a None N != B", "index_b high", "index_a negative"])
@pytest.mark.parametrize("kernel", ["cpp", "triton", "reference"])
def test_bad_input_each_kernel(name, kernel):
    """Callers that bypass the wrapper (torch.ops directly) get the same clear errors; the Triton launcher reports
    bad indices through the device status word instead (clamped reads, no host sync)."""
    change, exc, msg = BAD[name]
    fn = {"cpp": torch.ops.patchmix.grid_mix, "reference": grid_mix_reference}.get(kernel)
    if kernel == "triton":
        fn = triton_launcher("grid_mix")
        if name in ("index_b high", "index_a negative"):
            device = triton_device()
            check_errors(device)
            fn(*(t.to(device) for t in change(*_ok())))
            argument = name.split()[0]
            with pytest.raises(ValueError, match=rf"grid_mix: {argument} holds a value out of range .*detected on the device"):
                check_errors(device)
            return
    with pytest.raises(exc, match=msg):
        fn(*change(*_ok()))


# ------------------------------------------------------------------------------------------------
# out=: a preallocated (possibly pinned) buffer
# ------------------------------------------------------------------------------------------------


def out_backends():
    out = [(f"dispatch-{d}", None, d) for d in devices()]
    out.append(("triton", "triton", triton_device()))
    return out


@pytest.mark.parametrize("backend,fn,device", out_backends(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("case", [(3, 2, 7, 5, 3, 3), (4, 3, 13, 11, 4, 7), (2, 3, 12, 16, 4, 3), (3, 4, 6, 10, 5, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_out_matches_reference(backend, fn, device, case, dtype, channels_last):
    B, C, H, W, P, N = case
    x, mask, ia, ib = make_inputs(B, C, H, W, P, N, dtype=dtype, device=device, channels_last=channels_last)
    ref, ref_lam = grid_mix_reference(x.cpu(), mask.cpu(), ia.cpu(), ib.cpu())
    fmt = torch.channels_last if channels_last and C > 1 else torch.contiguous_format
    out = torch.empty((N, C, H, W), dtype=dtype, device=device, memory_format=fmt)
    poison_like(out)
    if fn == "triton":
        triton_launcher("grid_mix")  # skips without Triton
        from patchmix._kernels.grid_mix import grid_mix_out_cuda

        lam = grid_mix_out_cuda(x, mask, ia, ib, out)
        got = out
    else:
        got, lam = grid_mix(x, mask, ia, ib, out=out)
        assert got is out
    torch.testing.assert_close(out.cpu().double(), ref.double(), rtol=0, atol=0)
    torch.testing.assert_close(lam.cpu(), ref_lam, rtol=0, atol=0)
    assert got.data_ptr() == out.data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_out_into_pinned_buffer():
    x, mask, ia, ib = make_inputs(4, 3, 16, 16, 4, 6, dtype=torch.uint8)
    out = torch.empty((6, 3, 16, 16), dtype=torch.uint8, pin_memory=True)
    grid_mix(x, mask, ia, ib, out=out)
    assert out.is_pinned() and torch.equal(out, grid_mix_reference(x, mask, ia, ib)[0])


def test_out_opcheck_and_errors():
    x, mask, ia, ib = make_inputs(3, 2, 7, 5, 2, 4)
    out = torch.empty(4, 2, 7, 5)
    torch.library.opcheck(torch.ops.patchmix.grid_mix_out.default, (x, mask, ia, ib, out))
    with pytest.raises(ValueError, match=r"out must have shape \(N, C, H, W\) = \(4, 2, 7, 5\)"):
        grid_mix(x, mask, ia, ib, out=out[:3])
    with pytest.raises(ValueError, match="out has dtype torch.float64 but x has dtype torch.float32"):
        grid_mix(x, mask, ia, ib, out=out.double())
    with pytest.raises(ValueError, match="out must be contiguous like x"):
        grid_mix(x, mask, ia, ib, out=out.contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="out overlaps x"):
        grid_mix(x, mask[:3], ia[:3], ib[:3], out=x)
    with pytest.raises(ValueError, match="out= is not differentiable"):
        grid_mix(x.requires_grad_(), mask, ia, ib, out=out)


def test_out_compiles_fullgraph():
    torch._dynamo.reset()
    x, mask, ia, ib = make_inputs(3, 2, 8, 8, 4, 5)
    out = torch.empty(5, 2, 8, 8)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, out):
        return grid_mix(x, mask, ia, ib, out=out)[1] * 2

    lam = f(x, out)
    ref, ref_lam = grid_mix_reference(x, mask, ia, ib)
    assert torch.equal(out, ref) and torch.equal(lam, ref_lam * 2)


# ------------------------------------------------------------------------------------------------
# the backward op: a deterministic gather, one launch on CUDA
# ------------------------------------------------------------------------------------------------


def bwd_backends():
    out = [(f"dispatch-{d}", torch.ops.patchmix.grid_mix_backward, d) for d in devices()]
    out.append(("triton", "triton", triton_device()))
    return out


@pytest.mark.parametrize("backend,fn,device", bwd_backends(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("case", [(3, 2, 7, 5, 3, 4), (4, 3, 8, 8, 4, 4), (5, 1, 9, 13, 4, 9), (2, 2, 36, 40, 34, 3),
                                  (3, 3, 6, 6, 2, 0), (4, 2, 5, 5, 1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_backward_op_matches_reference(backend, fn, device, case, dtype, channels_last):
    if fn == "triton":
        from patchmix._kernels.grid_mix import grid_mix_backward_cuda as fn
    B, C, H, W, P, N = case
    g = torch.randn(N, C, H, W, dtype=torch.float64).to(dtype).to(device)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(N, P, P) < 0.5).to(device)
    with_a = N != B
    ia = torch.randint(0, B, (N,)).to(device) if with_a else None
    ib = torch.randint(0, B, (N,)).to(device)
    got = fn(g, mask, ia, ib, B)
    want = grid_mix_backward_reference(g.cpu(), mask.cpu(), None if ia is None else ia.cpu(), ib.cpu(), B)
    assert got.shape == want.shape and got.dtype == dtype and got.stride() == want.stride()
    # sums of up to N terms: the order differs from index_add's only beyond two contributions per pixel
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.cpu(), want, **tol)


def test_backward_op_opcheck_and_double_backward():
    _, mask, ia, ib = make_inputs(3, 2, 7, 5, 2, 4, dtype=torch.float64)
    g = torch.randn(4, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.patchmix.grid_mix_backward.default, (g, mask, ia, ib, 3))
    x = torch.rand(3, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: grid_mix(t, mask, ia, ib)[0], (x,))


def test_triton_empty_sources_never_read():
    """B = 0 sources (every index out of range) and C = 0 channels: nothing is copied or read, lam is still right,
    and B = 0 is reported."""
    launcher = triton_launcher("grid_mix")
    dev = triton_device()
    mask = (torch.rand(2, 2, 2) < 0.5).to(dev)
    idx = torch.zeros(2, dtype=torch.int64, device=dev)
    check_errors(dev)
    _, lam = launcher(torch.empty(0, 3, 8, 8, device=dev), mask, idx, idx)
    torch.testing.assert_close(lam.cpu(), mask.float().mean((1, 2)).cpu())
    with pytest.raises(ValueError, match="index_b holds a value out of range"):
        check_errors(dev)
    out, lam = launcher(torch.empty(2, 0, 8, 8, device=dev), mask, idx, idx)
    assert out.shape == (2, 0, 8, 8)
    torch.testing.assert_close(lam.cpu(), mask.float().mean((1, 2)).cpu())
    check_errors(dev)
