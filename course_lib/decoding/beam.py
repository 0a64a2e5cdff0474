"""Beam search: the most likely continuations, found step by step without sampling (chapter 02).

Hugging Face semantics (`BeamSearchScorer`, `BeamHypotheses`):

- every step, each of the `num_beams` live beams is extended by every token; the
  max(2, 1 + n_eos) * num_beams best extensions (by summed log-probability; n_eos = how many eos
  ids) are looked at in order: an extension ending in an eos id is a *finished hypothesis* (only if
  it ranks among the first num_beams), the others become the next beams until there are num_beams
  of them; if every token is an eos id no beam can continue and the row is finished;
- a finished hypothesis is scored sum_logprob / generated_length ** length_penalty (the length
  counts the eos token) and kept in a heap that holds the num_beams best ones;
- early stopping: True ends a row as soon as num_beams hypotheses are finished; False (the default,
  like HF) ends it when the best live beam, at its current length, cannot beat the worst finished
  one; "never" only when no continuation up to max_new_tokens can;
- at the end, live beams count as hypotheses too, and the best-scoring one is returned.

num_beams=1 with no eos is greedy decoding. Beam search is deterministic: temperature is ignored,
top-k and top-p (sampling filters) are rejected.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import torch

from course_lib.core.checks import check_generation_inputs
from course_lib.decoding.runners import CachedRunner, UncachedRunner
from course_lib.decoding.sampling import SamplingSettings, check_sampling_args
from course_lib.decoding.stopping import check_stopping_args

NEG = -1e9  # the score of the initial duplicate beams: never chosen while a real candidate exists


def check_beam_args(num_beams: int, length_penalty: float, early_stopping: bool | str = False) -> None:
    """Raise ValueError naming the argument and its allowed range."""
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1 (1 = no beam search), got {num_beams!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or length_penalty != length_penalty:
        raise ValueError(f"length_penalty must be a number >= 0, got {length_penalty!r}")
    if num_beams > 1 and length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0 with num_beams > 1 (0 = sum of log-probs, 1 = mean), "
                         f"got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


@dataclass
class BeamHypotheses:
    """The num_beams best finished hypotheses of one row, in a min-heap (the worst is popped first)."""

    num_beams: int
    length_penalty: float
    early_stopping: bool | str
    max_new_tokens: int
    heap: list = field(default_factory=list)  # (score, tie-breaker, tokens, sum_logprob)
    _order: itertools.count = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self.heap)

    def score(self, sum_logprob: float, length: int) -> float:
        return sum_logprob / (length ** self.length_penalty)

    @property
    def worst_score(self) -> float:
        return self.heap[0][0] if self.heap else float("inf")

    def add(self, tokens: list[int], sum_logprob: float, length: int) -> None:
        score = self.score(sum_logprob, length)
        if len(self) < self.num_beams or score > self.worst_score:
            heapq.heappush(self.heap, (score, -next(self._order), tokens, sum_logprob))
            if len(self) > self.num_beams:
                heapq.heappop(self.heap)

    def is_done(self, best_sum_logprob: float, cur_len: int) -> bool:
        """Can no live beam still enter the heap? (cur_len: generated length of the candidates)."""
        if len(self) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping is False:  # HF's heuristic: the best beam scored at its current length
            highest = self.score(best_sum_logprob, cur_len)
        else:  # "never": log-probs only fall, so the bound is the best sum at the most favourable length
            length = self.max_new_tokens if self.length_penalty > 0 else cur_len
            highest = self.score(best_sum_logprob, length)
        return self.worst_score >= highest

    def best(self) -> tuple[float, list[int], float]:
        """(score, tokens, sum_logprob) of the best hypothesis (ties: the one finished first)."""
        score, _, tokens, total = max(self.heap)
        return score, tokens, total


@dataclass
class BeamResult:
    sequences: torch.Tensor        # (B, T + longest) prompt + best hypothesis per row, padded with pad_token_id
    scores: list[float]            # the best hypothesis' score per row
    sum_logprobs: list[float]      # its summed log-probability
    hypotheses: list[list[tuple[float, list[int]]]]  # per row: (score, tokens), best first
    steps: int                     # model calls (decode steps)
    rows_processed: int            # sum over steps of the rows fed through the model (the cost)


@torch.no_grad()
def beam_search(model, idx: torch.Tensor, max_new_tokens: int, num_beams: int, *, length_penalty: float = 1.0,
                eos_token_id: int | list[int] | None = None, early_stopping: bool | str = False,
                repetition_penalty: float = 1.0, pad_token_id: int | None = None,
                attention_mask: torch.Tensor | None = None, use_cache: bool = True) -> BeamResult:
    """Beam search over idx (B, T); see the module docstring for the rules."""
    check_beam_args(num_beams, length_penalty, early_stopping)
    check_sampling_args(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
    eos, _ = check_stopping_args(eos_token_id, None)
    attention_mask = check_generation_inputs(idx, model.h_params["vocab_size"], attention_mask, pad_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    if max_new_tokens == 0:
        return BeamResult(idx, [0.0] * idx.shape[0], [0.0] * idx.shape[0], [[] for _ in range(idx.shape[0])], 0, 0)
    settings = SamplingSettings(repetition_penalty=repetition_penalty)
    B, T = idx.shape
    K, block, dev = num_beams, model.block_size, idx.device
    x = idx.repeat_interleave(K, dim=0)                                        # (B*K, T)
    mask = None if attention_mask is None else attention_mask.to(dev).long().repeat_interleave(K, dim=0)
    beam_scores = torch.full((B, K), NEG, dtype=torch.float64, device=dev)
    beam_scores[:, 0] = 0.0                                                     # only beam 0 is real at first
    hyps = [BeamHypotheses(K, float(length_penalty), early_stopping, max_new_tokens) for _ in range(B)]
    done = [False] * B
    eos_set = set(eos)
    # The decode loop's runners run each step (the same cache and step as every other method); beam search keeps
    # its own loop around them because it chooses K candidates per row from K * vocab, not one token per row.
    runner = CachedRunner(model) if use_cache else UncachedRunner(model)
    steps, rows_processed = 0, 0
    for step in range(max_new_tokens):
        window = x[:, -block:]
        wmask = None if mask is None else mask[:, -block:]
        if step == 0 or x.shape[1] > block:
            logits = runner.prefill(window, wmask)
        else:
            logits = runner.step(window, wmask)
        steps, rows_processed = steps + 1, rows_processed + x.shape[0]
        if repetition_penalty != 1.0:
            logits = settings.penalise(logits, window, wmask)
        logp = torch.log_softmax(logits.double(), dim=-1)                      # (B*K, V)
        V = logp.shape[-1]
        cand = (logp + beam_scores.view(-1, 1)).view(B, K * V)
        # HF keeps max(2, 1 + n_eos) * K candidates: each beam has at most n_eos eos extensions, so at
        # least K are not eos and K beams can always continue (2K alone fails when several eos ids lead).
        n_keep = min(max(2, 1 + len(eos)) * K, K * V)
        top_scores, top_idx = torch.topk(cand, n_keep, dim=1)                   # (B, n_keep), best first
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()             # one transfer per step
        prev = x[:, T:].tolist()
        new_rows, new_tokens, new_scores = [], [], []
        for b in range(B):
            if done[b]:  # a finished row keeps K padded dummy beams
                new_rows += [b * K] * K
                new_tokens += [pad] * K
                new_scores += [NEG] * K
                continue
            chosen = 0
            for rank, (score, flat) in enumerate(zip(top_scores[b], top_idx[b], strict=True)):
                beam, token = divmod(flat, V)
                if token in eos_set:
                    if rank < K:
                        hyps[b].add(prev[b * K + beam] + [token], score, step + 1)
                    continue
                new_rows.append(b * K + beam)
                new_tokens.append(token)
                new_scores.append(score)
                chosen += 1
                if chosen == K:
                    break
            done[b] = hyps[b].is_done(max(top_scores[b]), step + 1)
            if chosen < K:  # every token is an eos id: no beam can continue, the row is finished
                new_rows += [b * K] * (K - chosen)
                new_tokens += [pad] * (K - chosen)
                new_scores += [NEG] * (K - chosen)
                done[b] = True
        rows = torch.tensor(new_rows, dtype=torch.long, device=dev)
        x = torch.cat([x.index_select(0, rows), torch.tensor(new_tokens, device=dev)[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask.index_select(0, rows), torch.ones(B * K, 1, dtype=mask.dtype, device=dev)], dim=1)
        beam_scores = torch.tensor(new_scores, dtype=torch.float64, device=dev).view(B, K)
        runner.select_rows(rows)  # cache row i now holds the beam it extends
        if all(done):
            break
    # Rows still searching: their live beams are hypotheses too (at the length they reached).
    gen = x[:, T:].tolist()
    final = beam_scores.tolist()
    for b in range(B):
        if not done[b]:
            for k in range(K):
                hyps[b].add(gen[b * K + k], final[b][k], len(gen[b * K + k]))
    best = [h.best() for h in hyps]
    longest = max(len(tokens) for _, tokens, _ in best)
    seq = torch.full((B, T + longest), pad, dtype=torch.long, device=dev)
    seq[:, :T] = idx
    for b, (_, tokens, _) in enumerate(best):
        if tokens:
            seq[b, T:T + len(tokens)] = torch.tensor(tokens, device=dev)
    ranked = [[(s, toks) for s, _, toks, _ in sorted(h.heap, reverse=True)] for h in hyps]
    return BeamResult(seq, [s for s, _, _ in best], [t for _, _, t in best], ranked, steps, rows_processed)
