"""Patch-head models (paper section 2.2): every model maps ``x (N, C, H, W)`` to
``(image_logits (N, K), patch_logits (N, K, P, P))`` and has the attribute ``grid_size``.

* :func:`create_model` builds the paper's backbones, written here (no torchvision): ``resnet32``,
  ``preact_resnet56``, ``preact_resnet164`` (CIFAR), ``mobilenetv2`` (CIFAR strides), ``resnet50``
  (ImageNet), ``small_cnn`` for the embedded 8x8 digits demo and ``small_resnet`` (32x32 inputs on a CPU).
* :class:`PatchHead` / :class:`PatchModel` put the image and patch heads on any backbone's feature map;
  :func:`from_torchvision` / :func:`from_timm` wrap those libraries' CNNs when they import.
* :func:`load_weights` starts a model from a patchmix checkpoint, a torchvision / timm state dict or a
  ``.safetensors`` file (docs/transfer.md); :meth:`PatchModel.freeze` freezes the backbone (a linear probe).

Patch logit ``[:, :, r, c]`` belongs to mask cell ``(r, c)``; flattened row-major (``r * P + c``) it lines up
with :meth:`patchmix.MixedBatch.patch_targets`.
"""

from __future__ import annotations

import typing

from .adapters import from_timm, from_torchvision
from .head import PatchHead, PatchModel
from .mobilenetv2 import MobileNetV2CIFAR
from .resnet import ResNetImageNet
from .resnet_cifar import PreActResNetCIFAR, ResNetCIFAR
from .small_cnn import SmallCNN
from .small_resnet import SmallResNet
from .weights import LoadReport, load_weights

if typing.TYPE_CHECKING:  # for the annotation only: the package's namespace is its API
    from collections.abc import Callable

MODEL_NAMES = ("resnet32", "preact_resnet56", "preact_resnet164", "mobilenetv2", "resnet50", "small_cnn", "small_resnet")

#: The backbones written here; each sets ``feature_channels`` (an int) for its patch head.
_Backbone = ResNetCIFAR | PreActResNetCIFAR | MobileNetV2CIFAR | ResNetImageNet | SmallCNN | SmallResNet

_BACKBONES: dict[str, Callable[..., _Backbone]] = {
    "resnet32": lambda c, **kw: ResNetCIFAR(32, in_channels=c, **kw),
    "preact_resnet56": lambda c, **kw: PreActResNetCIFAR(56, bottleneck=False, in_channels=c, **kw),
    "preact_resnet164": lambda c, **kw: PreActResNetCIFAR(164, bottleneck=True, in_channels=c, **kw),
    "mobilenetv2": lambda c, **kw: MobileNetV2CIFAR(in_channels=c, **kw),
    "resnet50": lambda c, **kw: ResNetImageNet((3, 4, 6, 3), in_channels=c, **kw),
    "small_cnn": lambda c, **kw: SmallCNN(in_channels=c, **kw),
    "small_resnet": lambda c, **kw: SmallResNet(in_channels=c, **kw),
}


def create_model(name: str, num_classes: int, grid_size: int = 4, in_channels: int = 3,
                 separate_patch_classifier: bool = True, **kw) -> PatchModel:
    """Build one of :data:`MODEL_NAMES` with a patch head.

    Args:
        name: a name from ``MODEL_NAMES`` (case insensitive; ``-`` and ``_`` are ignored).
        num_classes: ``K``.
        grid_size: ``P``; the patch logits are ``(N, K, P, P)``.
        in_channels: input channels (1 for the digits demo with ``small_cnn``).
        separate_patch_classifier: own weights for the patch classifier (True) or share the image classifier.
        **kw: passed to the backbone (``small_cnn``: ``width``; ``mobilenetv2``: ``strides``, ``stem_stride``;
            ``resnet50``: ``zero_init_residual``, ``last_stride`` (1: wsolevaluation's 14 x 14 map at 224);
            CIFAR ResNets: ``widths``).

    Returns a :class:`PatchModel` (``.backbone``, ``.head``, ``.grid_size``, ``.parameter_counts()``).
    """
    canonical = {n.replace("_", ""): n for n in MODEL_NAMES}
    key = canonical.get(name.lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    backbone = _BACKBONES[key](in_channels, **kw)
    return PatchModel(backbone, backbone.feature_channels, num_classes, grid_size, separate_patch_classifier)


__all__ = [
    "MODEL_NAMES", "LoadReport", "MobileNetV2CIFAR", "PatchHead", "PatchModel", "PreActResNetCIFAR", "ResNetCIFAR",
    "ResNetImageNet", "SmallCNN", "SmallResNet", "create_model", "from_timm", "from_torchvision", "load_weights",
]
