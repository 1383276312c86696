"""The four-phase PatchMix workflow (paper section 2.4) and the comparison runs, behind ``patchmix run``.

Per seed:

1. phase one: train ``f_T`` with Random PatchMix and ``L_T`` (this model is also the "random" row);
2. phase two: cache ``f_T``'s patch logits on the validation split and run the genetic search;
3. phase three: the policy's class pairs and masks define the guided samples;
4. phase four: train ``f_O`` on original + random-mixed + guided samples with ``L_O`` (the "guided" row);

plus ``base``, ``mixup`` and ``cutmix`` with the same budget and seed. Every job checkpoints; ``resume``
skips finished jobs and continues the interrupted one. The output folder::

    config.json        the resolved configuration (re-run with --config)
    metrics.json       per-run results, the summary table, search results, timings
    log.jsonl          JSON-lines events (epochs, searches, results)
    checkpoints/       <method>-seed<s>.pt (training), search-seed<s>.pkl (search)
    policy.json        the first seed's policy (policies/seed<s>.json: every seed's)
    search/            seed<s>-logbook.json: best/mean/worst fitness and pair changes per generation
    figures/           samples.png, guided_samples.png, fitness.png, pairs.png, accuracy.png, curves.png
    report.md          links the above
"""

from __future__ import annotations

import json
import os
import time

import torch

from . import data as data_mod
from . import report
from .config import Config, ConfigError, atomic_write_text
from .train import (
    Interrupted,
    Log,
    Runtime,
    derive_seed,
    fgsm_evaluate,
    model_name,
    setup_runtime,
    stop_requested,
    train_model,
)


class DistributedFitness:
    """A :class:`patchmix.search.CachedFitness` whose population scoring is split across the ranks of the
    process group (each scores a contiguous share, then ``all_gather``); every rank runs the same search."""

    def __init__(self, fitness, rt: Runtime):
        self._fitness = fitness
        self._rt = rt

    def __getattr__(self, name):
        return getattr(self._fitness, name)

    def __call__(self, pairs, masks):
        import torch.distributed as dist

        rt = self._rt
        n = pairs.shape[0]
        bounds = [n * r // rt.world for r in range(rt.world + 1)]
        lo, hi = bounds[rt.rank], bounds[rt.rank + 1]
        mine = self._fitness(pairs[lo:hi], masks[lo:hi]).double().cpu()
        size = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
        buf = torch.zeros(size, dtype=torch.float64)
        buf[: hi - lo] = mine
        dev = rt._comm_device()
        out = [torch.zeros(size, dtype=torch.float64, device=dev) for _ in range(rt.world)]
        dist.all_gather(out, buf.to(dev))
        return torch.cat([o.cpu()[: b - a] for o, a, b in zip(out, bounds, bounds[1:], strict=False)])


def run_search(cfg: Config, ds: data_mod.Dataset, net, seed: int, rt: Runtime, *, checkpoint: str | None = None,
               resume: bool = False, log: Log | None = None):
    """Phase two: cache ``net``'s patch logits over the validation split and run the genetic search.

    Returns the :class:`patchmix.search.SearchResult`.
    """
    from .search import CachedFitness, CachedLogits
    from .search import search as genetic_search

    log = log or Log(quiet=True, enabled=False)
    s = cfg.search
    t0 = time.perf_counter()
    order = torch.arange(len(ds.val))
    loader = ((data_mod.to_float(x, rt.device), y) for x, y in data_mod.batches(ds.val, 256, order))
    cache = CachedLogits.from_model(net, loader, device=rt.device, grid_size=cfg.model.grid_size,
                                    class_names=list(ds.classes))
    fitness = CachedFitness(cache, num_draws=s.draws, objective=s.objective, seed=derive_seed(seed, "draws") % 2**32)
    if rt.distributed:
        fitness = DistributedFitness(fitness, rt)
    t_cache = time.perf_counter() - t0
    result = genetic_search(
        # every rank resumes from the same checkpoint (each scores its share of the same population); rank 0 writes
        fitness, class_names=list(ds.classes), checkpoint=checkpoint, save_checkpoint=rt.is_main,
        checkpoint_every=s.checkpoint_every, resume=resume, progress=not log.quiet and rt.is_main,
        population=s.population, generations=s.generations, num_pairs=s.max_pairs, same_class=s.same_class,
        direction="max" if s.maximize else "min", cxpb=s.cx_prob, mutpb=s.mut_prob,
        patience=s.patience or None, seed=seed)
    result.extra["cache_seconds"] = t_cache
    log.event("search", seed=seed, fitness=result.best_fitness, generations=result.generations,
              evaluations=result.evaluations, seconds=round(result.time_total, 3),
              pairs=[list(p) for p in result.policy.named_pairs()])
    return result


def _read_json(path: str, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


# settings that may change between a run and its resume without changing its results
RESUME_FREE = {"run.threads", "data.workers", "run.show_samples"}


def check_resume_config(cfg: Config, out: str) -> None:
    """Refuse ``--resume`` when the settings differ from the run in ``out`` (its ``config.json``): finished
    jobs would otherwise be reused beside jobs trained with other settings, in one table."""
    saved = _read_json(os.path.join(out, "config.json"), None)
    if saved is None:
        return

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    old, new = dict(flat(saved)), dict(flat(json.loads(json.dumps(cfg.to_dict()))))  # both as JSON reads them
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in RESUME_FREE and old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(
            f"--resume: the settings differ from the run in {out} ({'; '.join(diff)}); resume with the same "
            f"flags, e.g. --config {os.path.join(out, 'config.json')}, or start a new --out"
        )


def run_workflow(cfg: Config, out: str, *, resume: bool = False, quiet: bool = False) -> dict:
    """Run every configured method for every seed, the search included; write the output folder.

    Returns the metrics dictionary (also written to ``out/metrics.json``).
    """
    t_start = time.perf_counter()
    rt = setup_runtime(cfg)
    main = rt.is_main
    ckdir = os.path.join(out, "checkpoints")
    if resume:
        check_resume_config(cfg, out)
    if main:
        os.makedirs(ckdir, exist_ok=True)
        if not resume:
            for name in ("log.jsonl", "metrics.json"):
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
            for f in os.listdir(ckdir):
                os.remove(os.path.join(ckdir, f))
        cfg.save(os.path.join(out, "config.json"))
    rt.barrier()
    with Log(os.path.join(out, "log.jsonl"), quiet=quiet, enabled=main) as log:
        return _run_workflow(cfg, out, rt, log, resume=resume, t_start=t_start)


def _run_workflow(cfg: Config, out: str, rt: Runtime, log: Log, *, resume: bool, t_start: float) -> dict:
    main = rt.is_main
    ckdir = os.path.join(out, "checkpoints")
    ds = data_mod.from_config(cfg)
    log.info(f"data  {ds.describe()}")
    log.info(f"model {model_name(cfg, ds)} (P = {cfg.model.grid_size}), {cfg.train.epochs} epochs, "
             f"methods {', '.join(cfg.run.methods)}, seeds {', '.join(map(str, cfg.run.seeds))}, device {rt.device}"
             + (f" x {rt.world} processes" if rt.distributed else ""))
    log.event("start", config=cfg.to_dict(), dataset=ds.describe(), resume=resume, world=rt.world)
    previous = _read_json(os.path.join(out, "metrics.json"), {}) if resume else {}
    results: list[dict] = [r for r in previous.get("results", [])]
    searches: dict = dict(previous.get("search", {}))
    done = {(r["method"], r["seed"]) for r in results}
    methods = list(cfg.run.methods)
    order = [m for m in ("base", "mixup", "cutmix", "random", "guided") if m in methods]
    need_ft = "guided" in methods
    if need_ft and "random" not in order:
        order.insert(order.index("guided"), "random")
    first_policy = None
    policies, logbooks = [], {}

    def record(res: dict, net) -> None:
        if cfg.run.fgsm_epsilons:
            res["fgsm"] = fgsm_evaluate(net, ds.test, cfg.run.fgsm_epsilons, 256, rt)
        if main:
            results.append(res)
            _flush()

    def _flush():
        _write_json(os.path.join(out, "metrics.json"), {"results": results, "search": searches, "partial": True})

    try:
        for seed in cfg.run.seeds:
            f_t = None
            for method in order:
                key = (method, seed)
                ck = os.path.join(ckdir, f"{method}-seed{seed}.pt")
                desc = f"{method:>6} seed {seed}"
                policy = None
                if method == "guided":
                    pol_path = os.path.join(out, "policies", f"seed{seed}.json")
                    if key in done and os.path.exists(pol_path):
                        from .search import Policy

                        policy = Policy.load(pol_path, list(ds.classes), cfg.model.grid_size)
                    else:
                        if f_t is None:
                            f_t, _ = train_model(cfg, ds, "random", seed, rt=rt,
                                                 checkpoint=os.path.join(ckdir, f"random-seed{seed}.pt"),
                                                 resume=True, log=log, desc=f"{'random':>6} seed {seed}")
                        log.info(f"search seed {seed}: population {cfg.search.population}, "
                                 f"{cfg.search.generations} generations")
                        result = run_search(cfg, ds, f_t, seed, rt, resume=resume, log=log,
                                            checkpoint=os.path.join(ckdir, f"search-seed{seed}.pkl"))
                        policy = rt.broadcast_object(result.policy)
                        if main:
                            os.makedirs(os.path.dirname(pol_path), exist_ok=True)
                            policy.save(pol_path)
                            _write_json(os.path.join(out, "search", f"seed{seed}-logbook.json"), result.logbook)
                            searches[str(seed)] = {
                                "fitness": result.best_fitness, "generations": result.generations,
                                "stopped_early": result.stopped_early, "evaluations": result.evaluations,
                                "seconds": round(result.time_total, 3),
                                "fitness_seconds": round(result.time_fitness, 3),
                                "cache_seconds": round(result.extra.get("cache_seconds", 0.0), 3),
                                "pairs": [list(p) for p in policy.named_pairs()]}
                            _flush()
                        log.info(f"search seed {seed}: fitness {result.best_fitness:.4f} after "
                                 f"{result.generations} generations ({result.time_total:.1f} s), "
                                 f"{len(policy)} pairs")
                    if first_policy is None:
                        first_policy = policy
                    policies.append(policy)
                    book = _read_json(os.path.join(out, "search", f"seed{seed}-logbook.json"), None)
                    if book:
                        logbooks[f"seed {seed}"] = book
                if key in done:
                    continue
                net, res = train_model(cfg, ds, method, seed, rt=rt, checkpoint=ck, resume=resume,
                                       policy=policy, log=log, desc=desc)
                if method == "random":
                    f_t = net
                record(res, net)
                done.add(key)
                log.info(f"{desc}: test top-1 {100 * res['test_acc']:.2f}%  ({res['train_seconds']:.1f} s)")
                if stop_requested():  # Ctrl-C after this training's last step: its checkpoint is complete
                    raise Interrupted(ck)
    except Interrupted:
        log.info("interrupted: checkpoints are in place; continue with `patchmix run --resume --out " + out + "`")
        raise

    # -------------------------------------------------------------------------------------------
    metrics = {}
    if main:
        summary = report.summarize(results, [m for m in order if m in methods])
        fgsm_summary = {}
        for m in summary:
            rows = [r["fgsm"] for r in results if r["method"] == m and r.get("fgsm")]
            if rows:
                fgsm_summary[m] = {e: sum(r[e] for r in rows) / len(rows) for e in rows[0]}
        figures = make_figures(cfg, ds, out, results, summary, first_policy, policies, logbooks)
        if main and first_policy is not None:
            first_policy.save(os.path.join(out, "policy.json"))
        files = {"config": "config.json", "metrics": "metrics.json", "log": "log.jsonl", "checkpoints": "checkpoints/"}
        if first_policy is not None:
            files.update({"policy": "policy.json", "search logbooks": "search/"})
        metrics = {"config": cfg.to_dict(), "dataset": {"name": ds.name, "description": ds.describe(),
                                                        "classes": list(ds.classes)},
                   "model": model_name(cfg, ds), "device": str(rt.device) + (f" x{rt.world}" if rt.distributed else ""),
                   "threads": torch.get_num_threads(), "summary": summary, "fgsm_summary": fgsm_summary,
                   "results": results, "search": searches, "figures": figures, "files": files,
                   "wall_seconds": round(time.perf_counter() - t_start, 2)}
        _write_json(os.path.join(out, "metrics.json"), metrics)
        report.write_report(out, metrics, figures)
        log.event("done", summary=summary, wall_seconds=metrics["wall_seconds"])
    return metrics


def make_figures(cfg: Config, ds: data_mod.Dataset, out: str, results, summary, policy, policies, logbooks) -> dict:
    """Write the run's PNGs under ``out/figures``; returns ``{name: path relative to out}``."""
    figdir = os.path.join(out, "figures")
    figs: dict[str, str] = {}
    n = cfg.run.show_samples
    if n:
        path = render_samples(cfg, ds, "random", os.path.join(figdir, "samples.png"), n, seed=0)
        figs["samples"] = os.path.relpath(path, out)
        if policy is not None:
            path = render_samples(cfg, ds, "guided", os.path.join(figdir, "guided_samples.png"), n, seed=0,
                                  policy=policy)
            figs["guided_samples"] = os.path.relpath(path, out)
    if logbooks:
        figs["fitness"] = os.path.relpath(report.fitness_figure(logbooks, os.path.join(figdir, "fitness.png")), out)
    if policies:
        figs["pairs"] = os.path.relpath(report.pairs_figure(policies, list(ds.classes),
                                                            os.path.join(figdir, "pairs.png")), out)
    if summary:
        figs["accuracy"] = os.path.relpath(report.accuracy_figure(summary, results,
                                                                  os.path.join(figdir, "accuracy.png")), out)
        figs["curves"] = os.path.relpath(report.curves_figure(results, os.path.join(figdir, "curves.png")), out)
    return figs


def render_samples(cfg: Config, ds: data_mod.Dataset, method: str, path: str, n: int = 16, seed: int = 0,
                   policy=None, split: str = "train") -> str:
    """A PNG grid of ``n`` samples mixed by ``method`` (``guided`` needs ``policy``) from ``split``."""
    from .augment import MixedBatch
    from .train import make_mixer

    g = torch.Generator().manual_seed(derive_seed(seed, "show"))
    sp = getattr(ds, split)
    idx = torch.randperm(len(sp), generator=g)[: max(n, 2)]
    x, y = sp.get(idx)
    x = data_mod.to_float(x, "cpu")
    titles = {"random": "Random PatchMix", "mixup": "Mixup", "cutmix": "CutMix", "guided": "Guided PatchMix",
              "base": "original samples"}
    if method == "guided":
        from .guided import GuidedPatchMix

        gp = GuidedPatchMix(policy, sp.labels, generator=g)
        slot, ia, ib = gp.sample(n)
        xs, ys = sp.get(torch.cat([ia, ib]))
        idx = torch.arange(n)
        mb = gp.compose(data_mod.to_float(xs, "cpu"), slot, idx, idx + n, labels=ys)
    elif method == "base":
        mb = MixedBatch.unmixed(x, y, cfg.model.grid_size)
    else:
        mb = make_mixer(method, cfg, ds, g)(x, y)
    mb = MixedBatch(mb.images[:n], mb.target_a[:n], mb.target_b[:n], mb.lam[:n],
                    None if mb.mask is None else mb.mask[:n])
    return report.mixed_samples_figure(mb, list(ds.classes), path, title=f"{titles[method]} on {ds.name} "
                                       f"(title: soft label)")
