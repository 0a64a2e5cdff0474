"""What one decode step costs, split into its parts (chapter 03, `benchmarks/decode.py`).

Every step function here does the same work a generation step does: a forward pass and a greedy
pick (argmax) of the next token. Parts that are compared are timed in interleaved rounds with
`timing.compare` (warm-up, device synchronised, medians; one round calls every part once, in a
rotated order), so a change in the machine's load hits every part alike. The parts:

- `no cache, full head`: re-run the context and compute the 100k-wide output head at every
  position (what a plain forward pass does);
- `no cache, last head`: re-run the context, head at the last position only (nanoGPT's inference
  form, `GPT.forward(last_only=True)`; what `generate(use_cache=False)` does): the fair baseline;
- `KV cache`: one token through the layers, attending over the cached keys and values;
- `head matvec`: the output head alone, (B, n_embd) @ (n_embd, vocab): work no step can avoid;
- `0-layer step`: a decode step of the same model with its layers removed (embedding, final norm,
  head, argmax, Python and dispatch overhead): the per-step floor the layers add to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from course_lib.core.timing import Comparison, compare, time_fn
from course_lib.text.gpt import GPT


def random_context(batch: int, length: int, vocab: int, seed: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
    """Token ids (batch, length), reproducible from `seed`, created on `device` (speed does not depend on the ids)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


def zero_layer_twin(model: GPT) -> GPT:
    """The same model without its blocks, sharing its embedding/head and final norm: the per-step floor."""
    twin = GPT({**model.h_params, "n_layer": 1, "dropout": 0.0}).to(model.device).eval()
    twin.blocks = nn.ModuleList()  # built with one block (h_params need n_layer >= 1), then emptied
    twin.tok_emb.weight = twin.lm_head.weight = model.tok_emb.weight
    twin.norm.weight = model.norm.weight
    return twin


def cached_step_fn(model: GPT, context: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument cached decode step + argmax with context.shape[1] - 1 tokens already cached.

    The cache is filled once; every call rewinds it by one position, so every timed call sees the
    same context length."""
    with torch.no_grad():
        _, cache = model.prefill(context[:, :-1])
    tok = context[:, -1:]

    @torch.no_grad()
    def step() -> torch.Tensor:
        nxt = model.decode_step(tok, cache).argmax(-1)
        cache.length -= 1
        return nxt

    return step


def cached_step_ms(model: GPT, context: torch.Tensor, repeats: int = 5) -> float:
    """Median ms of one cached decode step (one thing timed alone: `time_fn`)."""
    return time_fn(cached_step_fn(model, context), model.device, repeats).ms


PARTS = ("full head", "last head", "cached", "head matvec", "0-layer step")


def step_variants(model: GPT, length: int, batch: int = 1, seed: int = 0,
                  parts: tuple[str, ...] = PARTS) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables, one per requested part (see the module doc), at a context of `length`."""
    if not 2 <= length <= model.block_size:
        raise ValueError(f"length must be in [2, block_size={model.block_size}], got {length}")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r}; choose from {', '.join(map(repr, PARTS))}")
    dev = model.device
    ctx = random_context(batch, length, model.h_params["vocab_size"], seed, dev)
    h = torch.randn(batch, model.h_params["n_embd"], generator=torch.Generator().manual_seed(seed)).to(dev)
    make = {
        "full head": lambda: torch.no_grad()(lambda: model(ctx)[:, -1].argmax(-1)),
        "last head": lambda: torch.no_grad()(lambda: model(ctx, last_only=True)[:, -1].argmax(-1)),
        "cached": lambda: cached_step_fn(model, ctx),
        "head matvec": lambda: torch.no_grad()(lambda: model.lm_head(h)),
        "0-layer step": lambda: cached_step_fn(zero_layer_twin(model), ctx),
    }
    return {part: make[part]() for part in parts}


def step_comparison(model: GPT, length: int, batch: int = 1, rounds: int = 5, seed: int = 0,
                    parts: tuple[str, ...] = PARTS, extra: dict[str, Callable[[], Any]] | None = None,
                    baseline: str | None = None) -> Comparison:
    """The requested parts (plus any `extra` callables) timed in interleaved rounds (`timing.compare`)."""
    variants = {**step_variants(model, length, batch, seed, parts), **(extra or {})}
    return compare(variants, rounds=rounds, device=model.device, baseline=baseline, unit="step")


def step_costs(model: GPT, length: int, batch: int = 1, repeats: int = 5, seed: int = 0,
               parts: tuple[str, ...] = PARTS) -> dict[str, float]:
    """Median ms per new token at a context of `length` tokens for each part, timed interleaved.
    (One part alone is timed with `time_fn`: `compare` needs two.)"""
    if len(parts) == 1:
        fn = step_variants(model, length, batch, seed, parts)[parts[0]]
        return {parts[0]: time_fn(fn, model.device, repeats).ms}
    c = step_comparison(model, length, batch, repeats, seed, parts)
    return {part: c.ms(part) for part in parts}


def batch_comparison(model: GPT, batch_sizes: list[int], length: int, rounds: int = 5, seed: int = 0) -> Comparison:
    """One cached decode step per batch size, timed in interleaved rounds; variants are named "batch B"."""
    variants = {f"batch {b}": cached_step_fn(model, random_context(b, length, model.h_params["vocab_size"], seed,
                                                                    model.device)) for b in batch_sizes}
    return compare(variants, rounds=rounds, device=model.device, unit="step")


def batch_rows(c: Comparison, batch_sizes: list[int]) -> list[dict]:
    """Rows for the throughput plot: batch, ms_per_step, tokens_per_s (= batch / median step time)."""
    return [{"batch": b, "ms_per_step": c.ms(f"batch {b}"), "tokens_per_s": b / c.median(f"batch {b}")}
            for b in batch_sizes]


def batch_curve(model: GPT, batch_sizes: list[int], length: int, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Cached decode throughput against batch size at a fixed context: one dict per batch size with
    ms_per_step and tokens_per_s (= batch / step time; new tokens only, prefill not counted)."""
    if len(batch_sizes) == 1:
        ms = cached_step_ms(model, random_context(batch_sizes[0], length, model.h_params["vocab_size"], seed,
                                                  model.device), repeats)
        return [{"batch": batch_sizes[0], "ms_per_step": ms, "tokens_per_s": 1000 * batch_sizes[0] / ms}]
    return batch_rows(batch_comparison(model, batch_sizes, length, repeats, seed), batch_sizes)


def dram_sum_fn(device: str | torch.device = "cpu", megabytes: int = 256) -> tuple[Callable[[], Any], int]:
    """A sum over a buffer far larger than any CPU cache (DRAM streaming), and the bytes it reads."""
    big = torch.ones(megabytes * 2**20 // 4, device=device)
    return big.sum, big.numel() * 4


# The saved reference run chapter 03 prints beside its live timings.
REFERENCE_FILE = "assets/bench/kv_cache_cpu.json"
REFERENCE_COMMAND = "python -m course_lib.decoding.speed --rounds 7 --out assets/bench/kv_cache_cpu.json"


def main(argv: list[str] | None = None) -> int:
    """Measure chapter 03's three timings (speed vs context, what bounds a step, batch throughput),
    each in interleaved rounds, and save them as one JSON reference run."""
    import argparse
    import json
    import os
    import sys

    from course_lib.core.files import atomic_write_text, fresh_output_arg
    from course_lib.text.gpt import load_gpt

    ap = argparse.ArgumentParser(prog="python -m course_lib.decoding.speed", description=main.__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=fresh_output_arg, help="JSON file to write (refused if it exists)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        print("error: --rounds and --threads must be >= 1", file=sys.stderr)
        return 2
    out = args.out
    torch.set_num_threads(args.threads)
    model = load_gpt(device="cpu")
    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    for length in (16, 64, 128, 256, 384, 500):
        c = step_comparison(model, length, rounds=args.rounds, parts=("full head", "last head", "cached"))
        rows += [{"section": "length", "length": length, "variant": n, "median_s": round(c.median(n), 9),
                  "times_s": [round(t, 9) for t in c.times[n]]} for n in c.names]
    dram, dram_bytes = dram_sum_fn()
    c = step_comparison(model, 128, rounds=max(args.rounds, 9), parts=("head matvec", "0-layer step", "cached"),
                        extra={"DRAM sum": dram})
    rows += [{"section": "bound", "length": 128, "variant": n, "median_s": round(c.median(n), 9),
              "times_s": [round(t, 9) for t in c.times[n]]} for n in c.names]
    del dram
    sizes = [1, 2, 4, 8, 16, 32]
    c = batch_comparison(model, sizes, 128, rounds=max(args.rounds, 8))
    rows += [{"section": "batch", "length": 128, "batch": b, "variant": f"batch {b}",
              "median_s": round(c.median(f"batch {b}"), 9), "times_s": [round(t, 9) for t in c.times[f"batch {b}"]]}
             for b in sizes]
    result = {"command": "python -m course_lib.decoding.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
              "torch": torch.__version__, "threads": args.threads, "rounds": args.rounds,
              "head_bytes": model.lm_head.weight.numel() * model.lm_head.weight.element_size(), "dram_bytes": dram_bytes,
              "load_average_1min": f"{load_before:.1f} to {os.getloadavg()[0]:.1f}",
              "machine": f"{os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=1) + "\n", overwrite=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
