"""Loading a split written by `build_dataset` back as tensors, with errors that name the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from course_lib.core.paths import display_path, link_problem

from . import puzzles as P

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
    if not root.exists() and (problem := link_problem(root)) is not None:
        raise DataError(f"dataset {shown} cannot be opened: the path goes through {problem}; fix the link or pass the folder itself.")
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
        raw = {f: np.load(d / f"{set_name}__{f}.npy") for f in FIELDS}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {display_path(d)}: {_first_line(exc)}. Rebuild the dataset.") from None
    check_arrays(raw, names, meta, d)
    arrays = {f: torch.from_numpy(a.astype(np.int64)) for f, a in raw.items()}
    return PuzzleSet(arrays["inputs"], arrays["labels"], arrays["puzzle_identifiers"], arrays["blanks"], names, meta)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def check_arrays(raw: dict[str, np.ndarray], names: object, meta: object, d: Path) -> None:
    """DataError (one line, naming the file) unless the arrays have the layout build_dataset writes."""
    shown = display_path(d)
    fix = "rebuild it with `python -m course_lib.act.build_dataset`"
    if not isinstance(meta, dict) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{shown}: dataset.json must be an object and identifiers.json a list of names; {fix}.")
    seq_len, vocab = meta.get("seq_len", P.SEQ_LEN), meta.get("vocab_size", P.VOCAB_SIZE)
    n = len(raw["inputs"]) if raw["inputs"].ndim else 0
    for f, a in raw.items():
        want = (n, seq_len) if f in ("inputs", "labels") else (n,)
        if a.dtype.kind not in "iu" or a.shape != want:
            raise DataError(f"{shown}/all__{f}.npy must be integers of shape {want}, got {a.dtype} {a.shape}; {fix}.")
    if n == 0:
        raise DataError(f"{shown} holds no puzzles (an empty split); {fix} and a --num-test of at least 1.")
    for f in ("inputs", "labels"):
        if raw[f].min() < 0 or raw[f].max() >= vocab:
            raise DataError(f"{shown}/all__{f}.npy has tokens outside 0..{vocab - 1} (vocab_size in dataset.json); {fix}.")
    ids = raw["puzzle_identifiers"]
    if ids.min() < 0 or ids.max() >= len(names):
        raise DataError(f"{shown}/all__puzzle_identifiers.npy points past identifiers.json ({len(names)} names); {fix}.")
