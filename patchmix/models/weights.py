"""Start a patch-head model from saved weights: a patchmix training checkpoint of any method, a plain state dict
(``.pth`` / ``.pt``, read with ``torch.load(weights_only=True)``: nothing in the file is unpickled as code) or a
``.safetensors`` file (with the ``safetensors`` package).

:func:`load_weights` maps the file's names onto the model's (:class:`~patchmix.models.PatchModel`: ``backbone.*``,
``head.fc.*``, ``head.patch_fc.*``), loads every tensor that fits and starts the classifiers fresh where the class
count differs. Names it understands:

* patchmix's own: a training checkpoint (``{"format": "patchmix-train-v1", "model": ...}``, the model behind its
  normalisation: ``model.backbone.*``, ``mean``, ``std``) or a ``PatchModel``'s ``state_dict()``;
* torchvision's and timm's ``resnet50`` (the same names: ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``layer1.0.downsample.0``, ``fc``), which are patchmix's ResNet-50 names under ``backbone.``, ``fc`` being the
  image classifier ``head.fc``;
* torchvision's ``mobilenet_v2`` (``features.*``, ``classifier.1``) and timm's ``mobilenetv2_100`` (``conv_stem``,
  ``blocks.<stage>.<block>.conv_pw``, ..., ``conv_head``, ``classifier``) onto ``mobilenetv2``;
* any other model's names under ``backbone.`` as they are (``fc`` / ``classifier`` as the image classifier);
* wrappers around any of these: ``{"state_dict": ...}``, ``{"model": ...}``, and DataParallel's ``module.`` prefix.

The normalisation of a patchmix checkpoint (its ``mean`` and ``std`` buffers) is not loaded: the model keeps the
one it was built with (the data's, or ImageNet's with ``model.normalize=imagenet``).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .head import PatchModel
from .mobilenetv2 import _STAGES, MobileNetV2CIFAR

#: The ``format`` field of a patchmix training checkpoint (:mod:`patchmix.training.checkpoint`).
TRAIN_CHECKPOINT_FORMAT = "patchmix-train-v1"

#: The image and patch classifiers: started fresh when the file's class count differs.
CLASSIFIERS = ("head.fc", "head.patch_fc")

__all__ = ["CLASSIFIERS", "TRAIN_CHECKPOINT_FORMAT", "LoadReport", "load_weights", "read_state_dict", "torch_load"]


def torch_load(path: str, what: str = "checkpoint") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, any failure as one
    :class:`~patchmix.errors.CheckpointError` line naming ``path``: a file holding objects other than tensors and
    plain containers is refused (and nothing of it runs)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: the file is not a plain one
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        named = f" (it names {found.group(1)})" if found else ""
        raise CheckpointError(f"cannot read {what} {path}: it holds objects other than tensors and plain "
                              f"containers{named}, and patchmix never unpickles those") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {what} {path}: {first}") from None


def _read_safetensors(path: str) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a .safetensors file, which needs the 'safetensors' package: "
                              f"pip install safetensors (or pip install 'patchmix[transfer]')") from None
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged header: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path} as safetensors: {first}") from None


def read_state_dict(source: str | os.PathLike | Mapping, name: str | None = None) -> tuple[dict[str, Tensor], str]:
    """The flat ``{name: tensor}`` state dict of ``source`` (a path or an object already read) and what it is
    (``"patchmix checkpoint (method random, epoch 30)"``, ``"state dict"``). Unwraps a patchmix checkpoint, a
    ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and DataParallel's ``module.`` prefix.
    :class:`~patchmix.errors.CheckpointError` (one line) for anything that is not a state dict."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = name or path
        obj = _read_safetensors(path) if path.endswith(".safetensors") else torch_load(path, "weights file")
    else:
        obj, name = source, name or "(in memory)"
    kind = "state dict"
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_CHECKPOINT_FORMAT:
        kind = f"patchmix checkpoint (method {obj.get('method')}, epoch {obj.get('epoch')})"
        obj = obj.get("model")
    else:
        for key in ("state_dict", "model"):
            if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{name} is not a state dict (a mapping of parameter names to tensors): it holds "
                              f"{'an empty mapping' if isinstance(obj, Mapping) else type(obj).__name__}")
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{name} is not a state dict (a mapping of parameter names to tensors): its entry "
                              f"{bad!r} is a {type(obj[bad]).__name__}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, kind


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_weights` did. ``loaded``: the model's tensors taken from the file; ``fresh``: the
    model's parts (modules) left as initialised, each with the reason; ``ignored``: the file's tensors not used,
    each with the reason; ``kind``: what the file is. ``str(report)`` is the one line ``patchmix train --init``
    prints."""

    source: str
    kind: str
    names: str
    loaded: list[str]
    fresh: dict[str, str]
    ignored: dict[str, str]

    def __str__(self) -> str:
        names = "" if self.names == "patchmix" else f", {self.names} names"
        text = f"init {self.source}: {self.kind}{names}; loaded {len(self.loaded)} tensors"
        if self.fresh:
            text += "; started fresh: " + ", ".join(f"{k} ({v})" for k, v in self.fresh.items())
        if self.ignored:
            groups: dict[str, list[str]] = {}
            for k, v in self.ignored.items():
                groups.setdefault(v, []).append(k)
            text += "; not used: " + ", ".join(f"{', '.join(ks)} ({v})" for v, ks in groups.items())
        return text


def _patch_model(model: nn.Module) -> PatchModel:
    """``model`` or the :class:`PatchModel` it wraps (``NormalizedModel.model``)."""
    inner = model if isinstance(model, PatchModel) else getattr(model, "model", None)
    if not isinstance(inner, PatchModel):
        raise TypeError(f"load_weights needs a PatchModel (patchmix.models.create_model) or a model wrapping one "
                        f"as .model, got {type(model).__name__}")
    return inner


def _owner(key: str) -> str:
    """The module a tensor belongs to (``head.fc.weight`` -> ``head.fc``)."""
    return key.rsplit(".", 1)[0]


# -- published names -> patchmix names -----------------------------------------------------------------------------

_IMAGE_CLASSIFIER = re.compile(r"(fc|classifier|classifier\.1)\.(weight|bias)")
_BN_OR_CONV = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _torchvision_mobilenet(key: str, tensor: Tensor) -> str:
    """torchvision ``mobilenet_v2`` -> :class:`MobileNetV2CIFAR`: a block's last (linear) conv and its BN are
    ``conv.<k>`` and ``conv.<k+1>`` there and one ``Sequential`` ``conv.<k>.{0,1}`` here."""
    m = re.fullmatch(rf"(features\.\d+\.conv)\.(\d+)\.{_BN_OR_CONV}", key)
    if not m:
        return key
    base, k, param = m.group(1), int(m.group(2)), m.group(3)
    if param == "weight" and tensor.dim() == 4:
        return f"{base}.{k}.0.weight"
    return f"{base}.{k - 1}.1.{param}"


def _timm_mobilenet(key: str) -> str:
    """timm ``mobilenetv2_100`` -> :class:`MobileNetV2CIFAR` (``features.0`` the stem, ``features.1..17`` the
    blocks in order, ``features.18`` the 1x1 head conv)."""
    if m := re.fullmatch(r"conv_stem\.weight", key):
        return "features.0.0.weight"
    if m := re.fullmatch(rf"bn1\.{_BN_OR_CONV}", key):
        return f"features.0.1.{m.group(1)}"
    if m := re.fullmatch(r"conv_head\.weight", key):
        return f"features.{1 + sum(n for _, _, n in _STAGES)}.0.weight"
    if m := re.fullmatch(rf"bn2\.{_BN_OR_CONV}", key):
        return f"features.{1 + sum(n for _, _, n in _STAGES)}.1.{m.group(1)}"
    m = re.fullmatch(rf"blocks\.(\d+)\.(\d+)\.(conv_pw|conv_dw|conv_pwl|bn1|bn2|bn3)\.{_BN_OR_CONV}", key)
    if not m:
        return key
    stage, j, part, param = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    index = 1 + sum(n for _, _, n in _STAGES[:stage]) + j
    if _STAGES[stage][0] == 1:  # depthwise-separable block: conv_dw, bn1, conv_pw, bn2
        slot = {"conv_dw": (0, 0), "bn1": (0, 1), "conv_pw": (1, 0), "bn2": (1, 1)}.get(part)
    else:  # inverted residual: conv_pw, bn1 (expand), conv_dw, bn2, conv_pwl, bn3 (project)
        slot = {"conv_pw": (0, 0), "bn1": (0, 1), "conv_dw": (1, 0), "bn2": (1, 1), "conv_pwl": (2, 0),
                "bn3": (2, 1)}[part]
    return key if slot is None else f"features.{index}.conv.{slot[0]}.{slot[1]}.{param}"


def _patchmix_names(state: dict[str, Tensor], model: PatchModel) -> tuple[dict[str, Tensor], dict[str, str], str]:
    """``(tensors under the model's names, the file's tensors left out with why, which naming)``."""
    ignored: dict[str, str] = {}
    if any(k.startswith("model.backbone.") for k in state):  # a NormalizedModel: patchmix's checkpoints
        for k in ("mean", "std"):
            if k in state:
                ignored[k] = "the model keeps its own normalisation"
        return ({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, ignored, "patchmix")
    if any(k.startswith(("backbone.", "head.")) for k in state):
        return state, ignored, "patchmix"
    out, names = {}, "published"
    timm_mobilenet = any(k.startswith("conv_stem.") for k in state)
    for k, v in state.items():
        if _IMAGE_CLASSIFIER.fullmatch(k):
            out["head.fc." + k.rsplit(".", 1)[1]] = v
            continue
        if isinstance(model.backbone, MobileNetV2CIFAR):
            k, names = (_timm_mobilenet(k), "timm") if timm_mobilenet else (_torchvision_mobilenet(k, v), "torchvision")
        out["backbone." + k] = v
    if names == "published":
        names = "torchvision/timm"
    return out, ignored, names


def _class_reason(file_shape: tuple, own: Tensor) -> str:
    if file_shape[1:] == tuple(own.shape[1:]):
        return f"the file has {file_shape[0]} classes, this model {own.shape[0]}"
    return f"shape {file_shape} in the file, {tuple(own.shape)} here"


def load_weights(model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping, *,
                 strict_backbone: bool = True) -> LoadReport:
    """Load a file's weights into ``model`` (a :class:`PatchModel`, or a module wrapping one as ``.model``) in
    place, and say what was loaded.

    Args:
        model: the model to start; built by :func:`patchmix.models.create_model` with the new class count.
        path_or_state_dict: a patchmix training checkpoint, a ``.pth`` / ``.pt`` state dict, a ``.safetensors``
            file, or a mapping already read (names: see the module docstring).
        strict_backbone: True: every backbone tensor of the model must be in the file and every tensor of the file
            must fit the model, else :class:`~patchmix.errors.CheckpointError` naming the first that does not (with
            both shapes). False: what fits is loaded, the rest of the model starts fresh and the file's misfits are
            reported as not used (an error only when nothing fits).

    The image and patch classifiers (:data:`CLASSIFIERS`) are kept when their shapes equal the file's (the same
    class count) and started fresh otherwise, or when the file has none; this is never an error. Returns a
    :class:`LoadReport`.
    """
    net = _patch_model(model)
    source = os.fspath(path_or_state_dict) if isinstance(path_or_state_dict, (str, os.PathLike)) else "(in memory)"
    state, kind = read_state_dict(path_or_state_dict, source)
    mapped, ignored, names = _patchmix_names(state, net)
    own = net.state_dict()
    take: dict[str, Tensor] = {}
    fresh: dict[str, str] = {}
    for k, v in mapped.items():
        classifier = _owner(k) in CLASSIFIERS
        if k not in own:
            if classifier:
                ignored[k] = "this model shares the image classifier"
            elif strict_backbone:
                raise CheckpointError(f"{source} does not fit this model: its tensor {k} has no counterpart here "
                                      f"({names} names)")
            else:
                ignored[k] = "no counterpart in this model"
        elif tuple(v.shape) != tuple(own[k].shape):
            if classifier:
                fresh[_owner(k)] = _class_reason(tuple(v.shape), own[k])
            elif strict_backbone:
                raise CheckpointError(f"{source} does not fit this model: {k} has shape {tuple(v.shape)} in the "
                                      f"file, {tuple(own[k].shape)} here")
            else:
                ignored[k] = f"shape {tuple(v.shape)}, {tuple(own[k].shape)} here"
        else:
            take[k] = v
    for owner in {_owner(k) for k in take if _owner(k) in CLASSIFIERS and _owner(k) in fresh}:
        # a classifier is kept whole or started fresh whole (its weight and bias together)
        for k in [k for k in take if _owner(k) == owner]:
            del take[k]
    missing = [k for k in own if k not in take and not k.endswith("num_batches_tracked")]
    backbone_missing = [k for k in missing if _owner(k) not in CLASSIFIERS]
    if backbone_missing and strict_backbone:
        raise CheckpointError(f"{source} does not fit this model: it has no {backbone_missing[0]} (shape "
                              f"{tuple(own[backbone_missing[0]].shape)}; {len(backbone_missing)} backbone tensors "
                              f"missing, {names} names)")
    if not take:
        raise CheckpointError(f"{source} does not fit this model: none of its {len(state)} tensors does "
                              f"({names} names)")
    for k in missing:
        fresh.setdefault(_owner(k), "not in the file")
    net.load_state_dict({**own, **take})
    return LoadReport(source, kind, names, sorted(take), fresh, ignored)
