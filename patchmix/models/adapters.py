"""Wrap torchvision or timm backbones in a :class:`PatchModel` (only where those packages import).

Neither package is a dependency of patchmix: each adapter imports its package first and raises a clear
``ImportError`` when that fails (a missing package, or a broken install such as a torchvision built for
another torch, which fails with a ``RuntimeError`` or ``AttributeError`` at import).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .head import PatchModel

__all__ = ["from_timm", "from_torchvision"]


def _require(package: str, adapter: str):
    try:
        return importlib.import_module(package)
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
        raise ImportError(
            f"patchmix.models.{adapter}() needs the '{package}' package, which failed to import "
            f"({type(e).__name__}: {e}). Install a '{package}' built for this torch ({torch.__version__}), or wrap "
            f"the backbone yourself: PatchModel(backbone, feature_channels, num_classes, grid_size)."
        ) from e


def _probe_channels(backbone: nn.Module, size: int = 64) -> int:
    """Channels of the backbone's output, from one forward pass of a ``size x size`` zero image in eval mode
    (BN statistics untouched)."""
    first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("cannot find a Conv2d in the backbone to infer its input channels")
    p = next(backbone.parameters())
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, first.in_channels, size, size, dtype=p.dtype, device=p.device))
    except Exception as e:  # noqa: BLE001 - report any failure as an unsupported backbone
        raise ValueError(f"the backbone failed on a probe input of shape (1, {first.in_channels}, {size}, {size}) "
                         f"({type(e).__name__}: {e}); only CNNs returning a feature map are supported") from e
    finally:
        backbone.train(was_training)
    if out.dim() != 4:
        raise ValueError(f"the backbone must return a feature map (N, F, h, w), got shape {tuple(out.shape)} "
                         f"(token models such as ViTs have no spatial map to pool into patch cells)")
    return int(out.shape[1])


def _wrap(backbone: nn.Module, classifier: nn.Module | None, num_classes: int | None, grid_size: int,
          separate: bool, channels: int | None = None) -> PatchModel:
    channels = channels if channels is not None else _probe_channels(backbone)
    if num_classes is None:
        if not isinstance(classifier, nn.Linear):
            raise ValueError("num_classes is required: the model's classifier is not a single nn.Linear")
        num_classes = classifier.out_features
    model = PatchModel(backbone, channels, num_classes, grid_size, separate)
    p = next(backbone.parameters())
    model.head.to(device=p.device, dtype=p.dtype)
    if (isinstance(classifier, nn.Linear) and classifier.in_features == channels
            and classifier.out_features == num_classes and classifier.bias is not None):
        model.head.fc.load_state_dict(classifier.state_dict())  # keep a pretrained image classifier
    return model


def from_torchvision(model: nn.Module, num_classes: int | None = None, grid_size: int = 4,
                     separate: bool = True) -> PatchModel:
    """A torchvision classification CNN as a :class:`PatchModel` (modules are shared, not copied).

    * ResNet / ResNeXt / Wide-ResNet / RegNet (``fc`` + ``avgpool``): every child before ``avgpool``.
    * MobileNetV2/V3, EfficientNet, DenseNet, ConvNeXt, VGG (``features`` + ``classifier``): ``features``
      (DenseNet gets its final ReLU). Layers in ``classifier`` before the last Linear (MobileNetV3's
      pre-logit Linear, ConvNeXt's LayerNorm, VGG's MLP) are dropped.

    The pretrained image classifier is copied into ``head.fc`` when its shape matches (the model's own class
    count by default), and the patch classifier starts fresh. Checked on an H200 with torchvision 0.26: for
    ResNet-18, MobileNetV2, DenseNet-121, EfficientNet-B0 and RegNetY-400MF the wrapped model's image logits
    equal the original's exactly; ConvNeXt's differ (its pre-logit LayerNorm is dropped); MobileNetV3 and VGG
    get a fresh image classifier.
    """
    _require("torchvision", "from_torchvision")
    if hasattr(model, "fc") and hasattr(model, "avgpool"):
        names = [name for name, _ in model.named_children()]
        stop = names.index("avgpool")
        backbone: nn.Module = nn.Sequential(*[getattr(model, n) for n in names[:stop]])
        classifier: nn.Module | None = model.get_submodule("fc")
    elif hasattr(model, "features") and hasattr(model, "classifier"):
        backbone = model.get_submodule("features")
        if type(model).__name__ == "DenseNet":
            backbone = nn.Sequential(backbone, nn.ReLU())
        cls = model.get_submodule("classifier")
        classifier = cls if isinstance(cls, nn.Linear) else next(
            (m for m in reversed(list(cls.modules())) if isinstance(m, nn.Linear)), None)
    else:
        raise ValueError(
            f"from_torchvision() does not know how to split a {type(model).__name__}; wrap its feature "
            f"extractor yourself with PatchModel(backbone, feature_channels, num_classes, grid_size)")
    return _wrap(backbone, classifier, num_classes, grid_size, separate)


class _ForwardFeatures(nn.Module):
    """A timm model whose ``forward`` is its ``forward_features`` (the unpooled feature map)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def from_timm(model: nn.Module, num_classes: int | None = None, grid_size: int = 4,
              separate: bool = True) -> PatchModel:
    """A timm CNN as a :class:`PatchModel`: its ``forward_features`` map (``num_features`` channels) feeds the
    head; its classifier is copied into ``head.fc`` when the shapes match, then removed from the model in
    place (``reset_classifier(0)``) so that it holds no unused parameters. Token models (ViTs) are refused with a
    ValueError. Checked with timm on an H200: ResNet-18 and EfficientNet-B0 keep their image logits exactly;
    ConvNeXt's differ (its head norm, applied after pooling, is dropped)."""
    _require("timm", "from_timm")
    if not hasattr(model, "forward_features"):
        raise ValueError(f"{type(model).__name__} has no forward_features(); is it a timm model?")
    get_classifier = getattr(model, "get_classifier", None)  # timm's methods, not nn.Module's
    classifier = get_classifier() if get_classifier is not None else None
    channels = getattr(model, "num_features", None)
    backbone = _ForwardFeatures(model)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])  # fixed-size models (ViTs) need their own size
    probed = _probe_channels(backbone, size)
    if channels is not None and probed != channels:
        raise ValueError(f"forward_features() gives {probed} channels, num_features says {channels}")
    wrapped = _wrap(backbone, classifier, num_classes, grid_size, separate, probed)
    reset_classifier = getattr(model, "reset_classifier", None)
    if reset_classifier is not None:
        reset_classifier(0)
    return wrapped
