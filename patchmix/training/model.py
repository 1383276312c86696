"""The model a run trains: a patch-head network from :mod:`patchmix.models`, chosen by name or by the
dataset's image size, behind the dataset's normalisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..config import Config
from ..errors import ConfigError


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
    name = model_name(cfg, ds)
    if cfg.model.width is not None and name.replace("-", "_").lower() in ("small_cnn", "small_resnet"):
        kw["width"] = cfg.model.width
    try:
        model = create_model(name, ds.num_classes, grid_size=cfg.model.grid_size, in_channels=ds.channels,
                             separate_patch_classifier=cfg.model.separate_patch_classifier, **kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return NormalizedModel(model, ds.mean, ds.std)


def image_logits(out) -> Tensor:
    """The image logits ``(N, K)`` of a model's output (a bare tensor, or the first of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


__all__ = ["NormalizedModel", "build_model", "image_logits", "model_name"]
