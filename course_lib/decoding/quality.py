"""Measuring what decoding produces: many sampled lines, their well-formed and distinct rates (chapter 02),
and how far a variant's greedy lines follow the original model's (a quantized model, chapter 08b)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from course_lib.core.stats import rate, wilson
from course_lib.decoding.batching import generate_batch, pad_batch
from course_lib.decoding.beam import beam_search
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE
from course_lib.decoding.stopping import finished_text
from course_lib.text.corpus import BRANDS, generate_corpus, is_well_formed, split_of


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
def generate_scored(model, enc, prompts: Sequence[str], max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE, *,
                    eos_token_id: int, generator: torch.Generator | None = None, batch_size: int = 64,
                    draw: str = "inverse_cdf") -> tuple[list[str], list[float], list[int]]:
    """Completions (text before eos), each with the model's log-probability of its tokens (eos included;
    raw logits, as `scoring.sequence_logprob` computes them) and their count, collected while generating:
    scoring afterwards would cost a second pass through the 100k-wide head."""

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


SAMPLING_BATCH = 64  # rows per batch of compare_decoders' sampling run


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
    all they can give; sampling draws samples_per_prompt lines per prompt, in batches of
    SAMPLING_BATCH rows run one after another ("batches"; its "steps" are summed over them).
    "line_logprobs" and "line_tokens" hold each line's summed log-probability and token count, in
    the order of "lines", so per-prompt comparisons can be made.
    """
    nl = enc.encode("\n")[0]
    rows: list[dict] = []

    def record(method, many_prompts, completions, sums, counts, counter, t0, batches=1) -> None:
        seconds = time.perf_counter() - t0
        lines = [p + c for p, c in zip(many_prompts, completions, strict=True)]
        per_prompt: dict[str, set] = {}
        for p, line in zip(many_prompts, lines, strict=True):
            per_prompt.setdefault(p, set()).add(line)
        rows.append({"method": method, **line_rates(lines, train_lines),
                     "mean_logprob": sum(sums) / len(sums), "mean_token_logprob": sum(sums) / sum(counts),
                     "distinct_per_prompt": sum(map(len, per_prompt.values())) / len(per_prompt),
                     "steps": counter.steps, "rows_processed": counter.rows, "batches": batches, "seconds": seconds,
                     "lines": lines, "line_logprobs": list(sums), "line_tokens": list(counts)})

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
                                              generator=torch.Generator().manual_seed(seed), batch_size=SAMPLING_BATCH)
    record(f"sampling T={temperature}", many, comps, sums, counts, c, t0, batches=math.ceil(len(many) / SAMPLING_BATCH))
    return rows


def difference(a: dict, b: dict, z: float = 1.96) -> dict:
    """The difference b − a of two independent rates (`stats.rate` dicts) with its 95% interval.

    Newcombe's hybrid score interval (method 10 of Newcombe 1998), built from the two Wilson
    intervals. Two rates differ at the 95% level when this interval excludes 0 — *not* when their
    own intervals are disjoint: two 95% intervals can overlap while the difference is still clear.
    """
    if not a["n"] or not b["n"]:
        raise ValueError("both rates need at least one sample")
    pa, pb = a["k"] / a["n"], b["k"] / b["n"]
    la, ua = wilson(a["k"], a["n"], z)
    lb, ub = wilson(b["k"], b["n"], z)
    d = pb - pa
    lo = d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    hi = d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return {"diff": round(d, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def verdict(a: dict, b: dict) -> str:
    """'+0.032 (95% CI +0.012 to +0.060): higher' — the difference b − a and what its interval supports."""
    d = difference(a, b)
    lo, hi = d["ci95"]
    word = "higher" if lo > 0 else "lower" if hi < 0 else "no difference shown (the interval contains 0)"
    return f"{d['diff']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}): {word}"


# The saved full sweep chapter 02 displays (its default run measures a smaller one).
SWEEP_FILE = "assets/bench/sampling_sweep_cpu.json"
SWEEP_COMMAND = "python -m course_lib.decoding.quality --samples-per-brand 40 --out assets/bench/sampling_sweep_cpu.json"


def sweep(model, enc, prompts: Sequence[str], samples_per_prompt: int, train_set: set[str] | frozenset[str], *,
          temperatures: Sequence[float] = (0.3, 0.7, 1.0, 1.5), top_ks: Sequence[int] = (5, 20, 50),
          top_ps: Sequence[float] = (0.5, 0.8, 0.9, 0.95), seed: int = 0, batch_size: int = 70) -> list[dict]:
    """Line rates (`line_rates`) for every temperature (no top-k/top-p), then every top-k and every
    top-p at temperature 1.0; one row per setting: {"temperature", "top_k", "top_p", rates...}."""
    settings = ([(t, None, None) for t in temperatures] + [(1.0, k, None) for k in top_ks]
                + [(1.0, None, p) for p in top_ps])
    rows = []
    for t, k, p in settings:
        lines = sample_lines(model, enc, prompts, samples_per_prompt, t, k, p, seed=seed, batch_size=batch_size)
        rows.append({"temperature": t, "top_k": k, "top_p": p, **line_rates(lines, train_set)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the full chapter-02 sweep and save it as JSON (the notebook displays it)."""
    import argparse
    import json
    import platform
    import sys

    from course_lib.core.files import atomic_write_text, fresh_output_arg
    from course_lib.text.corpus import BRANDS, generate_corpus
    from course_lib.text.gpt import load_gpt
    from course_lib.text.tokenizer import get_encoding

    ap = argparse.ArgumentParser(prog="python -m course_lib.decoding.quality", description=main.__doc__)
    ap.add_argument("--samples-per-brand", type=int, default=40)
    ap.add_argument("--train-lines", type=int, default=150_000, help="lines of the training stream (seed 1234)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=fresh_output_arg, help="JSON file to write (refused if it exists)")
    args = ap.parse_args(argv)
    if args.samples_per_brand < 1 or args.train_lines < 0 or args.threads < 1:
        print("error: --samples-per-brand and --threads must be >= 1, --train-lines >= 0", file=sys.stderr)
        return 2
    out = args.out
    torch.set_num_threads(args.threads)
    model, enc = load_gpt(device="cpu"), get_encoding()
    train_set = set(generate_corpus(args.train_lines, 1234, split="train"))
    t0 = time.perf_counter()
    rows = sweep(model, enc, BRANDS, args.samples_per_brand, train_set, seed=args.seed)
    result = {"command": " ".join(["python -m course_lib.decoding.quality", *(argv if argv is not None else sys.argv[1:])]),
              "torch": torch.__version__, "machine": platform.machine(), "threads": args.threads,
              "samples_per_brand": args.samples_per_brand, "brands": len(BRANDS), "train_lines": args.train_lines,
              "seed": args.seed, "seconds": round(time.perf_counter() - t0), "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1, ensure_ascii=False) + "\n", overwrite=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------- what changed: greedy agreement of a variant (chapter 08b)
AGREEMENT_SEED = 4242  # the held-out lines whose openings are prompts (fixed: the prompt set never changes)


def agreement_prompts(per_brand: int = 4, seed: int = AGREEMENT_SEED) -> list[str]:
    """The fixed prompt set: every brand alone, then each brand with the first word of `per_brand`
    held-out-split listings (duplicates dropped, order kept)."""
    prompts = []
    for brand in BRANDS:
        prompts.append(brand)
        for line in generate_corpus(per_brand, seed, split="heldout", brand=brand):
            words = line.split(" ")
            prompts.append(" ".join(words[:len(brand.split(" ")) + 1]))
    return list(dict.fromkeys(prompts))


@torch.no_grad()
def greedy_lines(model: torch.nn.Module, enc, prompts: list[str], max_new_tokens: int = 160, batch_size: int = 32) -> list[list[int]]:
    """Greedy new token ids per prompt, up to and including the first newline (or max_new_tokens)."""
    nl = enc.encode("\n")[0]
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = pad_batch(enc, prompts[start:start + batch_size], model.block_size, device=model.device)
        full = model.generate(ids, max_new_tokens, temperature=0, attention_mask=mask, eos_token_id=nl)
        for row in full[:, ids.shape[1]:].tolist():
            out.append(row[:row.index(nl) + 1] if nl in row else row)
    return out


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How far greedy decoding of a variant follows the reference, prompt by prompt.

    identical: lines whose every new token equals the reference's (k/n with a 95% Wilson interval);
    token_agreement: the reference's tokens produced before the first difference, over all the
    reference's tokens (1.0 = no line ever diverges)."""
    if len(reference) != len(other):
        raise ValueError(f"reference has {len(reference)} lines, other {len(other)}: run both on the same prompts")
    same, matched = 0, 0
    for a, b in zip(reference, other, strict=True):
        same += a == b
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        matched += n
    total = sum(map(len, reference))
    return {"identical": rate(same, len(reference)), "token_agreement": round(matched / max(total, 1), 4),
            "tokens": total}
