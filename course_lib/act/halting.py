"""The loops around the ACT step: forced (seed 000's evaluation) and dynamic (real early exit).

- `run_forced`: the reference loop. Call the model until `all_finish`; at evaluation only the
  `steps >= halt_max_steps` rule applies, so every row runs the maximum and the batch halts together.
- `run_dynamic`: a row halts as soon as sigmoid(q_halt) > threshold (or at the max). A halted row
  is FROZEN: its answer and Q values are kept and it gets no more compute — the next step runs the
  network on the still-active rows only. (Re-running the reference step would reset a halted row
  and start it on new data: fine in training, wrong at evaluation.)
- `run_dynamic_refill`: the same, over a whole puzzle set with a fixed number of slots; a slot
  whose puzzle halted is refilled with the next puzzle at once, so the batch stays full.

Seed 000 is one of the course's source documents: notebooks/SOURCES.md#seed-000.
"""

from __future__ import annotations

import torch

from course_lib.act.loss import ACTLossHead, compute_metrics
from course_lib.act.model import ACTReasoner, InnerCarry


@torch.no_grad()
def run_forced(head: ACTLossHead, batch: dict[str, torch.Tensor], return_keys=("preds",)):
    """-> (steps run, metric sums, preds dict). Exactly the seed's `while True: ... if all_finish: break`."""
    carry = head.initial_carry(batch)
    steps = 0
    while True:
        carry, _, metrics, preds, all_finish = head(carry, batch, return_keys)
        steps += 1
        if all_finish:
            break
    return steps, metrics, preds


def halt_now(q_halt: torch.Tensor, steps: torch.Tensor, max_steps: int, threshold: float, min_steps: int = 1) -> torch.Tensor:
    """The dynamic rule: confident enough (sigmoid(q_halt) > threshold) after min_steps, or out of steps."""
    return (steps >= max_steps) | ((torch.sigmoid(q_halt) > threshold) & (steps >= min_steps))


@torch.no_grad()
def run_dynamic(model: ACTReasoner, batch: dict[str, torch.Tensor], threshold: float = 0.5, max_steps: int | None = None,
                min_steps: int = 1, return_keys=("preds",), trace: list | None = None):
    """Dynamic halting with frozen rows -> (steps run, metric sums, preds dict, per-row steps).

    `trace`, if a list, receives one dict per step (which rows were active, their q values).
    """
    inner = model.inner
    max_steps = max_steps or model.config["halt_max_steps"]
    inputs, labels = batch["inputs"], batch["labels"]
    B = len(inputs)
    carry = inner.reset_carry(torch.ones(B, dtype=torch.bool, device=inputs.device), inner.empty_carry(B, inputs.device))
    steps = torch.zeros(B, dtype=torch.long, device=inputs.device)
    logits_out = torch.zeros(B, inputs.shape[1], model.config["vocab_size"], device=inputs.device)
    q_halt_out = torch.zeros(B, device=inputs.device)
    q_cont_out = torch.zeros(B, device=inputs.device)
    active = torch.arange(B, device=inputs.device)
    n = 0
    while len(active):
        sub, logits, q_h, q_c = inner(InnerCarry(carry.z_H[active], carry.z_L[active]), inputs[active])
        carry.z_H[active], carry.z_L[active] = sub.z_H, sub.z_L
        steps[active] += 1
        logits_out[active], q_halt_out[active], q_cont_out[active] = logits.float(), q_h, q_c
        stop = halt_now(q_h, steps[active], max_steps, threshold, min_steps)
        if trace is not None:
            trace.append({"active": active.clone(), "q_halt": q_h.clone(), "q_continue": q_c.clone(), "halted": stop.clone()})
        active = active[~stop]
        n += 1
    halted = torch.ones(B, dtype=torch.bool, device=inputs.device)
    metrics, _, _ = compute_metrics(logits_out, labels, q_halt_out, steps, halted)
    out = {"preds": logits_out.argmax(-1), "logits": logits_out, "q_halt_logits": q_halt_out,
           "q_continue_logits": q_cont_out, "steps": steps, **batch}
    return n, metrics, {k: out[k] for k in return_keys if k in out}, steps


@torch.no_grad()
def run_dynamic_refill(model: ACTReasoner, inputs: torch.Tensor, batch_size: int, threshold: float = 0.5,
                       max_steps: int | None = None, min_steps: int = 1) -> dict[str, torch.Tensor | int]:
    """Stream N puzzles through `batch_size` slots; a halted slot takes the next puzzle immediately.

    Returns per-puzzle preds, q_halt and steps, plus `iterations` (network calls) and
    `row_steps` (rows computed in total, the real work).
    """
    inner = model.inner
    max_steps = max_steps or model.config["halt_max_steps"]
    N, device = len(inputs), inputs.device
    carry = inner.empty_carry(batch_size, device)
    slot = torch.full((batch_size,), -1, dtype=torch.long, device=device)   # puzzle index in each slot
    slot_steps = torch.zeros(batch_size, dtype=torch.long, device=device)
    preds = torch.zeros_like(inputs)
    q_halt = torch.zeros(N, device=device)
    steps = torch.zeros(N, dtype=torch.long, device=device)
    next_puzzle, iterations, row_steps = 0, 0, 0
    while True:
        free = (slot < 0).nonzero().flatten()
        k = min(len(free), N - next_puzzle)
        if k:  # refill: new puzzles start from the initial states
            fill = free[:k]
            slot[fill] = torch.arange(next_puzzle, next_puzzle + k, device=device)
            slot_steps[fill] = 0
            reset = torch.zeros(batch_size, dtype=torch.bool, device=device)
            reset[fill] = True
            carry = inner.reset_carry(reset, carry)
            next_puzzle += k
        active = (slot >= 0).nonzero().flatten()
        if not len(active):
            break
        sub, logits, q_h, _ = inner(InnerCarry(carry.z_H[active], carry.z_L[active]), inputs[slot[active]])
        carry.z_H[active], carry.z_L[active] = sub.z_H, sub.z_L
        slot_steps[active] += 1
        iterations += 1
        row_steps += len(active)
        stop = halt_now(q_h, slot_steps[active], max_steps, threshold, min_steps)
        done = active[stop]
        idx = slot[done]
        preds[idx], q_halt[idx], steps[idx] = logits[stop].argmax(-1), q_h[stop], slot_steps[done]
        slot[done] = -1
    return {"preds": preds, "q_halt_logits": q_halt, "steps": steps, "iterations": iterations, "row_steps": row_steps}
