"""The model a run trains: a patch-head network from :mod:`patchmix.models`, chosen by name or by the
dataset's image size, behind the dataset's normalisation."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..config import Config
from ..errors import CheckpointError, ConfigError

#: torchvision's ImageNet normalisation (``model.normalize=imagenet``), which ImageNet weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` for inputs in ``[0, 1]``: attacks (FGSM) and mixing work in pixel units.

    ``forward(x (N, C, H, W)) -> (image_logits (N, K), patch_logits (N, K, P, P))``.
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def grid_size(self) -> int:
        return self.model.grid_size

    def forward(self, x: Tensor):
        return self.model((x - self.mean) / self.std)


def model_name(cfg: Config, ds: data_mod.Dataset) -> str:
    """``model.name``, or for ``auto``: the dataset's own default (``Dataset.default_model``: ``small_resnet`` for
    mnist5k and the idx datasets; on 2 CPU cores about 0.8 s per epoch of mnist5k's 3,500 images and 1.6 to 2.2 s
    per epoch of the fmnist preset's 9,000), else ``small_cnn`` for digits and images up to 16 pixels,
    ``resnet32`` up to 32 pixels, ``resnet50`` above."""
    name = cfg.model.name
    if name != "auto":
        return name
    if ds.default_model:
        return ds.default_model
    if ds.name == "digits" or ds.image_size <= 16:
        return "small_cnn"
    return "resnet32" if ds.image_size <= 32 else "resnet50"


def build_model(cfg: Config, ds: data_mod.Dataset) -> NormalizedModel:
    """The configured patch-head model for ``ds``, wrapped with the dataset's normalisation."""
    from ..models import create_model

    kw = {}
    m = cfg.model
    name = model_name(cfg, ds)
    key = name.replace("-", "_").lower()
    if m.width is not None and key in ("small_cnn", "small_resnet"):
        kw["width"] = m.width
    if m.last_stride is not None:
        if key != "resnet50":
            raise ConfigError(f"model.last_stride applies to resnet50, not {name} (docs/models.md gives each model's "
                              f"feature-map size)", key="model.last_stride")
        kw["last_stride"] = m.last_stride
    mean, std = ds.mean, ds.std
    if m.normalize == "imagenet":
        if ds.channels != 3:
            raise ConfigError(f"model.normalize=imagenet needs 3-channel images, the data has {ds.channels}",
                              key="model.normalize")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        model = create_model(name, ds.num_classes, grid_size=m.grid_size, in_channels=ds.channels,
                             separate_patch_classifier=m.separate_patch_classifier, **kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return NormalizedModel(model, mean, std)


def file_sha256(path: str) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_init(cfg: Config) -> None:
    """Pin ``train.init`` in ``cfg`` (in place): its absolute path, and its sha256 in ``train.init_sha256``, or,
    where a hash is already recorded (``--config``, ``--resume``), check that the file still has it.
    :class:`~patchmix.errors.CheckpointError` for a missing or changed file. Nothing to do without ``train.init``."""
    t = cfg.train
    if not t.init:
        return
    path = os.path.abspath(os.path.expanduser(t.init))
    if not os.path.isfile(path):
        raise CheckpointError(f"--init {t.init}: no such file")
    sha = file_sha256(path)
    if t.init_sha256 and t.init_sha256 != sha:
        raise CheckpointError(f"--init {t.init}: the file changed since its sha256 was recorded (recorded "
                              f"{t.init_sha256[:12]}..., now {sha[:12]}...); pass --init again to start from the "
                              f"file as it is")
    t.init, t.init_sha256 = path, sha


def init_weights(cfg: Config, net: nn.Module, log=None, desc: str = ""):
    """Load ``train.init`` into ``net`` (:func:`patchmix.models.load_weights`) and log its one-line report; None
    without ``train.init``. A file that does not fit raises :class:`~patchmix.errors.CheckpointError`."""
    if not cfg.train.init:
        return None
    from ..models import load_weights

    report = load_weights(net, cfg.train.init)
    if log is not None:
        log.info(f"{desc}: {report}" if desc else str(report))
        log.event("init", file=cfg.train.init, sha256=cfg.train.init_sha256, loaded=len(report.loaded),
                  fresh=report.fresh, ignored=report.ignored)
    return report


def check_model(cfg: Config, ds: data_mod.Dataset) -> None:
    """Everything about the model that can fail, before a command writes anything: the model builds with these
    settings for ``ds`` (``model.last_stride``, ``model.normalize``), ``train.freeze`` and ``train.lr_mult`` fit it,
    and ``train.init`` loads into it. Raises :class:`~patchmix.errors.ConfigError` or
    :class:`~patchmix.errors.CheckpointError`."""
    from .optim import param_groups

    net = build_model(cfg, ds)
    init_weights(cfg, net)
    param_groups(net, cfg.train.lr, cfg.train.lr_mult, cfg.train.freeze)


def image_logits(out) -> Tensor:
    """The image logits ``(N, K)`` of a model's output (a bare tensor, or the first of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NormalizedModel", "build_model", "check_model", "file_sha256",
           "image_logits", "init_weights", "model_name", "resolve_init"]
