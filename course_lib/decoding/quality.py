"""Measuring what sampling produces (chapter 02): many sampled lines, their well-formed and distinct rates."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from course_lib.decoding.batching import generate_batch


@torch.no_grad()
def sample_lines(model, enc, prompts: Sequence[str], n_per_prompt: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, repetition_penalty: float = 1.0, max_new_tokens: int = 56,
                 seed: int = 0, batch_size: int = 64, draw: str = "inverse_cdf") -> list[str]:
    """n_per_prompt sampled first lines (prompt included) per prompt, reproducible from seed.

    Rows are sampled in batches of batch_size; the fast inverse-CDF draw is the default because a
    measurement needs thousands of lines (`SamplingSettings.sample`)."""
    gen = torch.Generator().manual_seed(seed)
    many = [p for p in prompts for _ in range(n_per_prompt)]
    comps = generate_batch(model, enc, many, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                           generator=gen, batch_size=batch_size, stop="\n", draw=draw)
    return [p + c for p, c in zip(many, comps, strict=True)]


def quality_and_diversity(lines: Sequence[str], is_good: Callable[[str], bool]) -> dict:
    """Well-formed rate (grammar check) and distinct rate (unique lines / lines) of samples."""
    n = len(lines)
    if n == 0:
        raise ValueError("no lines to measure")
    return {"n": n, "well_formed": sum(map(is_good, lines)) / n, "distinct": len(set(lines)) / n}


def line_rates(lines: Sequence[str], train_lines: set[str] | frozenset[str] = frozenset()) -> dict:
    """Rates of sampled lines, each with its 95% Wilson interval (`stats.rate`):

    well_formed — the grammar accepts the line (quality); novel — well-formed and not in
    `train_lines` (the training stream: not a copy); heldout — well-formed and in the held-out
    split, which training never saw (generalisation; about 10% of all lines are held out);
    distinct — distinct lines / lines (diversity; capped at 1 and falls as n grows, so compare it
    only at equal n).
    """
    from course_lib.core.stats import rate
    from course_lib.text.corpus import is_well_formed, split_of

    n = len(lines)
    if n == 0:
        raise ValueError("no lines to measure")
    good = [line for line in lines if is_well_formed(line)]
    return {"n": n,
            "well_formed": rate(len(good), n),
            "novel": rate(sum(line not in train_lines for line in good), n),
            "heldout": rate(sum(split_of(line) == "heldout" for line in good), n),
            "distinct": rate(len(set(lines)), n)}


class StepCounter:
    """Counts decode steps (calls of the output head) and the rows they processed: the cost of a
    decoding method in model work, independent of the machine. Use as a context manager."""

    def __init__(self, model):
        self.model, self.steps, self.rows = model, 0, 0

    def _hook(self, module, args) -> None:
        self.steps += 1
        self.rows += args[0].shape[0]

    def __enter__(self) -> StepCounter:
        self._handle = self.model.lm_head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@torch.no_grad()
def generate_scored(model, enc, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0, *,
                    eos_token_id: int, generator: torch.Generator | None = None, batch_size: int = 64,
                    draw: str = "inverse_cdf") -> tuple[list[str], list[float], list[int]]:
    """Completions (text before eos), each with the model's log-probability of its tokens (eos included;
    raw logits, as `scoring.sequence_logprob` computes them) and their count, collected while generating:
    scoring afterwards would cost a second pass through the 100k-wide head."""
    from course_lib.decoding.batching import pad_batch
    from course_lib.decoding.decode import generate_ids
    from course_lib.decoding.stopping import finished_text

    texts, sums, counts = [], [], []
    eos = torch.tensor([eos_token_id], device=model.device)
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_batch(enc, list(prompts[start:start + batch_size]), model.block_size)
        ids, mask = ids.to(model.device), mask.to(model.device)
        total = torch.zeros(ids.shape[0], dtype=torch.float64, device=model.device)
        count = torch.zeros(ids.shape[0], dtype=torch.long, device=model.device)
        live = torch.ones(ids.shape[0], dtype=torch.bool, device=model.device)

        def on_step(step, logits, adjusted, nxt, total=total, count=count, live=live):
            lp = torch.log_softmax(logits.float(), -1).gather(1, nxt)[:, 0].double()  # finished rows: NaN, not used
            total.add_(torch.where(live, lp, torch.zeros_like(lp)))
            count.add_(live.long())
            live.logical_and_(~torch.isin(nxt[:, 0], eos))

        out = generate_ids(model, ids, max_new_tokens, temperature, attention_mask=mask, eos_token_id=eos_token_id,
                           generator=generator, draw=draw, on_step=on_step)
        texts += [finished_text(enc, row, eos_token_id=eos_token_id) for row in out[:, ids.shape[1]:].tolist()]
        sums += total.tolist()
        counts += count.tolist()
    return texts, sums, counts


@torch.no_grad()
def compare_decoders(model, enc, prompts: Sequence[str], *, beams: Sequence[int] = (2, 4, 8), samples_per_prompt: int = 20,
                     temperature: float = 1.0, max_new_tokens: int = 56, seed: int = 0,
                     train_lines: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """Greedy vs beam search (each width in `beams`) vs sampling on the same prompts, one listing each.

    Every method stops a row at the newline token (eos). Per method: line rates (`line_rates`),
    the mean sequence log-probability of the line after its prompt (newline included; the model's
    own log-probabilities, as `scoring.sequence_logprob` gives them) and the log-probability per
    token, distinct outputs per prompt, and the cost: decode steps and rows processed, and the
    seconds its generation took. Greedy and beam search are deterministic, so one run per prompt is
    all they can give; sampling draws samples_per_prompt lines per prompt.
    """
    from course_lib.decoding.batching import pad_batch
    from course_lib.decoding.beam import beam_search
    from course_lib.decoding.stopping import finished_text

    nl = enc.encode("\n")[0]
    rows: list[dict] = []

    def record(method, many_prompts, completions, sums, counts, counter, t0) -> None:
        seconds = time.perf_counter() - t0
        lines = [p + c for p, c in zip(many_prompts, completions, strict=True)]
        per_prompt: dict[str, set] = {}
        for p, line in zip(many_prompts, lines, strict=True):
            per_prompt.setdefault(p, set()).add(line)
        rows.append({"method": method, **line_rates(lines, train_lines),
                     "mean_logprob": sum(sums) / len(sums), "mean_token_logprob": sum(sums) / sum(counts),
                     "distinct_per_prompt": sum(map(len, per_prompt.values())) / len(per_prompt),
                     "steps": counter.steps, "rows_processed": counter.rows, "seconds": seconds, "lines": lines})

    t0 = time.perf_counter()
    with StepCounter(model) as c:
        comps, sums, counts = generate_scored(model, enc, prompts, max_new_tokens, 0.0, eos_token_id=nl,
                                              batch_size=len(prompts))
    record("greedy", list(prompts), comps, sums, counts, c, t0)
    ids, mask = pad_batch(enc, prompts, model.block_size)
    ids, mask = ids.to(model.device), mask.to(model.device)
    for k in beams:
        t0 = time.perf_counter()
        with StepCounter(model) as c:
            res = beam_search(model, ids, max_new_tokens, k, eos_token_id=nl, attention_mask=mask)
        best = [h[0][1] for h in res.hypotheses]  # token lists of the best hypotheses (eos included when finished)
        comps = [finished_text(enc, toks, eos_token_id=nl) for toks in best]
        record(f"beam {k}", list(prompts), comps, res.sum_logprobs, [len(t) for t in best], c, t0)
    many = [p for p in prompts for _ in range(samples_per_prompt)]
    t0 = time.perf_counter()
    with StepCounter(model) as c:
        comps, sums, counts = generate_scored(model, enc, many, max_new_tokens, temperature, eos_token_id=nl,
                                              generator=torch.Generator().manual_seed(seed))
    record(f"sampling T={temperature}", many, comps, sums, counts, c, t0)
    return rows
