"""Looking inside the loop: per-step traces, and what any halting rule WOULD do, from one forced run.

Because a frozen row keeps exactly the answer it had when it halted, running the full forced loop
once and recording every step's answer and Q value is enough to replay any dynamic rule offline:
"halt at the first step where sigmoid(q_halt) > threshold" just picks a step per row. The
benchmark and the notebook's widget use this; a test checks it against the real dynamic loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.act.model import ACTReasoner


@dataclass
class Trace:
    preds: torch.Tensor      # (S, N, T) answer after each step
    q_halt: torch.Tensor     # (S, N)
    q_continue: torch.Tensor  # (S, N)
    correct: torch.Tensor    # (S, N) bool: whole answer right after that step
    token_acc: torch.Tensor  # (S, N) fraction of right tokens after that step


@torch.no_grad()
def trace_steps(model: ACTReasoner, inputs: torch.Tensor, labels: torch.Tensor, max_steps: int | None = None,
                batch_size: int = 500) -> Trace:
    """Run every puzzle for max_steps reasoning steps, keeping each step's answer and Q values."""
    model.eval()
    inner = model.inner
    S = max_steps or model.config["halt_max_steps"]
    preds, qh, qc = [], [], []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size]
        carry = inner.reset_carry(torch.ones(len(x), dtype=torch.bool, device=x.device), inner.empty_carry(len(x), x.device))
        p_b, qh_b, qc_b = [], [], []
        for _ in range(S):
            carry, logits, q_h, q_c = inner(carry, x)
            p_b.append(logits.argmax(-1))
            qh_b.append(q_h)
            qc_b.append(q_c)
        preds.append(torch.stack(p_b))
        qh.append(torch.stack(qh_b))
        qc.append(torch.stack(qc_b))
    preds = torch.cat(preds, 1)
    right = preds == labels[None]
    return Trace(preds, torch.cat(qh, 1), torch.cat(qc, 1), right.all(-1), right.float().mean(-1))


def halting_steps(trace: Trace, threshold: float, min_steps: int = 1) -> torch.Tensor:
    """(N,) the step (1-based) at which each row halts under "sigmoid(q_halt) > threshold", else the max."""
    stop = torch.sigmoid(trace.q_halt) > threshold
    stop[: min_steps - 1] = False
    stop[-1] = True
    return stop.float().argmax(0) + 1


def replay(trace: Trace, threshold: float | None, max_steps: int | None = None, min_steps: int = 1) -> dict[str, float]:
    """Exact accuracy and mean steps of a rule: threshold=None means forced (always max_steps)."""
    sub, steps = rule_steps(trace, threshold, max_steps, min_steps)
    idx = (steps - 1)[None]
    return {"exact_accuracy": float(sub.correct.gather(0, idx).float().mean()),
            "accuracy": float(sub.token_acc.gather(0, idx).mean()),
            "steps": float(steps.float().mean())}


def rule_steps(trace: Trace, threshold: float | None, max_steps: int | None = None,
               min_steps: int = 1) -> tuple[Trace, torch.Tensor]:
    """(the trace cut at max_steps, (N,) halting step of each row), on the trace's device."""
    S = max_steps or trace.q_halt.shape[0]
    sub = Trace(trace.preds[:S], trace.q_halt[:S], trace.q_continue[:S], trace.correct[:S], trace.token_acc[:S])
    if threshold is None:  # created on the trace's device: gathering device tensors with a CPU index fails on a GPU
        return sub, torch.full((sub.correct.shape[1],), S, device=sub.correct.device)
    return sub, halting_steps(sub, threshold, min_steps)


def accuracy_by_step(trace: Trace) -> list[float]:
    """Exact accuracy if EVERY puzzle were stopped after k steps, k = 1..S (forced with a smaller max)."""
    return [float(c) for c in trace.correct.float().mean(1)]


def steps_by_group(steps: torch.Tensor, groups: torch.Tensor) -> dict[int, float]:
    """Mean halting step per difficulty group (e.g. the number of blanks)."""
    return {int(g): float(steps[groups == g].float().mean()) for g in groups.unique()}
