"""Patch-level supervision head (paper section 2.2).

The backbone's last feature map ``(N, F, h, w)`` is pooled into ``P x P`` region vectors, one per mask cell,
and classified into ``(N, K, P, P)`` patch logits beside the usual image logits ``(N, K)``.

Cell alignment follows the grid rule (docs/semantics.md) one level down: feature row ``i`` belongs to cell row
``floor(i * P / h)`` (columns alike), the same rule that maps pixel rows to cells, so a feature row whose
receptive-field centre lies in cell ``r`` is pooled into cell ``r``. When the map is smaller than the grid
(``h < P``) no partition exists; each cell then takes the area-weighted average of the feature rows its
span ``[r/P, (r+1)/P)`` overlaps (upsampling by area), so every cell still gets features and, for ``h``
dividing ``P``, a cell reads exactly the one feature row that covers it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchHead", "PatchModel", "cell_pooling_matrix", "region_pool"]


def cell_pooling_matrix(size: int, grid_size: int, *, dtype=torch.float32, device=None) -> Tensor:
    """Row-stochastic ``(P, size)`` matrix ``A``: ``A @ rows`` pools ``size`` feature rows into ``P`` cells.

    ``size >= P``: ``A[r, i] = 1 / n_r`` where ``floor(i * P / size) == r`` (``n_r`` rows in cell ``r``).
    ``size < P``: ``A[r, i]`` = overlap of ``[r/P, (r+1)/P)`` with ``[i/size, (i+1)/size)``, times ``P``.
    Built from shapes only (no data-dependent control flow), so it traces under ``torch.compile``.
    """
    P = int(grid_size)
    if size >= P:
        cell = torch.div(torch.arange(size, device=device) * P, size, rounding_mode="floor")
        A = (cell[None, :] == torch.arange(P, device=device)[:, None]).to(dtype)
    else:
        # exact rational overlaps in units of 1 / (P * size): cell r spans [r*size, (r+1)*size),
        # feature row i spans [i*P, (i+1)*P)
        r = torch.arange(P, device=device)[:, None]
        i = torch.arange(size, device=device)[None, :]
        lo = torch.maximum(r * size, i * P)
        hi = torch.minimum((r + 1) * size, (i + 1) * P)
        A = (hi - lo).clamp_min(0).to(dtype)
    return A / A.sum(1, keepdim=True)


def region_pool(features: Tensor, grid_size: int) -> Tensor:
    """Average ``features (N, F, h, w)`` over each of the ``P x P`` cell regions: ``(N, F, P, P)``.

    Uses ``avg_pool2d`` when ``P`` divides both ``h`` and ``w`` (the common case: 8x8 maps, P in {1, 2, 4, 8}),
    otherwise two small pooling matrices (see :func:`cell_pooling_matrix`). Both paths give the same values.
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape (N, F, h, w), got {tuple(features.shape)}")
    P = int(grid_size)
    h, w = features.shape[-2:]
    if h % P == 0 and w % P == 0:
        return F.avg_pool2d(features, (h // P, w // P))
    Ah = cell_pooling_matrix(h, P, dtype=features.dtype, device=features.device)  # (P, h)
    Aw = cell_pooling_matrix(w, P, dtype=features.dtype, device=features.device)  # (P, w)
    return torch.matmul(torch.matmul(Ah, features), Aw.t())


class PatchHead(nn.Module):
    """Image head (global average pool + Linear) and patch head (region pooling + classifier).

    Args:
        in_features: channels ``F`` of the backbone's feature map.
        num_classes: ``K``.
        grid_size: ``P``, the mask's grid (cells per side).
        separate: True: the patch classifier has its own weights (``patch_fc``); False: it reuses the image
            classifier ``fc`` (no extra parameters).

    ``forward(features (N, F, h, w)) -> (image_logits (N, K), patch_logits (N, K, P, P))``. Patch ``(r, c)``
    is mask cell ``(r, c)``; its row-major index ``r * P + c`` matches :meth:`MixedBatch.patch_targets`.
    The patch logits' memory is ``(N, P, P, K)`` contiguous (channels_last strides), so
    ``patch_logits.permute(0, 2, 3, 1).reshape(N, P * P, K)`` is a free view with each row's ``K`` logits
    contiguous.
    """

    def __init__(self, in_features: int, num_classes: int, grid_size: int = 4, separate: bool = True):
        super().__init__()
        if int(grid_size) != grid_size or grid_size < 1:
            raise ValueError(f"grid_size must be a positive integer, got {grid_size}")
        if num_classes < 1 or in_features < 1:
            raise ValueError(f"in_features and num_classes must be positive, got {in_features}, {num_classes}")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.grid_size = int(grid_size)
        self.separate = bool(separate)
        self.fc = nn.Linear(in_features, num_classes)
        self.patch_fc = nn.Linear(in_features, num_classes) if separate else None

    def pool(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(global (N, F), regions (N, F, P, P))`` pooled features."""
        return features.mean((2, 3)), region_pool(features, self.grid_size)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        pooled, regions = self.pool(features)
        image_logits = self.fc(pooled)
        patch_fc = self.patch_fc if self.patch_fc is not None else self.fc
        # (N, F, P, P) -> (N, P, P, F) -> Linear -> (N, P, P, K) -> view as (N, K, P, P)
        patch_logits = patch_fc(regions.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return image_logits, patch_logits

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, separate={self.separate}"


class PatchModel(nn.Module):
    """Any backbone returning a feature map ``(N, F, h, w)``, followed by a :class:`PatchHead`.

    ``forward(x (N, C, H, W)) -> (image_logits (N, K), patch_logits (N, K, P, P))``.
    Attributes ``backbone``, ``head``, ``grid_size``, ``num_classes``, ``feature_channels``.
    """

    def __init__(self, backbone: nn.Module, feature_channels: int, num_classes: int, grid_size: int = 4,
                 separate: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = PatchHead(feature_channels, num_classes, grid_size, separate)
        self.feature_channels = int(feature_channels)
        self.num_classes = int(num_classes)
        #: the parts frozen by :meth:`freeze` (``"backbone"``): no gradient, and in eval mode whatever ``train()`` says
        self.frozen: tuple[str, ...] = ()

    @property
    def grid_size(self) -> int:
        return self.head.grid_size

    @grid_size.setter
    def grid_size(self, value: int) -> None:
        # the head has no per-cell weights, so the grid can change after construction (Table 7 sweeps)
        if int(value) != value or value < 1:
            raise ValueError(f"grid_size must be a positive integer, got {value}")
        self.head.grid_size = int(value)

    def freeze(self, parts: str | tuple[str, ...] = "backbone") -> PatchModel:
        """Freeze ``parts`` (``"backbone"``; ``"none"`` or ``()`` freezes nothing) in place: their parameters stop
        requiring gradients, and they stay in eval mode when the model is put in training mode, so that their
        BatchNorm running statistics (and dropout) stay fixed. A frozen backbone with the heads trained is a linear
        probe. Returns the model."""
        parts = (parts,) if isinstance(parts, str) else tuple(parts)
        parts = tuple(p for p in parts if p != "none")
        bad = [p for p in parts if p != "backbone"]
        if bad:
            raise ValueError(f"freeze: unknown part {bad[0]!r}; the part that can be frozen is 'backbone' (or 'none')")
        for p in parts:
            getattr(self, p).requires_grad_(False)
        self.frozen = tuple(dict.fromkeys(self.frozen + parts))
        return self.train(self.training)

    def train(self, mode: bool = True) -> PatchModel:
        super().train(mode)
        for p in self.frozen:
            getattr(self, p).eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """The backbone's last feature map ``(N, F, h, w)``."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.backbone(x))

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: ``backbone``, ``image_head`` (the Linear), ``patch_head`` (0 when shared),
        ``base`` (backbone + image head: the published architecture) and ``total``."""
        def count(m):
            return 0 if m is None else sum(p.numel() for p in m.parameters())
        c = {"backbone": count(self.backbone), "image_head": count(self.head.fc),
             "patch_head": count(self.head.patch_fc)}
        c["base"] = c["backbone"] + c["image_head"]
        c["total"] = c["base"] + c["patch_head"]
        return c
