"""The result of a guided search: class pairs with one grid mask each, saved as JSON.

File format (``"format": "patchmix-policy"``, ``"format_version": 1``)::

    {"format": "patchmix-policy", "format_version": 1, "version": "<patchmix.__version__>",
     "grid_size": 4, "class_names": ["airplane", ...],
     "pairs": [["cat", "dog"], ...],            # (c_i, c_j): True mask cells come from c_i
     "masks": [["0110", "1001", ...], ...],     # one string of P "0"/"1" characters per mask row
     "fitness": -1.23, "seed": 0, "search": {...}}   # search: objective, direction, generations, ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .._version import __version__
from ..errors import PolicyError
from ..files import write_json

FORMAT = "patchmix-policy"
FORMAT_VERSION = 1


@dataclass
class Policy:
    """Active class pairs and their masks.

    Attributes:
        pairs: int64 ``(M, 2)`` class indices ``(c_i, c_j)`` into ``class_names``; each unordered pair once.
        masks: bool ``(M, P, P)``; True cells come from the image of class ``c_i``.
        class_names: the ``K`` class names.
        grid_size: ``P``.
        fitness: the raw fitness of the individual this policy came from (NaN if unknown).
        seed: the search seed (None if unknown).
        version: ``patchmix.__version__`` that produced it.
        search: free-form search settings (objective, direction, generations, ...).
    """

    pairs: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    grid_size: int
    fitness: float = float("nan")
    seed: int | None = None
    version: str = ""
    search: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.version:
            self.version = __version__
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.masks = np.asarray(self.masks, dtype=bool)
        self.class_names = [str(c) for c in self.class_names]
        self.validate()

    def validate(self) -> None:
        """Raises :class:`PolicyError` when the pairs, masks, names or grid size disagree."""
        P, K, M = int(self.grid_size), len(self.class_names), len(self.pairs)
        if P < 1:
            raise PolicyError(f"policy: grid_size must be >= 1, got {P}")
        if len(set(self.class_names)) != K:
            raise PolicyError("policy: class_names contains duplicates")
        if self.masks.shape != (M, P, P):
            raise PolicyError(
                f"policy: masks must have shape (M, P, P) = ({M}, {P}, {P}) for {M} pairs and grid size {P}, "
                f"got {self.masks.shape}"
            )
        if M and (self.pairs.min() < 0 or self.pairs.max() >= K):
            raise PolicyError(f"policy: a pair refers to class index {int(self.pairs.max())}, outside the {K} classes")
        canon = {(int(min(a, b)), int(max(a, b))) for a, b in self.pairs}
        if len(canon) != M:
            raise PolicyError("policy: a class pair appears twice (each unordered pair may appear once)")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pair_tensor(self) -> torch.Tensor:
        """int64 ``(M, 2)`` class pairs."""
        return torch.from_numpy(self.pairs.copy())

    def mask_tensor(self) -> torch.Tensor:
        """bool ``(M, P, P)`` masks."""
        return torch.from_numpy(self.masks.copy())

    def named_pairs(self) -> list[tuple[str, str]]:
        return [(self.class_names[a], self.class_names[b]) for a, b in self.pairs]

    # ---------------------------------------------------------------------------------------------
    # JSON
    # ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "grid_size": int(self.grid_size),
            "class_names": list(self.class_names),
            "pairs": [list(p) for p in self.named_pairs()],
            "masks": [["".join("1" if v else "0" for v in row) for row in m] for m in self.masks],
            "fitness": None if self.fitness != self.fitness else float(self.fitness),
            "seed": self.seed,
            "search": self.search,
        }

    @classmethod
    def from_dict(cls, d: dict, class_names: list[str] | None = None, grid_size: int | None = None) -> Policy:
        """Build and validate; ``class_names`` / ``grid_size``: what the caller's dataset and model expect.
        With ``class_names`` the pairs are re-indexed into that list (a name it lacks is an error)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PolicyError(f"policy: not a {FORMAT} document (missing or wrong 'format' field)")
        if d.get("format_version") != FORMAT_VERSION:
            raise PolicyError(f"policy: format_version {d.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
        try:
            P = int(d["grid_size"])
            names = [str(c) for c in d["class_names"]]
            named_pairs = [(str(a), str(b)) for a, b in d["pairs"]]
            rows = d["masks"]
            if any(len(m) != P or any(len(row) != P for row in m) for m in rows):
                raise PolicyError(f"policy: every mask must be {P}x{P} (grid_size = {P}) in the file")
            if any(set(row) - {"0", "1"} for m in rows for row in m):
                raise PolicyError("policy: mask rows must be strings of '0' and '1'")
            masks = np.array([[[ch == "1" for ch in row] for row in m] for m in rows], dtype=bool).reshape(-1, P, P)
        except PolicyError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"policy: malformed document ({type(exc).__name__}: {exc})") from exc
        if grid_size is not None and P != int(grid_size):
            raise PolicyError(f"policy: grid size {P} in the policy, but {int(grid_size)} was expected (model/mixer grid)")
        target = names if class_names is None else [str(c) for c in class_names]
        index = {c: k for k, c in enumerate(target)}
        unknown = sorted({c for p in named_pairs for c in p if c not in index})
        if unknown:
            raise PolicyError(f"policy: unknown classes {unknown[:5]} (not among the {len(target)} expected class names)")
        pairs = np.array([[index[a], index[b]] for a, b in named_pairs], dtype=np.int64).reshape(-1, 2)
        fit = d.get("fitness")
        return cls(pairs, masks, target, P,
                   float("nan") if fit is None else float(fit), d.get("seed"), str(d.get("version", "")),
                   dict(d.get("search") or {}))

    def save(self, path) -> None:
        """Write JSON (atomically: a temporary file, then a rename)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path, class_names: list[str] | None = None, grid_size: int | None = None) -> Policy:
        """Read and validate a policy file; see :meth:`from_dict` for ``class_names`` and ``grid_size``."""
        try:
            with open(path) as fh:
                d = json.load(fh)
        except FileNotFoundError:
            raise PolicyError(f"policy file not found: {os.fspath(path)}") from None
        except json.JSONDecodeError as exc:
            raise PolicyError(f"policy: {os.fspath(path)} is not valid JSON (corrupt file?): {exc}") from exc
        except UnicodeDecodeError as exc:
            raise PolicyError(f"policy: {os.fspath(path)} is not a text file (corrupt file?)") from exc
        return cls.from_dict(d, class_names, grid_size)
