"""The work of each ``patchmix`` command, called by :mod:`patchmix.cli` once it has parsed the flags and resolved the
configuration. Each function takes plain values, does the command's work and returns the text the command prints
(``None`` on ranks other than 0); ``warn`` receives warnings for stderr.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence

from ..choices import PATCH_SUPERVISED
from ..config import Config
from ..errors import ConfigError, OutputError


def run_command(cfg: Config, out: str, *, resume: bool, quiet: bool, line: str) -> str | None:
    """``patchmix run``: the workflow (:func:`patchmix.workflow.run_workflow`); the accuracy table."""
    from .report import format_table
    from .run import run_workflow

    metrics = run_workflow(cfg, out, resume=resume, quiet=quiet, line=line)
    if not metrics:
        return None
    return "\n".join(["", f"test top-1 accuracy, {metrics['dataset']['description']}, model {metrics['model']}, "
                          f"{cfg.train.epochs} epochs, mean ± std over seeds {','.join(map(str, cfg.run.seeds))}:",
                      format_table(metrics["summary"], metrics.get("fgsm_summary"), ema=metrics.get("ema_summary")),
                      "", f"wall time {metrics['wall_seconds']:.1f} s; report: {os.path.join(out, 'report.md')}"])


def ablate_command(table: str, cfg: Config, out: str, *, quiet: bool, line: str) -> str | None:
    """``patchmix ablate``: the ablation (:func:`patchmix.workflow.ablation.run_ablation`); its table."""
    from .ablation import format_ablation, run_ablation

    doc = run_ablation(table, cfg, out, quiet=quiet, command=line)
    if not doc:
        return None
    return "\n".join(["", f"{doc['dataset']}, {cfg.train.epochs} epochs:", format_ablation(doc), "",
                      f"wall time {doc['wall_seconds']:.1f} s; table: {os.path.join(out, table + '.md')} "
                      f"(+ .json, {doc['figure']})"])


def train_command(cfg: Config, out: str, method: str, policy_file: str | None, *, resume: bool, quiet: bool,
                  line: str) -> str | None:
    """``patchmix train``: one training per seed, ``metrics.json``; the accuracy table."""
    from .report import fgsm_summary, format_table, summarize
    from .run import train_job
    from .rundir import write_metrics
    from .session import session

    if method == "guided" and not policy_file:
        raise ConfigError("--method guided needs --policy FILE (a policy.json from `patchmix search` or "
                          "`patchmix run`)")
    if policy_file and method != "guided":
        raise ConfigError(f"--policy is for --method guided, not --method {method}")

    def prepare(ds, rt):  # every rank reads the policy (the same file: the same error, if any)
        from ..search import Policy

        return Policy.load(policy_file, list(ds.classes), cfg.model.grid_size) if policy_file else None

    with session(cfg, out, command="train", mode="resume" if resume else "fresh", quiet=quiet, line=line,
                 prepare=prepare, inputs=(policy_file,)) as s:
        rt, ds, log = s.rt, s.ds, s.log
        log.info(f"data  {ds.describe()}" + (f"; {rt.world} processes" if rt.distributed else ""))
        log.info(f"split {ds.describe_splits()}")
        results = []
        for seed in cfg.run.seeds:
            _, res, ck = train_job(cfg, ds, out, rt, log, method, seed, policy=s.prepared, resume=resume)
            res["checkpoint"] = ck
            results.append(res)
        if not rt.is_main:
            return None
        summary = summarize(results, [method])
        ema = summarize(results, [method], key="ema_test_acc")
        write_metrics(os.path.join(out, "metrics.json"), {"config": cfg.to_dict(), "results": results,
                                                          "summary": summary, "ema_summary": ema, "world": rt.world})
        return format_table(summary, fgsm_summary(results, [method]) or None, ema=ema) + \
            f"\ncheckpoints and metrics.json in {out}"


def search_command(cfg: Config, out: str, checkpoint_file: str | None, *, resume: bool, quiet: bool, line: str,
                   warn: Callable[[str], None]) -> str | None:
    """``patchmix search``: phase two on a checkpoint's ``f_T`` (or on one trained first); the policy, its logbook,
    the search check and the figures."""
    from ..files import write_json
    from ..training import train_model
    from ..training.checkpoint import load_checkpoint, model_from_checkpoint
    from .figures import fidelity_figure, fitness_figure, pairs_figure, render_samples
    from .report import fidelity_summary
    from .run import run_search, search_record
    from .rundir import checkpoint_path, logbook_path, search_checkpoint_path, write_metrics
    from .session import session

    seed = cfg.run.seeds[0]

    def prepare(ds, rt):  # the model to search with, read and checked before the folder is touched
        if not checkpoint_file:
            return None
        ckpt = load_checkpoint(checkpoint_file)
        net, _, _ = model_from_checkpoint(ckpt, ds, grid_size=cfg.model.grid_size, name=checkpoint_file)
        train = ckpt["config"].get("train", {})
        if rt.is_main and (ckpt.get("method") not in PATCH_SUPERVISED or not train.get("patch_weight", 1)):
            warn(f"--model-checkpoint {checkpoint_file} holds a model trained with --method {ckpt.get('method')}"
                 f"{' and no patch term' if not train.get('patch_weight', 1) else ''}: its patch head was not "
                 f"trained, so the search scores noise; use a checkpoint of `patchmix train --method random`")
        if rt.is_main and not ckpt.get("complete"):
            warn(f"--model-checkpoint {checkpoint_file} is an unfinished training (epoch {ckpt.get('epoch')})")
        return net.to(rt.device)

    with session(cfg, out, command="search", mode="resume" if resume else "fresh", quiet=quiet, line=line,
                 search=True, prepare=prepare, inputs=(checkpoint_file,)) as s:
        rt, ds, log, net = s.rt, s.ds, s.log, s.prepared
        if net is None:
            log.info("no --model-checkpoint: training the Random PatchMix model f_T first (phase one)")
            net, _ = train_model(cfg, ds, "random", seed, rt=rt, log=log, resume=resume,
                                 checkpoint=checkpoint_path(out, "random", seed), desc=f"random seed {seed}")
        result = run_search(cfg, ds, net, seed, rt, checkpoint=search_checkpoint_path(out), resume=resume, log=log)
        if not rt.is_main:
            return None
        result.policy.save(os.path.join(out, "policy.json"))
        write_json(logbook_path(out), result.logbook)
        figdir = os.path.join(out, "figures")
        if result.logbook:  # the exhaustive solver has no generations
            fitness_figure({"search": result.logbook}, os.path.join(figdir, "fitness.png"))
        pairs_figure([result.policy], list(ds.classes), os.path.join(figdir, "pairs.png"))
        searches = {str(seed): search_record(result)}
        if fidelity_summary(searches):
            fidelity_figure(searches, os.path.join(figdir, "fidelity.png"))
        write_metrics(os.path.join(out, "metrics.json"), {"search": searches, "fidelity": fidelity_summary(searches)})
        render_samples(cfg, ds, "guided", os.path.join(figdir, "guided_samples.png"), 16, seed, result.policy)
        return "\n".join([
            f"best fitness {result.best_fitness:.4f} after {result.generations} generations "
            f"({result.time_total:.1f} s, {result.evaluations} evaluations); {len(result.policy)} pairs:",
            "  " + ", ".join(f"{a}+{b}" for a, b in result.policy.named_pairs()),
            f"policy: {os.path.join(out, 'policy.json')}; the search check in metrics.json; figures in {figdir}"])


def show_command(cfg: Config, method: str, policy_file: str | None, output: str, num: int, seed: int,
                 split: str) -> str:
    """``patchmix show``: a PNG of ``num`` mixed samples; the path written."""
    from .figures import render_samples
    from .rundir import check_writable
    from .session import load_data

    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    method = "guided" if policy_file else method
    if method == "guided" and not policy_file:
        raise ConfigError("--method guided needs --policy FILE")
    check_writable(output, "--output", folder=False)
    ds = load_data(cfg)
    cfg.check_dataset(ds)
    policy = None
    if policy_file:
        from ..search import Policy

        policy = Policy.load(policy_file, list(ds.classes), cfg.model.grid_size)
    try:
        return render_samples(cfg, ds, method, output, num, seed, policy, split=split)
    except OSError as exc:
        raise OutputError(f"--output {output}: cannot write it ({exc.strerror})") from None


def parse_epsilons(text: str) -> list[float]:
    """``--epsilons``: comma-separated finite numbers >= 0."""
    try:
        eps = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        eps = None
    if eps is None or not all(math.isfinite(e) and e >= 0 for e in eps):
        raise ConfigError(f"--epsilons must be comma-separated numbers >= 0 (pixel units), got {text!r}")
    return eps


def eval_command(paths: Sequence[str], *, epsilons: str, split: str, data: str | None, batch_size: int,
                 device: str, json_path: str | None, localization: bool = False, cam_head: str = "image",
                 cam_curve_interval: float = 0.01) -> str:
    """``patchmix eval``: top-1 and FGSM accuracy of each checkpoint (every one read and checked against its data
    before any is evaluated), with ``localization`` also the CAM scores of
    :func:`patchmix.workflow.localize.model_localization` (thresholds chosen on val, scores on ``split``); the
    table, and the rows as JSON in ``json_path``."""
    import torch

    from ..files import write_json
    from ..training import Runtime, evaluate, fgsm_evaluate
    from ..training.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from .rundir import check_writable
    from .session import load_data

    if not paths:
        raise ConfigError("eval: name at least one checkpoint (patchmix eval runs/latest/checkpoints/random-seed0.pt)")
    eps = parse_epsilons(epsilons)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if localization and split == "train":
        raise ConfigError("--localization scores the val or test split (the train split has labels only)")
    if localization and not 0 < cam_curve_interval < 1:
        raise ConfigError(f"--cam-curve-interval must be in (0, 1), got {cam_curve_interval}")
    Config().override({"run.device": device}).check_device()
    if json_path:
        check_writable(json_path, "--json", folder=False)
    rt = Runtime(torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")))
    jobs, datasets = [], {}
    for path in paths:
        ckpt = load_checkpoint(path)  # the one read of this file
        cfg = checkpoint_config(ckpt, path)
        if data:
            cfg = cfg.override({"data.source": data})
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
        if key not in datasets:
            datasets[key] = load_data(cfg)
        if localization and getattr(datasets[key], split).boxes is None:
            raise ConfigError(f"--localization: {path}'s dataset ({datasets[key].name}) has no boxes; pass --data with "
                              "a localisation set (fmnist-loc, or a folder in wsolevaluation's layout)")
        net, _, _ = model_from_checkpoint(ckpt, datasets[key], name=path)
        jobs.append((path, ckpt, net.to(rt.device), getattr(datasets[key], split), datasets[key]))
    rows, loc_lines = [], []
    for path, ckpt, net, part, ds in jobs:
        row = {"checkpoint": path, "method": ckpt["method"], "seed": ckpt["seed"], "epoch": ckpt["epoch"],
               "complete": bool(ckpt.get("complete")), "split": split}
        if eps:
            acc = fgsm_evaluate(net, part, eps, batch_size, rt)
            row["top1"] = acc["0"]
            row["fgsm"] = {k: v for k, v in acc.items() if k != "0"}
        else:
            row["top1"] = evaluate(net, part, batch_size, rt)["acc"]
        if localization:
            from .localize import localization_line, model_localization

            row["localization"] = model_localization(net, ds, rt.device, split=split, head=cam_head,
                                                     batch_size=batch_size, cam_curve_interval=cam_curve_interval)
            loc_lines.append(f"{path[-40:]:<40} {cam_head} CAM {localization_line(row['localization'])}")
        rows.append(row)
    lines = [f"{'checkpoint':<40} {'method':>7} {'seed':>4} {'top-1':>7}" + "".join(f" {'eps=' + f'{e:g}':>9}" for e in eps)]
    for r in rows:
        lines.append(f"{r['checkpoint'][-40:]:<40} {r['method']:>7} {r['seed']:>4} {100 * r['top1']:>6.2f}%"
                     + "".join(f" {100 * r['fgsm'][f'{e:g}']:>8.2f}%" for e in eps))
    lines += loc_lines
    if json_path:
        try:
            write_json(json_path, rows)
        except OSError as exc:
            raise OutputError(f"--json {json_path}: cannot write it ({exc.strerror})") from None
    return "\n".join(lines)


__all__ = ["ablate_command", "eval_command", "parse_epsilons", "run_command", "search_command", "show_command",
           "train_command"]
