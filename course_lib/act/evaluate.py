"""Evaluate a reasoner on a whole split: the seed's loop over batches, metric sums divided by the count."""

from __future__ import annotations

import torch

from .data import PuzzleSet
from .halting import run_dynamic, run_forced
from .loss import METRIC_NAMES, ACTLossHead
from .model import ACTReasoner


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
