"""Scoring a reasoner on a whole split: the reference metrics (sums / count) and 95% intervals.

`arc_evaluator` is the other kind of scoring: it votes over the augmented copies of each puzzle.
"""

from __future__ import annotations

import torch

from course_lib.act.data import PuzzleSet
from course_lib.act.halting import run_dynamic, run_forced
from course_lib.act.loss import METRIC_NAMES, ACTLossHead
from course_lib.act.model import ACTReasoner
from course_lib.core.stats import wilson


@torch.no_grad()
def evaluate_set(model: ACTReasoner, pset: PuzzleSet, batch_size: int = 500, halting: str = "forced",
                 threshold: float = 0.5, max_steps: int | None = None, device="cpu") -> dict[str, float]:
    """Mean metrics over the split (the reference's reduction: every sum / count of valid rows)."""
    model.eval()
    head = ACTLossHead(model)
    sums: dict[str, float] = {}
    for start in range(0, len(pset), batch_size):
        batch = {k: v.to(device) for k, v in pset.batch(start, start + batch_size).items()}
        if halting == "forced":
            if max_steps is not None and max_steps != model.config["halt_max_steps"]:
                _, metrics, _, _ = run_dynamic(model, batch, threshold=2.0, max_steps=max_steps)  # never confident: runs to max
            else:
                _, metrics, _ = run_forced(head, batch)
        else:
            _, metrics, _, _ = run_dynamic(model, batch, threshold=threshold, max_steps=max_steps)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    count = max(sums.pop("count"), 1.0)
    return {k: sums[k] / count for k in METRIC_NAMES}


def score_with_intervals(model: ACTReasoner, pset: PuzzleSet, device="cpu", threshold: float = 0.5) -> dict:
    """Forced and dynamic metrics on a split, each rate with a 95% Wilson interval.

    The n of the interval is the number of PUZZLES, not rows: the augmented copies of one puzzle
    are the same puzzle in disguise, not independent trials, so n = rows would overstate certainty.
    """
    n = int(pset.meta["num_puzzles"])
    out: dict = {"puzzles": n, "rows": len(pset)}
    for mode in ("forced", "dynamic"):
        m = evaluate_set(model, pset, halting=mode, threshold=threshold, device=device)
        out[mode] = {k: round(v, 4) for k, v in m.items()}
        for k in ("exact_accuracy", "accuracy"):
            out[mode][f"{k}_ci95"] = [round(x, 4) for x in wilson(m[k] * n, n)]
    out["steps_saved"] = round(1 - out["dynamic"]["steps"] / out["forced"]["steps"], 4)
    return out
