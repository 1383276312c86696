"""The four-phase PatchMix workflow (paper section 2.4) and the comparison runs, behind ``patchmix run``.

Per seed:

1. phase one: train ``f_T`` with Random PatchMix and ``L_T`` (this model is also the "random" row);
2. phase two: cache ``f_T``'s patch logits on the validation split and run the genetic search;
3. phase three: the policy's class pairs and masks define the guided samples;
4. phase four: train ``f_O`` on original + random-mixed + guided samples with ``L_O`` (the "guided" row);

plus ``base``, ``mixup`` and ``cutmix`` with the same budget and seed. Every job checkpoints; ``resume``
skips finished jobs and continues the interrupted one. The output folder is described in
:mod:`patchmix.workflow.rundir`; the figures and the report come from :mod:`patchmix.workflow.report`.
"""

from __future__ import annotations

import os
import time

import torch

from .. import data as data_mod
from ..choices import METHOD_LABELS, METHODS, PATCH_SUPERVISED
from ..config import Config
from ..files import read_json, write_json
from ..seeding import derive_seed
from ..training import Interrupted, Runtime, fgsm_evaluate, train_model
from ..training.interrupt import stop_requested
from ..training.log import Log
from ..training.model import model_name
from . import figures, report, rundir
from .stats import paired_summary


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
        dev = rt.comm_device()
        out = [torch.zeros(size, dtype=torch.float64, device=dev) for _ in range(rt.world)]
        dist.all_gather(out, buf.to(dev))
        return torch.cat([o.cpu()[: b - a] for o, a, b in zip(out, bounds, bounds[1:], strict=False)])


def validation_images(ds: data_mod.Dataset):
    """The validation images as uint8 ``(V, C, H, W)`` on the CPU, or None when they would take more than
    :data:`patchmix.search.settings.VALIDATION_MAX_BYTES`."""
    from ..search.settings import VALIDATION_MAX_BYTES

    if len(ds.val) * ds.channels * ds.image_size ** 2 > VALIDATION_MAX_BYTES:
        return None
    return ds.val.get(torch.arange(len(ds.val)))[0]


#: The last interaction table built, for the next search on the same f_T with the same fit settings (the four
#: searches of ``ablate table6`` share one f_T and its draws: one fit instead of four).
_LAST_TABLE: dict = {}


def _table_key(net, cfg: Config, draw_seed: int, rt: Runtime) -> tuple:
    s = cfg.search
    checksum = float(sum(p.detach().double().sum() for p in net.parameters()))  # the same weights, not just object
    return (id(net), checksum, draw_seed, s.num_draws, s.objective, s.fit_masks(), s.ridge, s.mask_distribution,
            s.precision, cfg.model.grid_size, rt.rank, rt.world)


def build_fitness(cfg: Config, ds: data_mod.Dataset, net, cache, seed: int, rt: Runtime, log: Log, images):
    """The search's fitness on ``net`` (``f_T``) with the run's ``search`` settings: the interaction table
    (:func:`patchmix.search.build_interaction_table`, each DDP rank fitting a share of the pairs; reused from the
    previous search when ``f_T``, the draws and the fit's settings are the same), the linear one, or the paper's
    exact fitness (:class:`patchmix.search.ExactFitness`: ``f_T`` on every composed sample; under ``torchrun``
    each rank scores its share of every population). A table's ``build`` holds what the fit cost."""
    from ..search import CachedFitness, ExactFitness, build_interaction_table, draw_pairs, pair_classes
    from ..search.cache import draw_period

    s = cfg.search
    draw_seed = derive_seed(seed, "draws") % 2**32
    table = None
    if s.fitness == "interaction":  # images is not None: Config.check_dataset refused a split too large to hold
        key = _table_key(net, cfg, draw_seed, rt)
        if _LAST_TABLE.get("key") == key:
            table, stats = _LAST_TABLE["table"], dict(_LAST_TABLE["stats"], reused=True)
        else:
            K = ds.num_classes
            draws = draw_pairs(cache.labels, K, s.num_draws, draw_seed)
            Q = draws.shape[0]
            lo, hi = Q * rt.rank // rt.world, Q * (rt.rank + 1) // rt.world
            # composed where f_T runs: grid_mix on the device (the uint8 split is small next to the forward passes)
            part, stats = build_interaction_table(
                net, images.to(rt.device), draws, pair_classes(K), cfg.model.grid_size, objective=s.objective,
                masks_per_draw=s.fit_masks(), ridge=s.ridge, distribution=s.mask_distribution, seed=draw_seed,
                device=rt.device, pair_range=(lo, hi), precision=s.precision,
                progress=log.progress if rt.is_main else False)
            table = torch.cat(rt.gather_objects(part)) if rt.distributed else part
            stats["forward_passes"] = int(draw_period(draws).sum()) * s.fit_masks()  # every rank's share
            _LAST_TABLE.clear()
            _LAST_TABLE.update(key=key, table=table, stats=stats)
    fitness = CachedFitness(cache, num_draws=s.num_draws, objective=s.objective, seed=draw_seed, table=table)
    if s.fitness == "exact":  # the paper's fitness: f_T on every composed sample, on the same draws
        log.info(f"exact fitness: f_T runs on {s.num_draws} composed images per slot of every individual")
        return ExactFitness(net, images.to(rt.device), fitness, precision=s.precision)
    if table is not None:
        fitness.build = dict(stats, masks_per_draw=s.fit_masks(), ridge=s.ridge, distribution=s.mask_distribution,
                             effort=s.effort, precision=s.precision)
        how = "reused from the previous search" if stats.get("reused") else f"fitted in {stats['seconds']:.1f} s"
        log.info(f"interaction fitness: {fitness.build['forward_passes']} composed images scored by f_T, {how} "
                 f"(in-sample R^2 {stats['r2']:.2f})")
    return fitness


def check_search(cfg: Config, ds: data_mod.Dataset, net, fitness, result, seed: int, images,
                 log: Log | None = None) -> dict:
    """The search check (:func:`patchmix.search.search_check`): the fitness's fidelity and the search's efficacy
    against ``net`` (``f_T``) with ``run.fidelity_individuals`` random policies and ``run.fidelity_draws`` draws of
    its own (capped by ``search.effort``), with a progress bar on ``log``; ``{"skipped": why}`` when the validation
    split is too large to hold."""
    from ..search import search_check

    if images is None:
        return {"skipped": "the validation split is too large to hold in memory for the check"}
    s = cfg.search
    final = [result.population, result.offspring] if result.population else None
    return search_check(fitness, net, images, chosen=(result.best_pairs, result.best_masks),
                        num_pairs=s.resolved_pairs(ds.num_classes), final=final, same_class=s.same_class,
                        direction=s.direction, num_draws=s.check_draws(cfg.run.fidelity_draws),
                        random_policies=cfg.run.fidelity_individuals, seed=derive_seed(seed, "fidelity") % 2**32,
                        precision=s.precision, progress=(log or Log.silent()).progress)


def run_search(cfg: Config, ds: data_mod.Dataset, net, seed: int, rt: Runtime, *, checkpoint: str | None = None,
               resume: bool = False, log: Log | None = None):
    """Phase two: cache ``net``'s patch logits over the validation split, build the search's fitness
    (:func:`build_fitness`) and run the search with the run's ``search`` settings
    (:class:`patchmix.search.SearchConfig`). Returns the ``SearchResult``; on rank 0 its ``extra["fidelity"]``
    holds the search check (:func:`check_search`) unless ``run.fidelity_individuals`` is 0, and
    ``extra["fitness"]`` what the fitness's fit cost."""
    from ..search import CachedLogits, search

    log = log or Log.silent()
    s = cfg.search
    t0 = time.perf_counter()
    order = torch.arange(len(ds.val))
    loader = ((data_mod.to_float(x, rt.device), y) for x, y in data_mod.batches(ds.val, 256, order))
    cache = CachedLogits.from_model(net, loader, device=rt.device, grid_size=cfg.model.grid_size,
                                    class_names=list(ds.classes))
    images = validation_images(ds) if s.fitness != "linear" or cfg.run.fidelity_individuals else None
    fitness = build_fitness(cfg, ds, net, cache, seed, rt, log, images)
    scorer = DistributedFitness(fitness, rt) if rt.distributed else fitness
    t_cache = time.perf_counter() - t0
    # every rank resumes from the same checkpoint (each scores its share of the same population); rank 0 writes
    result = search(scorer, s, seed=seed, class_names=list(ds.classes), checkpoint=checkpoint,
                    save_checkpoint=rt.is_main, resume=resume, progress=not log.quiet and rt.is_main)
    result.extra["cache_seconds"] = t_cache
    result.extra["fitness"] = dict(getattr(fitness, "build", {}), fitness=fitness.fitness_kind)
    log.event("search", seed=seed, fitness=result.best_fitness, generations=result.generations,
              evaluations=result.evaluations, seconds=round(result.time_total, 3),
              pairs=[list(p) for p in result.policy.named_pairs()])
    if rt.is_main and cfg.run.fidelity_individuals:
        fid = result.extra["fidelity"] = check_search(cfg, ds, net, fitness, result, seed, images, log)
        log.event("fidelity", seed=seed, **report.fidelity_event(fid))
        if "seconds" in fid:
            log.info(f"search check: {fid['forward_passes']} composed images scored by f_T in {fid['seconds']:.1f} s "
                     f"({fid['forward_passes'] / max(fid['seconds'], 1e-9):.0f} images/s)")
        log.info(f"search seed {seed}: {report.fidelity_text(fid)}")
    return result


def train_job(cfg: Config, ds: data_mod.Dataset, out: str, rt: Runtime, log: Log, method: str, seed: int, *,
              policy=None, tag: str = "", resume: bool = False, fgsm: bool = True):
    """One training job of an output folder (its checkpoint ``rundir.checkpoint_path(out, method, seed, tag)``):
    trains (or, resuming, continues or reads the finished job), adds FGSM accuracy, logs the result line.
    Returns ``(model, result, checkpoint path)``."""
    desc = f"{method:>6} seed {seed}" + (f" [{tag}]" if tag else "")
    ck = rundir.checkpoint_path(out, method, seed, tag)
    net, res = train_model(cfg, ds, method, seed, rt=rt, checkpoint=ck, resume=resume, policy=policy, log=log,
                           desc=desc)
    if fgsm and cfg.run.fgsm_epsilons:
        res["fgsm"] = fgsm_evaluate(net, ds.test, cfg.run.fgsm_epsilons, 256, rt)
    log.info(f"{desc}: test top-1 {100 * res['test_acc']:.2f}%  ({res['train_seconds']:.1f} s)")
    if ds.test.boxes is not None and rt.is_main:
        res["localization"] = job_localization(cfg, ds, net, method, rt, log, desc)
    return net, res, ck


def job_localization(cfg: Config, ds: data_mod.Dataset, net, method: str, rt: Runtime, log: Log, desc: str) -> dict:
    """``{head: scores}``: :func:`patchmix.workflow.localize.model_localization` of a trained job for each of
    ``run.cam_heads`` (the patch head's only for the methods that train it)."""
    from .localize import localization_line, model_localization

    out = {}
    for head in cfg.run.cam_heads:
        if head == "patch" and method not in PATCH_SUPERVISED:
            continue
        t0 = time.perf_counter()
        scores = model_localization(net, ds, rt.device, head=head, cam_curve_interval=cfg.run.cam_curve_interval)
        scores["seconds"] = round(time.perf_counter() - t0, 2)
        out[head] = scores
        log.info(f"{desc}: {head} CAM {localization_line(scores)} ({scores['seconds']:.1f} s)")
    return out


def stop_if_requested(checkpoint: str) -> None:
    """Ctrl-C after a training's last step: its checkpoint is complete; stop before the next job."""
    if stop_requested():
        raise Interrupted(checkpoint)


def search_record(result) -> dict:
    """What ``metrics.json`` keeps of a search (``search.<seed>``): its fitness and cost, the fit's statistics
    (``fitness_build``), the chosen pairs and the search check (``fidelity``)."""
    return {"fitness": result.best_fitness, "generations": result.generations,
            "solver": result.policy.search.get("solver", "ga"), "stopped_early": result.stopped_early,
            "evaluations": result.evaluations,
            "seconds": round(result.time_total, 3), "fitness_seconds": round(result.time_fitness, 3),
            "cache_seconds": round(result.extra.get("cache_seconds", 0.0), 3),
            "fitness_build": result.extra.get("fitness"),
            "pairs": [list(p) for p in result.policy.named_pairs()], "fidelity": result.extra.get("fidelity")}


def search_policy(cfg: Config, ds: data_mod.Dataset, out: str, rt: Runtime, log: Log, f_t, seed: int, *,
                  tag: str = "", resume: bool = False):
    """Phases two and three of an output folder: the search on ``f_t`` (checkpoint
    ``rundir.search_checkpoint_path(out, seed, tag)``), its policy (``policies/``) and logbook (``search/``)
    written by rank 0. Returns ``(policy, record)``: the policy on every rank; the search's record for
    ``metrics.json`` on rank 0 (None elsewhere)."""
    s = cfg.search
    label = f"search seed {seed}" + (f" [{tag}]" if tag else "")
    log.info(f"{label}: population {s.population}, {s.generations} generations, {s.direction}imise, same-class "
             f"pairs {s.same_class}")
    result = run_search(cfg, ds, f_t, seed, rt, resume=resume, log=log,
                        checkpoint=rundir.search_checkpoint_path(out, seed, tag))
    policy = rt.broadcast_object(result.policy)
    record = None
    if rt.is_main:
        policy.save(rundir.policy_path(out, seed, tag))
        write_json(rundir.logbook_path(out, seed, tag), result.logbook)
        record = search_record(result)
    log.info(f"{label}: fitness {result.best_fitness:.4f} after {result.generations} generations "
             f"({result.time_total:.1f} s), {len(policy)} pairs")
    return policy, record


def run_workflow(cfg: Config, out: str, *, resume: bool = False, quiet: bool = False,
                 line: str | None = None) -> dict:
    """Run every configured method for every seed, the search included; write the output folder
    (:func:`patchmix.workflow.session.session`: everything checked before anything is written, the folder
    locked; a fresh run into an earlier run's folder replaces that run's files and only those; ``resume``
    refuses other settings). Returns the metrics dictionary (also written to ``out/metrics.json``)."""
    from .session import session

    t_start = time.perf_counter()
    with session(cfg, out, command="run", mode="resume" if resume else "fresh", quiet=quiet, line=line,
                 search="guided" in cfg.run.methods) as s:
        return Workflow(cfg, out, s.rt, s.log, resume, s.ds).run(t_start)


class Workflow:
    """One ``patchmix run``: the jobs of every seed in order, their results, and the report."""

    def __init__(self, cfg: Config, out: str, rt: Runtime, log: Log, resume: bool,
                 ds: data_mod.Dataset | None = None):
        self.cfg, self.out, self.rt, self.log, self.resume = cfg, out, rt, log, resume
        self.ds = ds if ds is not None else data_mod.from_config(cfg)
        previous = read_json(os.path.join(out, "metrics.json"), {}) if resume else {}
        self.results: list[dict] = list(previous.get("results", []))
        self.searches: dict = dict(previous.get("search", {}))
        self.done = {(r["method"], r["seed"]) for r in self.results}
        self.methods = [m for m in METHODS if m in cfg.run.methods]
        self.jobs = list(self.methods)
        if "guided" in self.jobs and "random" not in self.jobs:  # phase four needs phase one's f_T
            self.jobs.insert(self.jobs.index("guided"), "random")
        self.policies: dict[int, object] = {}
        self.logbooks: dict[str, list] = {}

    def run(self, t_start: float) -> dict:
        cfg, ds, log = self.cfg, self.ds, self.log
        log.info(f"data  {ds.describe()}")
        log.info(f"split {ds.describe_splits()}")
        log.info(f"model {model_name(cfg, ds)} (P = {cfg.model.grid_size}), {cfg.train.epochs} epochs, methods "
                 f"{', '.join(cfg.run.methods)}, seeds {', '.join(map(str, cfg.run.seeds))}, device {self.rt.device}"
                 + (f" x {self.rt.world} processes" if self.rt.distributed else ""))
        log.event("start", config=cfg.to_dict(), dataset=ds.describe(), resume=self.resume, world=self.rt.world)
        try:
            for seed in cfg.run.seeds:
                f_t = None  # phase one's model of this seed
                for method in self.jobs:
                    policy = self.policy(seed, f_t) if method == "guided" else None  # phases one to three
                    if (method, seed) in self.done:
                        continue
                    net = self.train(method, seed, policy)  # phase one ("random"), phase four ("guided"), the rest
                    if method == "random":
                        f_t = net
        except Interrupted:
            log.info(f"interrupted: checkpoints are in place; continue with `patchmix run --resume --out {self.out}`")
            raise
        return self.finish(t_start) if self.rt.is_main else {}

    def train(self, method: str, seed: int, policy):
        net, res, ck = train_job(self.cfg, self.ds, self.out, self.rt, self.log, method, seed, policy=policy,
                                 resume=self.resume)
        if self.rt.is_main:
            self.results.append(res)
            self.flush()
        self.done.add((method, seed))
        stop_if_requested(ck)
        return net

    def policy(self, seed: int, f_t):
        """Phases one to three for ``seed``: the policy of the seed's finished search
        (:func:`rundir.finished_policy`, when ``metrics.json`` holds its record), else ``f_T`` (trained, or read
        from its finished checkpoint) and the search (resuming its checkpoint)."""
        cfg, ds, rt, log = self.cfg, self.ds, self.rt, self.log
        policy = None
        if str(seed) in self.searches:
            policy = rundir.finished_policy(self.out, seed, list(ds.classes), cfg.model.grid_size)
        if policy is None:
            if f_t is None:
                f_t, _ = train_model(cfg, ds, "random", seed, rt=rt, checkpoint=rundir.checkpoint_path(
                    self.out, "random", seed), resume=True, log=log, desc=f"{'random':>6} seed {seed}")
            policy, record = search_policy(cfg, ds, self.out, rt, log, f_t, seed, resume=self.resume)
            if rt.is_main:
                self.searches[str(seed)] = record
                self.flush()
        self.policies[seed] = policy
        book = read_json(rundir.logbook_path(self.out, seed), None)
        if book:
            self.logbooks[f"seed {seed}"] = book
        return policy

    def flush(self) -> None:
        """The results so far (``"partial": True``), so that an interrupted run shows what it finished."""
        rundir.write_metrics(os.path.join(self.out, "metrics.json"),
                             {"results": self.results, "search": self.searches, "partial": True})

    def finish(self, t_start: float) -> dict:
        """The summary table, figures, ``metrics.json`` and ``report.md`` (rank 0)."""
        cfg, ds, out, results = self.cfg, self.ds, self.out, self.results
        summary = report.summarize(results, self.methods)
        fgsm_summary = report.fgsm_summary(results, summary)
        policies = list(self.policies.values())
        first_policy = policies[0] if policies else None
        paired = paired_summary(results, self.methods)
        drawn = figures.make_figures(cfg, ds, out, results, summary, first_policy, policies, self.logbooks,
                                     self.searches, paired)
        localization = self.localization(drawn)
        files = {"config": "config.json", "metrics": "metrics.json", "log": "log.jsonl", "checkpoints": "checkpoints/"}
        if first_policy is not None:
            first_policy.save(os.path.join(out, "policy.json"))
            files.update({"policy": "policy.json", "search logbooks": "search/"})
        rt = self.rt
        metrics = {"config": cfg.to_dict(), "dataset": {"name": ds.name, "description": ds.describe(),
                                                        "splits": ds.split_rule, "classes": list(ds.classes)},
                   "model": model_name(cfg, ds), "device": str(rt.device) + (f" x{rt.world}" if rt.distributed else ""),
                   "threads": torch.get_num_threads(), "summary": summary, "fgsm_summary": fgsm_summary,
                   "ema_summary": report.summarize(results, self.methods, key="ema_test_acc"),
                   "paired": paired, "results": results, "search": self.searches,
                   "fidelity": report.fidelity_summary(self.searches), "localization": localization,
                   "figures": drawn, "files": files,
                   "wall_seconds": round(time.perf_counter() - t_start, 2)}
        rundir.write_metrics(os.path.join(out, "metrics.json"), metrics)
        report.write_report(out, metrics, drawn)
        self.log.event("done", summary=summary, wall_seconds=metrics["wall_seconds"])
        return metrics

    def localization(self, drawn: dict) -> dict | None:
        """On a dataset with boxes: the localisation summary (:func:`.localize.localization_summary`, the centre
        baseline included) and the CAM figure of the first seed's models (``figures/cams.png``, added to
        ``drawn``); None otherwise."""
        from ..training.checkpoint import model_from_checkpoint
        from .localize import cam_examples, centre_baseline, centre_examples, example_indices, localization_summary

        cfg, ds, rt = self.cfg, self.ds, self.rt
        if ds.test.boxes is None or not any(r.get("localization") for r in self.results):
            return None
        interval = cfg.run.cam_curve_interval
        centre = centre_baseline(ds, cam_curve_interval=interval)
        summary = localization_summary(self.results, self.methods, centre)
        seed, idx, rows = cfg.run.seeds[0], example_indices(ds.test), {}
        for m in self.methods:
            res = next((r for r in self.results if r["method"] == m and r["seed"] == seed), None)
            ck = rundir.checkpoint_path(self.out, m, seed)
            if res is None or "image" not in (res.get("localization") or {}) or not os.path.exists(ck):
                continue
            net, _, _ = model_from_checkpoint(ck, ds, name=ck)
            tau = res["localization"]["image"]["thresholds"]["v1"]
            rows[METHOD_LABELS.get(m, m)] = cam_examples(net.to(rt.device), ds.test, idx, tau, rt.device)
        if rows:
            rows["centre baseline"] = centre_examples(next(iter(rows.values())), centre["thresholds"]["v1"])
            path = os.path.join(self.out, "figures", "cams.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            figures.cam_figure(rows, list(ds.classes), path, title=f"CAMs of seed {seed}'s models (test images): "
                               "GT box white, predicted box red (MaxBoxAcc's threshold chosen on val)")
            drawn["cams"] = os.path.join("figures", "cams.png")
        return summary


__all__ = ["DistributedFitness", "Workflow", "build_fitness", "check_search", "run_search", "run_workflow",
           "search_policy", "search_record",
           "stop_if_requested", "train_job"]
