"""The loss head and metrics, with the reference's (HRM `ACTLossHead`) semantics.

Metrics are SUMS over the rows that have halted and have at least one label, plus `count`, the
number of such rows; the evaluation loop adds them over batches and divides every one of them by
the total count. So `steps` is the mean number of steps, and `lm_loss` is the per-row mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.act.model import ACTReasoner, Carry

IGNORE_LABEL_ID = -100
METRIC_NAMES = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss")


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, q_halt: torch.Tensor, steps: torch.Tensor,
                    halted: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """-> (metric sums, lm_loss per row (B,), seq_is_correct (B,))."""
    mask = labels != IGNORE_LABEL_ID
    counts = mask.sum(-1)
    divisor = counts.clamp_min(1).unsqueeze(-1)
    is_correct = mask & (logits.argmax(-1) == labels)
    seq_correct = is_correct.sum(-1) == counts
    valid = halted & (counts > 0)
    lm_loss_rows = (F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_LABEL_ID,
                                    reduction="none") / divisor).sum(-1)
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.float(), reduction="sum")
    metrics = {
        "count": valid.sum(),
        "accuracy": torch.where(valid, (is_correct.float() / divisor).sum(-1), 0).sum(),
        "exact_accuracy": (valid & seq_correct).sum(),
        "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_correct)).sum(),
        "steps": torch.where(valid, steps, 0).sum(),
        "lm_loss": lm_loss_rows.sum().detach(),
        "q_halt_loss": q_halt_loss.detach(),
    }
    return metrics, lm_loss_rows, seq_correct


class ACTLossHead(nn.Module):
    """Wraps the reasoner: `carry, loss, metrics, preds, all_finish = head(carry, batch, return_keys)`."""

    def __init__(self, model: ACTReasoner):
        super().__init__()
        self.model = model

    def initial_carry(self, batch):
        return self.model.initial_carry(batch)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor], return_keys=("preds",)):
        carry, out = self.model(carry, batch)
        labels = carry.current_data["labels"]
        metrics, lm_rows, seq_correct = compute_metrics(out["logits"], labels, out["q_halt_logits"], carry.steps, carry.halted)
        q_halt_loss = F.binary_cross_entropy_with_logits(out["q_halt_logits"], seq_correct.float(), reduction="sum")
        loss = lm_rows.sum() + 0.5 * q_halt_loss
        if "target_q_continue" in out:
            q_cont_loss = F.binary_cross_entropy_with_logits(out["q_continue_logits"], out["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_cont_loss.detach()
            loss = loss + 0.5 * q_cont_loss
        out["preds"] = out["logits"].argmax(-1)
        preds = {k: out[k].detach() if k in out else carry.current_data[k] for k in return_keys
                 if k in out or k in carry.current_data}
        return carry, loss, metrics, preds, bool(carry.halted.all())
