"""Loading a split written by `build_dataset` back as tensors, with errors that name the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..paths import display_path

FIELDS = ("inputs", "labels", "puzzle_identifiers", "blanks")


class DataError(Exception):
    """A dataset folder is missing or malformed."""


@dataclass
class PuzzleSet:
    """One split: tensors of shape (N, 25) / (N,), the identifier names, the metadata."""

    inputs: torch.Tensor
    labels: torch.Tensor
    puzzle_identifiers: torch.Tensor
    blanks: torch.Tensor
    names: list[str]
    meta: dict

    def __len__(self) -> int:
        return len(self.inputs)

    def batch(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[start:stop], "labels": self.labels[start:stop],
                "puzzle_identifiers": self.puzzle_identifiers[start:stop]}


def load_split(root: str | Path, split: str = "test", set_name: str = "all") -> PuzzleSet:
    root = Path(root)
    shown = display_path(root)
    if not root.exists():
        raise DataError(f"dataset not found: {shown}. Build one with `python -m course_lib.act.build_dataset --out {shown} --seed 0`.")
    if not root.is_dir():
        raise DataError(f"{shown} is a file; --data_paths expects a dataset folder written by course_lib.act.build_dataset.")
    d = root / split
    if not (d / "dataset.json").exists() or not (root / "identifiers.json").exists():
        raise DataError(f"{shown} is not a dataset folder: {split}/dataset.json or identifiers.json is missing. "
                        "Build one with `python -m course_lib.act.build_dataset`.")
    try:
        meta = json.loads((d / "dataset.json").read_text())
        names = json.loads((root / "identifiers.json").read_text())
        arrays = {f: torch.from_numpy(np.load(d / f"{set_name}__{f}.npy").astype(np.int64)) for f in FIELDS}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {display_path(d)}: {exc}. Rebuild the dataset.") from None
    return PuzzleSet(arrays["inputs"], arrays["labels"], arrays["puzzle_identifiers"], arrays["blanks"], names, meta)
