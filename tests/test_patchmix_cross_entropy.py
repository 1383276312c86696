"""patchmix_cross_entropy: every backend against a float64 reference built from torch.nn.functional.

The reference here is independent of the package's own: ``F.log_softmax`` with an explicit soft target for
the image, ``F.cross_entropy`` on the ``(N*P*P, K)`` patch rows (patch ``r * P + c``), differentiated by autograd.
"""

import pytest
import torch
import torch.nn.functional as F

from patchmix.ops import (
    check_errors,
    patchmix_cross_entropy,
    patchmix_cross_entropy_eager,
    patchmix_cross_entropy_reference,
)
from tests.conftest import devices, patchmix, triton_device, triton_launcher

OP = torch.ops.patchmix.patchmix_cross_entropy


# --------------------------------------------------------------------------------------------------
# inputs and the float64 reference
# --------------------------------------------------------------------------------------------------


def make(N, K, P, *, layout="nkpp", dtype=torch.float32, device="cpu", scale=3.0, image=True, patch=True):
    """Random logits (image ``(N, K)``, patch ``(N, K, P, P)`` or ``(N, P*P, K)``), labels, lam, mask."""
    img = (torch.randn(N, K, dtype=torch.float64) * scale).to(device, dtype) if image else None
    pat = None
    if patch:
        shape = (N, K, P, P) if layout == "nkpp" else (N, P * P, K)
        pat = (torch.randn(shape, dtype=torch.float64) * scale).to(device, dtype)
    ta = torch.randint(K, (N,), device=device)
    tb = torch.randint(K, (N,), device=device)
    mask = torch.rand(N, P, P, device=device) < 0.5
    lam = torch.rand(N, device=device)
    return img, pat, ta, tb, lam, mask


def patch_rows(pat):
    """(N, P*P, K) rows of either layout, patch r * P + c."""
    if pat.dim() == 3:
        return pat
    N, K = pat.shape[:2]
    return pat.permute(0, 2, 3, 1).reshape(N, pat.shape[2] * pat.shape[3], K)


def f64_loss(img, pat, ta, tb, lam, mask, image_weight=0.5, patch_weight=0.5, label_smoothing=0.0, reduction="mean"):
    iw, pw, eps = image_weight, patch_weight, label_smoothing
    ref = img if img is not None else pat
    N = ref.shape[0]
    loss = torch.zeros(N, dtype=torch.float64, device=ref.device)
    if img is not None:
        K = img.shape[1]
        soft = lam.double()[:, None] * F.one_hot(ta, K) + (1 - lam.double())[:, None] * F.one_hot(tb, K)
        soft = soft * (1 - eps) + eps / K
        loss = loss + iw * -(soft * F.log_softmax(img.double(), -1)).sum(-1)
    if pat is not None:
        rows = patch_rows(pat.double())
        K, PP = rows.shape[2], rows.shape[1]
        labels = torch.where(mask.flatten(1), ta[:, None], tb[:, None])
        ce = F.cross_entropy(rows.reshape(-1, K), labels.reshape(-1), label_smoothing=eps, reduction="none")
        loss = loss + pw / PP * ce.view(N, PP).sum(1)
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


def f64_loss_and_grads(img, pat, ta, tb, lam, mask, grad_out=None, **kw):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (img, pat)]
    loss = f64_loss(leaves[0], leaves[1], ta, tb, lam, mask, **kw)
    if grad_out is None:
        grad_out = torch.ones_like(loss)
    loss.backward(grad_out.double())
    return loss.detach(), [t.grad if t is not None else None for t in leaves]


def run(fn, img, pat, ta, tb, lam, mask, grad_out=None, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (img, pat)]
    loss = fn(leaves[0], leaves[1], ta, tb, lam, mask, **kw)
    if grad_out is None:
        grad_out = torch.ones_like(loss)
    loss.backward(grad_out)
    return loss.detach(), [t.grad if t is not None else None for t in leaves]


def assert_matches(got, want, rtol=1e-5, atol=1e-6):
    (loss, grads), (ref_loss, ref_grads) = got, want
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads, strict=True):
        if r is None:
            assert g is None
            continue
        torch.testing.assert_close(g.double(), r, rtol=rtol, atol=atol)


# (N, K, P, layout, reduction, image_weight, patch_weight, label_smoothing): sparse over the grid
CASES = [
    (7, 10, 4, "nkpp", "mean", 0.5, 0.5, 0.0),
    (7, 10, 4, "npk", "mean", 0.5, 0.5, 0.0),
    (5, 2, 1, "nkpp", "sum", 0.3, 0.7, 0.1),
    (1, 1000, 2, "npk", "none", 0.5, 0.5, 0.2),
    (9, 100, 8, "nkpp", "mean", 1.0, 0.0, 0.0),
    (3, 37, 3, "nkpp", "none", 0.0, 1.0, 0.1),
    (6, 1000, 5, "nkpp", "sum", 0.5, 0.5, 0.05),
    (4, 13, 6, "npk", "mean", 2.0, 1.0, 0.0),
    (2, 3, 7, "nkpp", "none", 0.5, 0.5, 1.0),
    (11, 64, 4, "npk", "sum", 0.5, 0.5, 0.0),
    (301, 50, 2, "nkpp", "none", 0.5, 0.5, 0.1),  # several parallel_for chunks
]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_float64_reference(case, device):
    N, K, P, layout, reduction, iw, pw, eps = case
    inputs = make(N, K, P, layout=layout, device=device)
    kw = dict(image_weight=iw, patch_weight=pw, label_smoothing=eps, reduction=reduction)
    grad_out = torch.rand(N, device=device) if reduction == "none" else None
    want = f64_loss_and_grads(*inputs, grad_out=grad_out, **kw)
    assert_matches(run(patchmix_cross_entropy, *inputs, grad_out=grad_out, **kw), want)
    # the package's autograd reference agrees too (it is the benchmarks' eager baseline)
    assert_matches(run(patchmix_cross_entropy_eager, *inputs, grad_out=grad_out, **kw), want)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grad_output_scales_saved_gradient(reduction, device):
    inputs = make(5, 12, 2, device=device)
    g = torch.tensor(0.37, device=device) if reduction != "none" else torch.randn(5, device=device)
    want = f64_loss_and_grads(*inputs, grad_out=g, reduction=reduction)
    assert_matches(run(patchmix_cross_entropy, *inputs, grad_out=g, reduction=reduction), want)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["nkpp", "npk"])
@pytest.mark.parametrize("which", ["image", "patch"])
def test_one_term_only(which, layout, device):
    img, pat, ta, tb, lam, mask = make(6, 9, 3, layout=layout, device=device)
    if which == "image":
        pat, mask = None, None
    else:
        img = None
    for reduction in ("mean", "none"):
        want = f64_loss_and_grads(img, pat, ta, tb, lam, mask, reduction=reduction)
        assert_matches(run(patchmix_cross_entropy, img, pat, ta, tb, lam, mask, reduction=reduction), want)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("N", [0, 1])
def test_tiny_batches(N, device):
    inputs = make(N, 5, 2, device=device)
    for reduction in ("mean", "sum", "none"):
        want = f64_loss_and_grads(*inputs, reduction=reduction)
        got = run(patchmix_cross_entropy, *inputs, reduction=reduction)
        assert got[0].shape == want[0].shape
        torch.testing.assert_close(got[0].double(), want[0], equal_nan=True)  # mean of nothing is NaN, like torch
        for g, r in zip(got[1], want[1], strict=True):
            torch.testing.assert_close(g.double(), r)


@pytest.mark.parametrize("device", devices())
def test_reference_kernel_matches(device):
    """The fallback kernel (used when the extension is not built) meets the op's contract."""
    img, pat, ta, tb, lam, mask = make(5, 11, 3, device=device)
    loss, gi, gp = patchmix_cross_entropy_reference(img, pat, ta, tb, lam, mask, None, 0.4, 0.6, 0.1, "sum", True)
    c_loss, c_gi, c_gp = OP(img, pat, ta, tb, lam, mask, None, 0.4, 0.6, 0.1, "sum", True)
    torch.testing.assert_close(loss, c_loss)
    torch.testing.assert_close(gi, c_gi)
    torch.testing.assert_close(gp, c_gp)
    assert gp.stride() == c_gp.stride() == pat.stride()


@pytest.mark.parametrize("device", devices())
def test_unmixed_is_plain_cross_entropy(device):
    N, K, P = 6, 20, 4
    img, pat, y, _, _, _ = make(N, K, P, device=device)
    mask = torch.ones(N, P, P, dtype=torch.bool, device=device)
    lam = torch.ones(N, device=device)
    other = (y + 1) % K  # target_b is irrelevant when lam = 1 and every cell is True
    got = patchmix_cross_entropy(img, pat, y, other, lam, mask)
    want = 0.5 * F.cross_entropy(img, y) + 0.5 * F.cross_entropy(pat, y[:, None, None].expand(N, P, P))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device", devices())
def test_strided_layouts_read_in_place(device):
    """channels_last and sliced logits: same values as the contiguous case; gradients keep dense layouts."""
    img, pat, ta, tb, lam, mask = make(5, 16, 4, device=device)
    want = f64_loss_and_grads(img, pat, ta, tb, lam, mask, label_smoothing=0.1)
    variants = {
        "channels_last": (img, pat.contiguous(memory_format=torch.channels_last)),
        "npk_from_nkpp": (img, pat.flatten(2).transpose(1, 2)),  # (N, P*P, K) view, class stride P*P
        "sliced": (torch.cat([img, img], 1)[:, 16:], torch.cat([pat, pat], 1)[:, :16]),
        "transposed_image": (img.t().contiguous().t(), pat),
        "transposed_cells": (img, pat.transpose(2, 3).contiguous().transpose(2, 3)),  # gathered tile
    }
    for name, (i, p) in variants.items():
        li, lp = i.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
        if name == "sliced":  # keep the non-dense views
            li = torch.cat([img, img], 1).requires_grad_()
            lp = torch.cat([pat, pat], 1).requires_grad_()
            i, p = li[:, 16:], lp[:, :16]
        else:
            i, p = li, lp
        loss, gi, gp = OP(i.detach(), p.detach(), ta, tb, lam, mask, None, 0.5, 0.5, 0.1, "mean", True)
        torch.testing.assert_close(loss.double(), want[0], msg=name)
        got_p = gp if gp.dim() == 4 else gp.transpose(1, 2).reshape(pat.shape)
        torch.testing.assert_close(gi.double(), want[1][0], msg=name)
        torch.testing.assert_close(got_p.double(), want[1][1], msg=name)
        if name != "sliced":
            assert gp.stride() == p.stride() and gi.stride() == i.stride(), name
        loss = patchmix_cross_entropy(i, p, ta, tb, lam, mask, label_smoothing=0.1)
        loss.backward()


@pytest.mark.skipif(
    not patchmix.ops.backends()["ops"]["patchmix_cross_entropy"]["cpu"].startswith("C++"),
    reason="the C++ extension is not built (the fallback reference materialises targets)",
)
@pytest.mark.parametrize("layout", ["nkpp", "npk"])
def test_cpu_kernel_allocates_only_the_gradients(layout):
    """No copy of the logits, no soft-target/one-hot/log-softmax tensor: the only tensors the C++ op allocates
    are its outputs (plus lam as float64, N numbers)."""
    from torch.profiler import ProfilerActivity, profile

    img, pat, ta, tb, lam, mask = make(64, 100, 4, layout=layout)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        OP(img, pat, ta, tb, lam, mask, None, 0.5, 0.5, 0.1, "mean", True)
    allocated = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
    grads = (img.numel() + pat.numel()) * 4
    assert max(allocated) == pat.numel() * 4
    assert sum(allocated) <= grads + 64 * 8 + 1024, allocated


_ISA_SCRIPT = """
import torch, patchmix
from tests.test_patchmix_cross_entropy import f64_loss_and_grads, make, run
torch.manual_seed(0)
for layout, P, dtype in (("nkpp", 4, torch.float32), ("nkpp", 5, torch.float32), ("npk", 3, torch.float32),
                         ("nkpp", 3, torch.bfloat16)):
    inputs = make(5, 33, P, layout=layout, dtype=dtype)
    got = run(patchmix.ops.patchmix_cross_entropy, *inputs, label_smoothing=0.1, reduction="none")
    want = f64_loss_and_grads(*inputs, label_smoothing=0.1, reduction="none")
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0].double(), want[0], **tol)
    for g, r in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g.double(), r, **tol)
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "x86-64-v3"])
def test_every_cpu_variant(isa):
    """The float32 loops are compiled per ISA and picked at run time; cap the pick to test the narrower ones."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATCHMIX_CPU_ISA": isa, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# low precision, stability, NaN
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nkpp", "npk"])
def test_low_precision_within_torch_error(dtype, layout, device):
    """Error vs float64 no larger than (a few times) PyTorch's own F.cross_entropy error in that dtype."""
    inputs = make(16, 100, 4, layout=layout, dtype=dtype, device=device)
    kw = dict(label_smoothing=0.1)
    ref_loss, ref_grads = f64_loss_and_grads(*inputs, **kw)
    loss, grads = run(patchmix_cross_entropy, *inputs, **kw)
    assert loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == dtype

    # PyTorch's own error: the same loss with F ops run in `dtype`
    img, pat, ta, tb, lam, mask = inputs
    li, lp = img.detach().clone().requires_grad_(), pat.detach().clone().requires_grad_()
    K = img.shape[1]
    soft = (lam[:, None] * F.one_hot(ta, K) + (1 - lam)[:, None] * F.one_hot(tb, K)).to(dtype)
    t_loss = 0.5 * F.cross_entropy(li, soft, label_smoothing=0.1)
    labels = torch.where(mask.flatten(1), ta[:, None], tb[:, None])
    t_loss = t_loss + 0.5 * F.cross_entropy(patch_rows(lp).reshape(-1, K), labels.reshape(-1), label_smoothing=0.1)
    t_loss.backward()
    torch_loss_err = (t_loss.double() - ref_loss).abs().item()
    assert (loss.double() - ref_loss).abs().item() <= 2 * torch_loss_err + 1e-5
    for g, t, r in zip(grads, (li.grad, lp.grad), ref_grads, strict=True):
        torch_err = (t.double() - r).abs().max().item()
        assert (g.double() - r).abs().max().item() <= 2 * torch_err + 1e-7


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_logits_are_stable(dtype, device):
    big = 6e4 if dtype == torch.float16 else 1e6
    img, pat, ta, tb, lam, mask = make(4, 50, 2, dtype=torch.float64, device=device)
    img = (img * big / 10).clamp(-big, big).to(dtype)  # spreads of thousands: exp would overflow without the max
    pat = (pat * big / 10).clamp(-big, big).to(dtype)
    loss, grads = run(patchmix_cross_entropy, img, pat, ta, tb, lam, mask, label_smoothing=0.1, reduction="none")
    ref_loss, ref_grads = f64_loss_and_grads(img, pat, ta, tb, lam, mask, label_smoothing=0.1, reduction="none")
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-3 * big / 1e3)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=0, atol=2e-3)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("where", ["image", "patch"])
def test_nan_in_nan_out(where, device):
    img, pat, ta, tb, lam, mask = make(4, 9, 2, device=device)
    if where == "image":
        img[1, 3] = float("nan")
    else:
        pat[1, 3, 1, 0] = float("nan")  # patch 2 of sample 1
    loss, grads = run(patchmix_cross_entropy, img, pat, ta, tb, lam, mask, reduction="none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all()
    g = grads[0] if where == "image" else patch_rows(grads[1])[:, 2]
    assert torch.isnan(g[1]).all() and torch.isfinite(g[[0, 2, 3]]).all()
    assert torch.isnan(patchmix_cross_entropy(img, pat, ta, tb, lam, mask))


# --------------------------------------------------------------------------------------------------
# torch.library contract: opcheck, gradcheck, torch.compile, no-grad, retained graphs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("variant", ["both-mean", "npk-none-eps", "image-sum", "patch-mean"])
def test_opcheck(variant, device):
    layout = "npk" if "npk" in variant else "nkpp"
    img, pat, ta, tb, lam, mask = make(5, 7, 2, layout=layout, device=device)
    reduction = variant.split("-")[1]
    if variant.startswith("image"):
        pat, mask = None, None
    if variant.startswith("patch"):
        img = None
    img = img.requires_grad_() if img is not None else None
    pat = pat.requires_grad_() if pat is not None else None
    eps = 0.1 if "eps" in variant else 0.0
    torch.library.opcheck(OP, (img, pat, ta, tb, lam, mask, None, 0.5, 0.5, eps, reduction, True))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("layout", ["nkpp", "npk"])
def test_gradcheck_float64(reduction, layout):
    img, pat, ta, tb, lam, mask = make(3, 5, 2, layout=layout, dtype=torch.float64)
    img.requires_grad_()
    pat.requires_grad_()

    def fn(i, p):
        return patchmix_cross_entropy(i, p, ta, tb, lam, mask, image_weight=0.3, patch_weight=0.7,
                                      label_smoothing=0.1, reduction=reduction)

    assert torch.autograd.gradcheck(fn, (img, pat))


def test_torch_compile_fullgraph():
    img, pat, ta, tb, lam, mask = make(6, 10, 2)

    def step(i, p):
        return patchmix_cross_entropy(i, p, ta, tb, lam, mask, label_smoothing=0.1) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="inductor", dynamic=False)
    want = f64_loss_and_grads(img, pat, ta, tb, lam, mask, label_smoothing=0.1, grad_out=torch.tensor(2.0))
    leaves = [img.clone().requires_grad_(), pat.clone().requires_grad_()]
    loss = compiled(*leaves)
    loss.backward()
    torch.testing.assert_close(loss.double(), 2 * want[0])
    torch.testing.assert_close(leaves[0].grad.double(), want[1][0])
    torch.testing.assert_close(leaves[1].grad.double(), want[1][1])


def test_no_grad_skips_the_gradient():
    img, pat, ta, tb, lam, mask = make(4, 6, 2)
    img.requires_grad_()
    with torch.no_grad():
        loss = patchmix_cross_entropy(img, pat, ta, tb, lam, mask)
    assert not loss.requires_grad
    torch.testing.assert_close(loss.double(), f64_loss(img, pat, ta, tb, lam, mask))
    _, gi, gp = OP(img.detach(), pat, ta, tb, lam, mask, None, 0.5, 0.5, 0.0, "mean", False)
    assert gi.numel() == 0 and gp.numel() == 0


def test_retained_graph_backward_twice_accumulates():
    """The saved gradient is handed out without a copy: a second backward must still see it unchanged."""
    img, pat, ta, tb, lam, mask = make(4, 6, 2)
    img.requires_grad_()
    pat.requires_grad_()
    loss = patchmix_cross_entropy(img, pat, ta, tb, lam, mask)
    loss.backward(retain_graph=True)
    first = img.grad.clone(), pat.grad.clone()
    loss.backward()
    torch.testing.assert_close(img.grad, 2 * first[0])
    torch.testing.assert_close(pat.grad, 2 * first[1])
    g1 = torch.autograd.grad(patchmix_cross_entropy(img, pat, ta, tb, lam, mask), img)[0]
    torch.testing.assert_close(g1, first[0])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("parts", ["both", "image", "patch"])
@pytest.mark.parametrize("layout", ["nkpp", "npk"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_penalty_matches_eager(reduction, layout, parts, device):
    """Double backward: the gradient taken with ``create_graph=True``, a penalty on it, and that penalty's gradient
    (second-order terms included), against the eager ``F.cross_entropy`` formulation, in float64."""
    img, pat, ta, tb, lam, mask = make(5, 7, 3, layout=layout, dtype=torch.float64, device=device)
    img, pat = (img if parts != "patch" else None), (pat if parts != "image" else None)
    kw = dict(term_weights=torch.rand(5, 2, dtype=torch.float64, device=device), image_weight=0.3, patch_weight=0.7,
              label_smoothing=0.1, reduction=reduction)
    results = []
    for fn in (patchmix_cross_entropy, patchmix_cross_entropy_eager):
        leaves = [t.clone().requires_grad_() for t in (img, pat) if t is not None]
        logits = iter(leaves)
        loss = fn(next(logits) if img is not None else None, next(logits) if pat is not None else None,
                  ta, tb, lam, mask, **kw)
        scale = torch.linspace(0.5, 2.0, loss.numel(), dtype=torch.float64, device=device).view(loss.shape)
        scale.requires_grad_()
        grads = torch.autograd.grad(loss, leaves, scale, create_graph=True)
        penalty = sum((g * g).sum() for g in grads) * 1e3 + (loss * scale).sum()
        results.append([loss, *grads, *torch.autograd.grad(penalty, [*leaves, scale])])
    assert len(results[0]) == 2 + 2 * len(leaves)  # loss, first-order grads, second-order grads and d/d scale
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_gradient_penalty_through_a_model_that_drops_its_logits():
    """The usual gradient penalty: parameters' gradients with ``create_graph=True``, their squared norm added to the
    loss; the logits are temporaries the caller never holds (the op keeps them for its backward)."""
    N, K, P = 6, 5, 2
    x = torch.randn(N, 4, dtype=torch.float64)
    _, _, ta, tb, lam, mask = make(N, K, P)
    grads = []
    for fn in (patchmix_cross_entropy, patchmix_cross_entropy_eager):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, K * (1 + P * P)).double()
        out = net(x)
        loss = fn(out[:, :K], out[:, K:].view(N, K, P, P), ta, tb, lam, mask, label_smoothing=0.1)
        del out
        g = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
        (loss + sum(t.pow(2).sum() for t in g)).backward()
        grads.append([p.grad for p in net.parameters()])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", ["nkpp", "npk"])
def test_gradgradcheck_float64(reduction, layout):
    img, pat, ta, tb, lam, mask = make(3, 5, 2, layout=layout, dtype=torch.float64)
    w = torch.rand(3, 2, dtype=torch.float64)

    def fn(i, p):
        return patchmix_cross_entropy(i, p, ta, tb, lam, mask, term_weights=w, image_weight=0.3, patch_weight=0.7,
                                      label_smoothing=0.1, reduction=reduction)

    assert torch.autograd.gradgradcheck(fn, (img.requires_grad_(), pat.requires_grad_()))


def test_retained_graph_backward_after_the_grad_changed_in_place():
    """The first backward hands its computed gradient out as the leaf's ``.grad``; zeroing that in place (an
    optimizer's ``zero_grad(set_to_none=False)``) must not break a later backward through the retained graph."""
    img, pat, ta, tb, lam, mask = make(4, 6, 2, dtype=torch.float64)
    img.requires_grad_()
    pat.requires_grad_()
    loss = patchmix_cross_entropy(img, pat, ta, tb, lam, mask)
    want = f64_loss_and_grads(img, pat, ta, tb, lam, mask)[1]
    for _ in range(3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close([img.grad, pat.grad], want)
        img.grad.zero_()
        pat.grad.zero_()


def test_the_logits_are_released_by_a_plain_backward():
    """The op saves the logits for a double backward or a retained graph's later backward; a plain backward frees
    them with the other saved tensors, so holding the loss does not hold the logits."""
    import gc
    import weakref

    img, pat, ta, tb, lam, mask = make(4, 6, 2)
    leaves = [img.requires_grad_(), pat.requires_grad_()]
    logits = [t * 2 for t in leaves]  # non-leaf logits, like a model's
    refs = [weakref.ref(t) for t in logits]
    loss = patchmix_cross_entropy(*logits, ta, tb, lam, mask)
    del logits
    gc.collect()
    assert all(r() is not None for r in refs), "kept for the backward"
    loss.backward()
    gc.collect()
    assert all(r() is None for r in refs) and loss.grad_fn is not None


# --------------------------------------------------------------------------------------------------
# Triton launcher (CUDA, or the interpreter on CPU tensors: keep it tiny)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "N, K, P, layout, reduction, eps, parts",
    [
        (3, 7, 2, "nkpp", "mean", 0.0, "both"),
        (3, 7, 2, "npk", "none", 0.1, "both"),
        (2, 5, 3, "nkpp", "sum", 0.2, "patch"),
        (2, 1500, 1, "nkpp", "none", 0.1, "image"),  # K > BLOCK_K: the online max moves between chunks
        (1, 100, 8, "nkpp", "mean", 0.1, "patch"),  # patches as the fast axis, K over two chunks
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_launcher_matches_reference(N, K, P, layout, reduction, eps, parts, dtype):
    launcher = triton_launcher("patchmix_cross_entropy")
    dev = triton_device()
    img, pat, ta, tb, lam, mask = make(N, K, P, layout=layout, dtype=dtype, device=dev)
    if K > 1000:
        img[:, 1200] = 40.0  # the row max lies in the second chunk
    if P == 8:
        pat[:, 80] = 40.0
    if parts == "image":
        pat, mask = None, None
    if parts == "patch":
        img = None
    args = (img, pat, ta, tb, lam, mask, None, 0.4, 0.6, eps, reduction, True)
    got = launcher(*args)
    want = patchmix_cross_entropy_reference(*args)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype and g.stride() == w.stride()
        torch.testing.assert_close(g, w, **tol)
    ref_loss, ref_grads = f64_loss_and_grads(img, pat, ta, tb, lam, mask, image_weight=0.4, patch_weight=0.6, label_smoothing=eps, reduction=reduction)
    torch.testing.assert_close(got[0].double(), ref_loss, **tol)


def test_triton_launcher_checks_data_in_the_kernel():
    """Bad labels, lam and term weights are clamped in the kernel (never read out of bounds) and reported through
    the device status word; nothing is read back to the host."""
    launcher = triton_launcher("patchmix_cross_entropy")
    dev = triton_device()
    img, pat, ta, tb, lam, mask = make(3, 4, 2, device=dev)
    check_errors(dev)
    ta[1] = 4
    loss, _, _ = launcher(img, pat, ta, tb, lam, mask, None, 0.5, 0.5, 0.0, "mean", True)
    assert loss.shape == ()
    with pytest.raises(ValueError, match=r"patchmix_cross_entropy: target_a holds a value out of range .*detected on the device"):
        check_errors(dev)
    ta[1] = 0
    tb[2] = -1
    lam[0] = float("nan")
    weights = torch.ones(3, 2, device=dev)
    weights[2, 1] = -1.0
    launcher(img, pat, ta, tb, lam, mask, weights, 0.5, 0.5, 0.0, "none", True)
    with pytest.raises(ValueError, match=r"target_b holds.*lam holds.*term_weights holds"):
        check_errors(dev)


# --------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument, before any kernel reads memory
# --------------------------------------------------------------------------------------------------


def _bad_cases():
    img, pat, ta, tb, lam, mask = make(4, 6, 2)
    ok = dict(image_logits=img, patch_logits=pat, target_a=ta, target_b=tb, lam=lam, mask=mask)

    def with_(**kw):
        return {**ok, **kw}

    return [
        ("both-none", with_(image_logits=None, patch_logits=None), ValueError, "both None"),
        ("image-3d", with_(image_logits=img[None]), ValueError, r"image_logits must have shape \(N, K\)"),
        ("image-int", with_(image_logits=img.long()), ValueError, "image_logits has dtype torch.int64"),
        ("patch-5d", with_(patch_logits=pat[None]), ValueError, r"patch_logits must have shape \(N, P\*P, K\) or \(N, K, P, P\)"),
        ("patch-nonsquare", with_(patch_logits=pat[..., :1]), ValueError, "patch_logits must have shape"),
        ("patch-dtype", with_(patch_logits=pat.double()), ValueError, "patch_logits has dtype torch.float64 but image_logits"),
        ("patch-N", with_(patch_logits=pat[:3]), ValueError, "patch_logits holds N = 3 samples but image_logits holds N = 4"),
        ("patch-K", with_(patch_logits=pat[:, :5]), ValueError, "patch_logits has K = 5 classes but image_logits has K = 6"),
        ("mask-missing", with_(mask=None), ValueError, "patch_logits needs mask"),
        ("mask-dtype", with_(mask=mask.long()), ValueError, "mask must be a bool tensor"),
        ("mask-N", with_(mask=mask[:3]), ValueError, r"mask must have shape \(N, P, P\) with N = 4"),
        ("mask-P", with_(mask=torch.ones(4, 3, 3, dtype=torch.bool)), ValueError, "patch_logits has 4 patches .* but mask has P\\*P = 9"),
        ("target_a-dtype", with_(target_a=ta.int()), ValueError, "target_a must be int64"),
        ("target_b-shape", with_(target_b=tb[:3]), ValueError, r"target_b must have shape \(N,\) = \(4,\)"),
        ("lam-dtype", with_(lam=ta), ValueError, "lam must be a floating tensor"),
        ("lam-shape", with_(lam=lam[None]), ValueError, r"lam must have shape \(N,\)"),
        ("lam-device", with_(lam=lam.to("meta")), ValueError, "lam is on meta but the logits are on cpu"),
        ("image-type", with_(image_logits=[1.0]), TypeError, "image_logits must be a torch.Tensor or None"),
        ("K-zero", with_(image_logits=img[:, :0], patch_logits=pat[:, :0]), ValueError, "need at least one"),
    ]


@pytest.mark.parametrize("name, kwargs, exc, match", _bad_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_message(name, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        patchmix_cross_entropy(**kwargs)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(reduction="avg"), "reduction must be 'mean', 'sum' or 'none', got 'avg'"),
        (dict(label_smoothing=1.5), r"label_smoothing must be in \[0, 1\], got 1.5"),
        (dict(image_weight=-1.0), "image_weight must be a finite number >= 0"),
        (dict(patch_weight=float("nan")), "patch_weight must be a finite number >= 0"),
    ],
)
def test_bad_option_message(kw, match):
    img, pat, ta, tb, lam, mask = make(2, 3, 2)
    with pytest.raises(ValueError, match=match):
        patchmix_cross_entropy(img, pat, ta, tb, lam, mask, **kw)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize(
    "field, value, match",
    [
        ("target_a", 6, r"target_a\[2\] = 6 is out of range for K = 6 classes|target_a holds 6, out of range for K = 6"),
        ("target_b", -1, r"target_b\[2\] = -1 is out of range|target_b holds -1, out of range"),
        ("lam", 1.25, r"lam\[2\] = 1.25 is outside \[0, 1\]|lam holds 1.25, outside \[0, 1\]"),
        ("lam", float("nan"), r"lam\[2\] = nan is outside|lam holds nan, outside"),
    ],
)
def test_bad_data_message(field, value, match, device):
    """Checked by the kernel itself (C++ / launcher) before any logit is read, so the wrapper stays traceable. On
    CUDA the kernel reports it through the device status word (no host sync), raised by ``check_errors``."""
    img, pat, ta, tb, lam, mask = make(4, 6, 2, device=device)
    {"target_a": ta, "target_b": tb, "lam": lam}[field][2] = value
    on_device = rf"patchmix_cross_entropy: {field} holds a value out of range .*detected on the device"
    for call in (lambda: patchmix_cross_entropy(img, pat, ta, tb, lam, mask),
                 lambda: OP(img, pat, ta, tb, lam, mask, None, 0.5, 0.5, 0.0, "mean", False)):  # the op directly
        with pytest.raises(ValueError, match=on_device if device == "cuda" else match):
            call()
            check_errors(device)
    with pytest.raises(ValueError, match=match):  # the reference checks on the host
        patchmix_cross_entropy_eager(img, pat, ta, tb, lam, mask)


def test_float16_backward_survives_a_loss_scale():
    """GradScaler starts at 65536, which is not a finite float16: the scale must be applied in float32."""
    torch.manual_seed(0)
    N, K, P = 8, 50, 2
    logits = torch.randn(N, K, P, P).half().requires_grad_(True)
    image = torch.randn(N, K).half().requires_grad_(True)
    ta, tb = torch.randint(0, K, (N,)), torch.randint(0, K, (N,))
    mask = torch.rand(N, P, P) < 0.5
    lam = mask.float().mean((1, 2))
    loss = patchmix_cross_entropy(image, logits, ta, tb, lam, mask)
    (loss * 65536.0).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(image.grad).all()
    ref_p = logits.detach().float().requires_grad_(True)
    ref_i = image.detach().float().requires_grad_(True)
    (patchmix_cross_entropy(ref_i, ref_p, ta, tb, lam, mask) * 65536.0).backward()
    torch.testing.assert_close(logits.grad.float(), ref_p.grad, rtol=2e-3, atol=1e-2)
    torch.testing.assert_close(image.grad.float(), ref_i.grad, rtol=2e-3, atol=1e-2)


# --------------------------------------------------------------------------------------------------
# float64 exactness, per-sample term weights, the backward op
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "N, K, P, layout, reduction, parts",
    [(5, 7, 2, "nkpp", "mean", "both"), (3, 11, 3, "npk", "sum", "both"), (4, 6, 2, "nkpp", "none", "patch"),
     (1, 9000, 1, "nkpp", "mean", "image")],  # K > 8192: the online two-pass loop
)
def test_triton_float64_matches_reference_to_1e12(N, K, P, layout, reduction, parts):
    """float64 logits get float64 scalars (tl.float64 parameters), so the kernel agrees with the float64 reference
    to rounding (a float32 weight would leave ~1e-8 relative error)."""
    launcher = triton_launcher("patchmix_cross_entropy")
    img, pat, ta, tb, lam, mask = make(N, K, P, layout=layout, dtype=torch.float64, device=triton_device())
    lam = lam.double()
    if parts == "image":
        pat, mask = None, None
    if parts == "patch":
        img = None
    weights = torch.rand(N, 2, dtype=torch.float64, device=triton_device()) * 2
    args = (img, pat, ta, tb, lam, mask, weights, 0.1 / 3, 1 / 7, 0.1, reduction, True)
    for g, w in zip(launcher(*args), patchmix_cross_entropy_reference(*args), strict=True):
        assert g.dtype == w.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", devices())
def test_term_weights_every_backend(device):
    N, K, P = 6, 9, 2
    img, pat, ta, tb, lam, mask = make(N, K, P, device=device, dtype=torch.float64)
    weights = torch.tensor([[1, 1], [2, 0], [1, 0], [0.5, 3], [0, 1], [1, 1]], dtype=torch.float64, device=device)
    kw = dict(term_weights=weights, image_weight=0.3, patch_weight=0.7, label_smoothing=0.1)
    want = run(patchmix_cross_entropy_eager, img, pat, ta, tb, lam, mask, reduction="none", **kw)
    got = run(patchmix_cross_entropy, img, pat, ta, tb, lam, mask, reduction="none", **kw)
    assert_matches(got, want, rtol=1e-10, atol=1e-12)
    assert bool((got[1][1][[1, 2]] == 0).all()), "no patch term: zero patch gradient"
    ref = patchmix_cross_entropy_reference(img, pat, ta, tb, lam, mask, weights, 0.3, 0.7, 0.1, "sum", True)
    trit = triton_launcher("patchmix_cross_entropy")(
        *(t.to(triton_device()) if t is not None else None for t in (img, pat, ta, tb, lam, mask, weights)),
        0.3, 0.7, 0.1, "sum", True)
    for a, b in zip(ref, trit, strict=True):
        torch.testing.assert_close(a, b.to(a.device), rtol=1e-10, atol=1e-12)
    plain = patchmix_cross_entropy(img, pat, ta, tb, lam, mask, term_weights=torch.ones_like(weights), reduction="sum")
    torch.testing.assert_close(plain, patchmix_cross_entropy(img, pat, ta, tb, lam, mask, reduction="sum"))
    bad = weights.clone()
    bad[3, 1] = -1
    if device == "cpu":
        with pytest.raises(ValueError, match="term_weights holds -1.0, outside"):
            patchmix_cross_entropy(img, pat, ta, tb, lam, mask, term_weights=bad)
    with pytest.raises(ValueError, match=r"term_weights must have shape \(N, 2\) = \(6, 2\)"):
        patchmix_cross_entropy(img, pat, ta, tb, lam, mask, term_weights=weights[:, :1])


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_backward_launcher_scales_in_place(per_sample, dtype):
    from patchmix._kernels.patchmix_cross_entropy import patchmix_cross_entropy_backward_cuda as launcher

    triton_launcher("patchmix_cross_entropy")
    dev = triton_device()
    gi = torch.randn(5, 7, device=dev).to(dtype)
    gp = torch.randn(5, 7, 2, 2, device=dev).to(dtype).contiguous(memory_format=torch.channels_last)
    for g in ([1.0, 1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 2.0, 0.0, 4096.0]) if per_sample else ([1.0], [0.37], [4096.0]):
        grad_loss = torch.tensor(g, device=dev) if per_sample else torch.tensor(g[0], device=dev)
        want = [(t.float() * (grad_loss.view(-1, *[1] * (t.dim() - 1)) if per_sample else grad_loss)).to(dtype)
                for t in (gi, gp)]
        a, b = gi.clone(), gp.clone()
        launcher(a, b, grad_loss)
        torch.testing.assert_close(a, want[0], rtol=0, atol=0)
        torch.testing.assert_close(b, want[1], rtol=0, atol=0)


def test_retained_graph_backward_with_other_scales():
    """The first backward scales the saved gradient in place; later ones recompute and leave its result alone."""
    img, pat, ta, tb, lam, mask = make(4, 6, 2, dtype=torch.float64)
    img.requires_grad_()
    pat.requires_grad_()
    loss = patchmix_cross_entropy(img, pat, ta, tb, lam, mask, reduction="none")
    first = torch.autograd.grad(loss, (img, pat), torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64), retain_graph=True)
    second = torch.autograd.grad(loss, (img, pat), torch.tensor([1.0, 0.0, 3.0, 1.0], dtype=torch.float64))
    w1 = f64_loss_and_grads(img, pat, ta, tb, lam, mask, reduction="none", grad_out=torch.tensor([0.0, 1.0, 2.0, 0.5]))[1]
    w2 = f64_loss_and_grads(img, pat, ta, tb, lam, mask, reduction="none", grad_out=torch.tensor([1.0, 0.0, 3.0, 1.0]))[1]
    for got, want in zip(first + second, w1 + w2, strict=True):
        torch.testing.assert_close(got, want)


def test_reduction_counter_is_reset_and_result_repeats():
    from patchmix._kernels import patchmix_cross_entropy as kernel_module

    launcher = triton_launcher("patchmix_cross_entropy")
    dev = torch.device(triton_device())
    img, pat, ta, tb, lam, mask = make(9, 5, 2, device=dev)
    a = launcher(img, pat, ta, tb, lam, mask, None, 0.5, 0.5, 0.0, "mean", True)
    b = launcher(img, pat, ta, tb, lam, mask, None, 0.5, 0.5, 0.0, "mean", True)
    assert torch.equal(a[0], b[0])
    assert int(kernel_module._counter(dev)[0]) == 0
