"""ARC-style evaluation: undo each augmentation, vote per original puzzle, rank, score pass@k.

Every test puzzle is presented several times, each copy rotated/flipped and with its digits
renamed. A prediction for a copy is mapped BACK to the original frame (crop at the EOS border,
inverse transform), then all copies vote. Candidates are ranked by (number of votes, mean
sigmoid(q_halt)) — agreement first, the model's own confidence as the tie-break. pass@k counts a
puzzle as solved when the true answer is among the top k candidates; `submission.json` holds the
top two as the reference's `{puzzle_id: [{"attempt_1": grid, "attempt_2": grid}]}`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from course_lib.core.files import atomic_write_text

from . import puzzles as P

PASS_KS = (1, 2, 5, 10, 100, 1000)


@dataclass
class Candidate:
    grid: tuple[tuple[int, ...], ...]
    votes: int = 0
    q_sum: float = 0.0
    variants: list[str] = field(default_factory=list)

    @property
    def mean_q(self) -> float:
        return self.q_sum / max(self.votes, 1)


def as_key(grid: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in row) for row in np.asarray(grid))


def rank(candidates: dict) -> list[Candidate]:
    """Most votes first; ties broken by the higher mean sigmoid(q_halt)."""
    return sorted(candidates.values(), key=lambda c: (c.votes, c.mean_q), reverse=True)


def pass_at_k(ranked: list[Candidate], truth, ks=PASS_KS) -> dict[int, bool]:
    keys = [c.grid for c in ranked]
    truth = as_key(truth)
    return {k: truth in keys[:k] for k in ks}


class ARCEvaluator:
    """Accumulate predictions batch by batch (`update`), then `result()` and `write_submission()`."""

    def __init__(self, names: list[str], ks=PASS_KS):
        self.names, self.ks = names, tuple(ks)
        self.candidates: dict[str, dict] = {}
        self.truth: dict[str, tuple] = {}

    def update(self, preds: torch.Tensor, puzzle_identifiers: torch.Tensor, q_halt_logits: torch.Tensor,
               labels: torch.Tensor | None = None) -> None:
        preds, ids = preds.cpu().numpy(), puzzle_identifiers.cpu().tolist()
        probs = torch.sigmoid(q_halt_logits.float()).cpu().tolist()
        labels = labels.cpu().numpy() if labels is not None else None
        for i, pid in enumerate(ids):
            name = self.names[pid]
            base, tid, perm = P.parse_name(name)
            grid = P.crop(preds[i])
            # A grid of the wrong shape cannot be mapped back; it still votes, as itself.
            back = P.unaugment(grid, tid, perm) if grid.shape == (P.SIDE, P.SIDE) and grid.min() >= 0 else grid
            key = as_key(back)
            cand = self.candidates.setdefault(base, {}).setdefault(key, Candidate(key))
            cand.votes += 1
            cand.q_sum += probs[i]
            cand.variants.append(name)
            if labels is not None:
                self.truth[base] = as_key(P.unaugment(P.crop(labels[i]), tid, perm))

    def ranked(self, base: str) -> list[Candidate]:
        return rank(self.candidates[base])

    def result(self) -> dict[str, float]:
        """{"ARC/pass@k": fraction of original puzzles whose answer is in the top k}."""
        if not self.truth:
            raise ValueError("no labels were given to update(); pass@k needs the true answers")
        hits = {k: 0 for k in self.ks}
        for base, truth in self.truth.items():
            for k, ok in pass_at_k(self.ranked(base), truth, self.ks).items():
                hits[k] += ok
        return {f"ARC/pass@{k}": hits[k] / len(self.truth) for k in self.ks}

    def submission(self) -> dict[str, list[dict]]:
        out = {}
        for base in sorted(self.candidates):
            top = [[list(r) for r in c.grid] for c in self.ranked(base)[:2]]
            out[base] = [{"attempt_1": top[0], "attempt_2": top[1] if len(top) > 1 else top[0]}]
        return out

    def write_submission(self, folder: str | Path) -> Path:
        """folder/submission.json, written to a temp name and renamed."""
        return atomic_write_text(Path(folder) / "submission.json", json.dumps(self.submission()) + "\n")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
