"""The CUDA measurements of ``bench/gpu_check.sh``: device time of each op against its copy floor, and a whole
training step under ``torch.cuda.set_sync_debug_mode`` (host syncs per step).

Every result is appended to ``$OUT/gpu_results.jsonl`` (and printed) as soon as it is measured, so an
interrupted run (``timeout -s INT``) loses nothing; ``--summary`` turns that file into the targets table.
Device time is the sum of the CUDA kernels, copies and memsets of one call, from the profiler
(``bench.conftest.cuda_device_ms``): what a bandwidth target is about, without the host's launch overhead.

    python bench/gpu_bench.py [--out DIR] [--extras]   # measure (extras: eager, compiled, Kornia)
    python bench/gpu_bench.py --summary [--out DIR]     # the targets table from what was measured
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID_SHAPES = [  # (B, C, H, W, dtype, channels_last, target fraction of a copy's bandwidth)
    (256, 3, 224, 224, "float32", False, 0.80),
    (256, 3, 224, 224, "uint8", False, 0.80),
    (256, 3, 224, 224, "float32", True, 0.80),
    (256, 3, 32, 32, "float32", False, 0.60),
]
LOSS_CLASSES = [(1000, 1.5), (100, 2.0), (10, 2.0)]  # (K, at most this many times the clone floor)
STEP_TARGET = 1.05


class Results:
    """Appends one JSON line per measurement to ``gpu_results.jsonl`` and flushes it at once."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_results.jsonl"
        self.file = self.path.open("a")

    def add(self, **row):
        row["time"] = time.strftime("%H:%M:%S")
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        print(json.dumps(row), flush=True)


def _device_ms(fn, reps=20) -> tuple[float, dict[str, float]]:
    """Device ms per call, and the 6 costliest kernels / copies / memsets in microseconds (where the time goes)."""
    from bench.conftest import cuda_device_breakdown

    ms, per = cuda_device_breakdown(fn, reps)
    top = sorted(per.items(), key=lambda kv: -kv[1])[:6]
    return ms, {name: round(v * 1e3, 2) for name, v in top}


def _patched(module, name: str, value, fn):
    """``fn`` run with ``module.name`` replaced by ``value`` (a launch plan to compare against the launcher's)."""
    def call():
        old = getattr(module, name)
        setattr(module, name, value)
        try:
            return fn()
        finally:
            setattr(module, name, old)
    return call


def _wall_ms(fn, reps=20):
    import torch

    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def bench_grid_mix(results: Results, extras: bool):
    for shape in GRID_SHAPES:
        _grid_mix_case(results, *shape, extras)


def _grid_mix_case(results: Results, B, C, H, W, dtype, cl, target, extras: bool):
    import functools

    import torch
    from patchmix._kernels import grid_mix as gk

    from patchmix.ops import grid_mix
    from patchmix.ops.grid_mix import grid_mix_compose, grid_mix_reference

    name = f"{B}x{C}x{H}x{W} {dtype}{' channels_last' if cl else ''}"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.rand(B, C, H, W, device="cuda", generator=g) * 255).to(getattr(torch, dtype))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = torch.rand(B, 4, 4, device="cuda", generator=g) < 0.5
    perm = torch.randperm(B, device="cuda", generator=g)
    out, buf = torch.empty_like(x), torch.empty_like(x)
    got, lam = grid_mix(x, mask, None, perm)
    ref, ref_lam = grid_mix_reference(x, mask, None, perm)
    assert torch.equal(got, ref) and torch.equal(lam, ref_lam), name
    # for comparison: the per-cell-column paths (UNIFORM / SEGMENTS) alone, and GROUPS reading a mask byte per vector
    cells = _patched(gk, "forward_plan", functools.partial(gk.forward_plan, groups=False),
                     lambda: grid_mix(x, mask, None, perm))
    bytes_ = _patched(gk, "forward_plan", functools.partial(gk.forward_plan, mask_bits=False),
                      lambda: grid_mix(x, mask, None, perm))
    assert torch.equal(cells()[0], ref) and torch.equal(bytes_()[0], ref), name
    providers = {"prealloc_copy": lambda: buf.copy_(x)}  # the floor first: every row's "% of copy"
    if not extras:  # the extras pass adds eager, compiled and Kornia beside the floor, nothing measured again
        providers.update({
            "clone": x.clone,
            "patchmix": lambda: grid_mix(x, mask, None, perm),
            "patchmix_out": lambda: grid_mix(x, mask, None, perm, out=out),
            "patchmix_cells": cells,
            "patchmix_mask_bytes": bytes_,
        })
    if extras:
        from bench.bench_grid_mix import _kornia_cutmix

        arange = torch.arange(B, device="cuda")
        compiled = torch.compile(grid_mix_compose, dynamic=False)
        providers["eager"] = lambda: grid_mix_reference(x, mask, None, perm)
        providers["compiled"] = lambda: compiled(x, mask, arange, perm)
        cutmix = _kornia_cutmix()
        if cutmix is not None and x.is_floating_point():
            labels = torch.zeros(B, dtype=torch.long, device="cuda")
            providers["kornia"] = lambda: cutmix(x, labels)
    copy_ms = None
    for provider, fn in providers.items():
        ms, kernels = _device_ms(fn)
        copy_ms = copy_ms or ms
        results.add(kind="grid_mix", shape=name, provider=provider, device_ms=ms, wall_ms=_wall_ms(fn),
                    copy_ms=copy_ms, target=target if provider in ("patchmix", "patchmix_out") else None,
                    kernels=kernels)


def bench_loss(results: Results, extras: bool):
    for K, target in LOSS_CLASSES:
        _loss_case(results, K, target, extras)


def _loss_problem(K: int):
    """The loss benchmark's inputs at ``K`` on CUDA, as ``(step(loss_fn=patchmix_cross_entropy), clone, grads)``:
    one forward + backward, the clone floor of the logits, and the gradients the last step left."""
    from bench.bench_patchmix_cross_entropy import make
    from patchmix.ops import patchmix_cross_entropy

    image, patch, ta, tb, lam, mask = make(K, "cuda")

    def step(loss_fn=patchmix_cross_entropy):
        image.grad = patch.grad = None
        loss_fn(image, patch, ta, tb, lam, mask).backward()

    return step, lambda: (image.detach().clone(), patch.detach().clone()), lambda: (image.grad, patch.grad)


def _loss_configs(K: int, step, grads, variants: dict) -> dict:
    """``step`` under each launch config of ``variants`` whose gradients match the launcher's own choice (a config
    that does not compile or is wrong is printed and left out, not fatal)."""
    import torch
    from patchmix._kernels import patchmix_cross_entropy as pk

    step()
    want = tuple(g.clone() for g in grads())
    fns = {}
    for label, cfg in variants.items():
        fn = _patched(pk, "launch_config", lambda *a, cfg=cfg, **k: dict(cfg), step)
        try:
            fn()
            torch.testing.assert_close(grads(), want, rtol=1e-5, atol=1e-7)
            fns[label] = fn
        except Exception as e:  # noqa: BLE001
            print(f"loss K={K} {label}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    return fns


def _loss_case(results: Results, K: int, target: float, extras: bool):
    import torch

    from patchmix.ops import patchmix_cross_entropy_eager

    step, clone, _ = _loss_problem(K)
    fns = {"clone": clone} if extras else {"clone": clone, "patchmix": step}
    if extras:
        compiled = torch.compile(patchmix_cross_entropy_eager)
        fns["eager"] = lambda: step(patchmix_cross_entropy_eager)
        fns["compiled"] = lambda: step(compiled)
    clone_ms = None
    for provider, fn in fns.items():
        ms, kernels = _device_ms(fn)
        clone_ms = clone_ms or ms
        results.add(kind="loss", shape=f"N=256 P*P=16 K={K} float32", provider=provider, device_ms=ms,
                    wall_ms=_wall_ms(fn), clone_ms=clone_ms, target=target if provider == "patchmix" else None,
                    kernels=kernels)


def bench_sweep(results: Results):
    """Launch-parameter variants of the tuned cases: ``grid_mix`` uint8 at 224 (rows and warps per program) and the
    loss at K = 1000 and 100 (pipelining stages, tile shape, warps). ``kind="sweep"`` rows."""
    import dataclasses

    import torch
    import triton
    from patchmix._kernels import grid_mix as gk
    from patchmix._kernels import patchmix_cross_entropy as pk

    from patchmix.ops import grid_mix
    from patchmix.ops.grid_mix import grid_mix_reference

    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.rand(256, 3, 224, 224, device="cuda", generator=g) * 255).to(torch.uint8)
    mask = torch.rand(256, 4, 4, device="cuda", generator=g) < 0.5
    perm = torch.randperm(256, device="cuda", generator=g)
    ref = grid_mix_reference(x, mask, None, perm)[0]
    buf = torch.empty_like(x)
    copy_ms, _ = _device_ms(lambda: buf.copy_(x))
    plan = gk.forward_plan

    def resized(x_shape, P, element_size, channels_last, pointers, N, device, rows, warps):
        p = plan(x_shape, P, element_size, channels_last, pointers, N, device)
        programs = max(triton.cdiv(N * p.rows_per_image, rows), triton.cdiv(N, rows))
        return dataclasses.replace(p, rows=rows, num_warps=warps, programs=programs)

    for rows in (4, 8, 16, 32, 64):
        for warps in (1, 2, 4, 8):
            fn = _patched(gk, "forward_plan", lambda *a, r=rows, w=warps: resized(*a, r, w),
                          lambda: grid_mix(x, mask, None, perm))
            assert torch.equal(fn()[0], ref)
            ms, _ = _device_ms(fn)
            results.add(kind="sweep", shape="grid_mix 256x3x224x224 uint8", provider=f"rows{rows}_w{warps}",
                        device_ms=ms, wall_ms=float("nan"), copy_ms=copy_ms, percent_of_copy=round(100 * copy_ms / ms))

    for K in (1000, 100):
        step, clone, grads = _loss_problem(K)
        clone_ms, _ = _device_ms(clone)
        own = pk.launch_config(256, K, 16, interleaved=True)
        variants = {f"stages{n}": {**own, "num_stages": n} for n in (1, 2, 3, 4)}
        variants.update({f"rows16_k512_w{w}": dict(SPB=1, PPB=16, BLOCK_K=512, SINGLE=K <= 512, num_warps=w)
                         for w in (8, 16)})
        variants.update({  # the single pass over all 16 rows, and narrower online tiles
            "rows16_single_w16": dict(SPB=1, PPB=16, BLOCK_K=triton.next_power_of_2(K), SINGLE=True, num_warps=16),
            "rows16_k128_w4": dict(SPB=1, PPB=16, BLOCK_K=128, SINGLE=K <= 128, num_warps=4),
            "rows16_k256_w4": dict(SPB=1, PPB=16, BLOCK_K=256, SINGLE=K <= 256, num_warps=4),
        })
        for label, fn in _loss_configs(K, step, grads, variants).items():
            ms, kernels = _device_ms(fn)
            results.add(kind="sweep", shape=f"loss N=256 P*P=16 K={K}", provider=label, device_ms=ms,
                        wall_ms=float("nan"), clone_ms=clone_ms, ratio=round(ms / clone_ms, 2), kernels=kernels)


def count_syncs(step) -> tuple[int, str]:
    """Host syncs one ``step()`` makes (``set_sync_debug_mode("warn")`` counts them), and the first one's
    stack under ``"error"`` ('' when there is none)."""
    import warnings

    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    n = sum("synchroniz" in str(w.message) for w in caught)
    first = ""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError:
        first = traceback.format_exc(limit=-6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return n, first


def bench_train_step(results: Results):
    from bench.bench_train_step import make_step

    steps = {p: make_step(p, "cuda", channels_last=True) for p in ("plain", "patchmix")}
    for s in steps.values():  # warm-up: cuDNN choices, Triton compiles
        for _ in range(3):
            s()
    for provider, s in steps.items():
        syncs, first = count_syncs(s)
        ms, kernels = _device_ms(s, 10)
        results.add(kind="train_step", shape="resnet32 b128 32x32 channels_last", provider=provider,
                    device_ms=ms, wall_ms=_wall_ms(s, 20), syncs_per_step=syncs, first_sync=first,
                    target=STEP_TARGET if provider == "patchmix" else None, kernels=kernels)


def search_rows(device: str, build=(100, 100, 200, 16, 16), generation=(10, 50, 750, 20, 4)) -> list[dict]:
    """The guided search's forward passes on ``device``, with random weights (throughput does not depend on them):

    * the interaction table's build (``build = (K, images per class, pairs, S, M)``): ResNet-32 ``f_T`` on
      3x32x32 images, the first ``pairs`` of the ``K (K + 1) / 2`` pairs, ``S`` draws x ``M`` masks each;
      composed images scored per second, and the whole table's build projected from it;
    * one exact-fitness generation (``generation = (K, images per class, individuals, N, S)``): ``small_resnet``
      on 1x32x32 images, mnist5k's 750 offspring of 20 slots at 4 draws (60,000 forward passes).

    Wall time (the build syncs: its results come back to the host). ``kind="search"`` rows."""
    import torch

    from patchmix.models import create_model
    from patchmix.search import (
        CachedFitness,
        CachedLogits,
        ExactFitness,
        build_interaction_table,
        draw_pairs,
        pair_classes,
        random_population,
    )

    def problem(name, K, per_class, channels, seed):
        torch.manual_seed(seed)
        model = create_model(name, K, grid_size=4, in_channels=channels).to(device).eval()
        labels = torch.arange(K).repeat_interleave(per_class)
        images = torch.randint(0, 256, (K * per_class, channels, 32, 32), dtype=torch.uint8)
        return model, images, labels

    rows = []
    K, per_class, pairs, S, M = build
    model, images, labels = problem("resnet32", K, per_class, 3, 0)
    draws = draw_pairs(labels, K, S, 0)
    classes = pair_classes(K)
    def run(n):
        return build_interaction_table(model, images, draws, classes, 4, masks_per_draw=M, device=device,
                                       pair_range=(0, n))

    run(min(pairs, 8))  # warm-up: cuDNN's choices
    t = time.perf_counter()
    run(pairs)
    sec = time.perf_counter() - t
    rate = pairs * S * M / sec
    rows.append(dict(kind="search", shape=f"interaction build resnet32 K={K} S={S} M={M}", provider="patchmix",
                     device_ms=float("nan"), wall_ms=sec * 1e3, images_per_s=rate,
                     projected_full_build_s=classes.shape[0] * S * M / rate))
    K, per_class, individuals, N, S = generation
    model, images, labels = problem("small_resnet", K, per_class, 1, 1)
    cache = CachedLogits.from_model(model, images.float() / 255, labels, device=device, grid_size=4)
    probe = CachedFitness(cache, num_draws=S, seed=0)
    exact = ExactFitness(model, images, probe, batch_size=512, device=device)
    pop = random_population(individuals, N, probe, "forced", seed=1)
    exact(*random_population(8, N, probe, "forced", seed=2))  # warm-up
    t = time.perf_counter()
    exact(*pop)
    sec = time.perf_counter() - t
    rows.append(dict(kind="search", shape=f"exact generation small_resnet K={K} I={individuals} N={N} S={S}",
                     provider="patchmix", device_ms=float("nan"), wall_ms=sec * 1e3,
                     images_per_s=individuals * N * S / sec))
    return rows


def bench_search(results: Results):
    for row in search_rows("cuda"):
        results.add(**row)
    # the search's forward passes per precision (bench/search_throughput.py: plain float32 against the
    # search.precision variants), small_resnet and resnet32 at 32x32
    from bench.search_throughput import measure

    for name in ("small_resnet", "resnet32"):
        for r in measure(name, 1, count=16384, device="cuda"):
            results.add(kind="search", shape=f"forward {name} {r['variant']} ({r['dtype']})", provider="patchmix",
                        device_ms=float("nan"), wall_ms=16384 / r["images_per_s"] * 1e3,
                        images_per_s=r["images_per_s"], max_abs_diff=r["max_abs_diff"])


def summary(out: Path) -> str:
    """The targets table from ``gpu_results.jsonl`` (the last measurement of each case wins)."""
    rows = {}
    for line in (out / "gpu_results.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["kind"], r["shape"], r["provider"])] = r
    lines = [f"{'case':<58} {'provider':<14} {'device ms':>10} {'wall ms':>9} {'measure':>22} {'target':>10}  ok"]
    for (kind, shape, provider), r in rows.items():
        if kind == "sweep":
            continue
        measure, goal, ok = "", "", ""
        if kind == "grid_mix" and r.get("copy_ms"):
            frac = r["copy_ms"] / r["device_ms"]
            measure = f"{100 * frac:.0f}% of copy"
            if r.get("target"):
                goal, ok = f">= {100 * r['target']:.0f}%", "yes" if frac >= r["target"] else "NO"
        elif kind == "loss" and r.get("clone_ms"):
            ratio = r["device_ms"] / r["clone_ms"]
            measure = f"{ratio:.2f}x clone"
            if r.get("target"):
                goal, ok = f"<= {r['target']:.2f}x", "yes" if ratio <= r["target"] else "NO"
        elif kind == "search":
            measure = f"{r['images_per_s']:,.0f} img/s"
        elif kind == "train_step":
            plain = rows.get((kind, shape, "plain"))
            measure = f"{r['syncs_per_step']} syncs"
            if r.get("target") and plain:
                ratio = r["wall_ms"] / plain["wall_ms"]
                measure += f", {ratio:.3f}x plain"
                goal = f"<= {r['target']:.2f}x, 0 syncs"
                ok = "yes" if ratio <= r["target"] and r["syncs_per_step"] == 0 else "NO"
        lines.append(f"{kind + ' ' + shape:<58} {provider:<14} {r['device_ms']:>10.4f} {r['wall_ms']:>9.3f} "
                     f"{measure:>22} {goal:>10}  {ok}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "gpu-out")))
    ap.add_argument("--extras", action="store_true", help="also eager, compiled and Kornia providers")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="only the launch-parameter variants of the open cases")
    a = ap.parse_args(argv)
    if a.summary:
        print(summary(a.out))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing to measure")
        return 0
    results = Results(a.out)
    parts = [("grid_mix", lambda: bench_grid_mix(results, a.extras)), ("loss", lambda: bench_loss(results, a.extras))]
    if a.sweep:
        parts = [("sweep", lambda: bench_sweep(results))]
    elif not a.extras:
        parts.append(("train_step", lambda: bench_train_step(results)))
        parts.append(("search", lambda: bench_search(results)))
    for name, part in parts:
        try:
            part()
        except KeyboardInterrupt:  # the global deadline (timeout -s INT): keep what was measured
            print(f"gpu_bench: interrupted during {name}", flush=True)
            return 130
        except Exception:
            results.add(kind=name, shape="-", provider="error", device_ms=float("nan"), wall_ms=float("nan"),
                        error=traceback.format_exc(limit=-8))
    return 0


if __name__ == "__main__":
    sys.exit(main())
