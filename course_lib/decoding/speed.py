"""What one decode step costs, split into its parts (chapter 03, `benchmarks/decode.py`).

Every step function here does the same work a generation step does: a forward pass and a greedy
pick (argmax) of the next token. They are timed with `timing.time_fn` (warm-up, device
synchronised, median). The parts:

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

import torch
from torch import nn

from course_lib.core.timing import time_fn
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


@torch.no_grad()
def cached_step_ms(model: GPT, context: torch.Tensor, repeats: int = 5) -> float:
    """Median ms of one cached decode step + argmax with context.shape[1] - 1 tokens already cached."""
    _, cache = model.prefill(context[:, :-1])
    tok = context[:, -1:]

    def step() -> torch.Tensor:
        nxt = model.decode_step(tok, cache).argmax(-1)
        cache.length -= 1  # rewind, so every timed step sees the same context length
        return nxt

    return time_fn(step, model.device, repeats).ms


@torch.no_grad()
def step_costs(model: GPT, length: int, batch: int = 1, repeats: int = 5, seed: int = 0,
               parts: tuple[str, ...] = ("full head", "last head", "cached", "head matvec", "0-layer step")) -> dict[str, float]:
    """Median ms per new token at a context of `length` tokens, for each requested part (see the module doc)."""
    if not 2 <= length <= model.block_size:
        raise ValueError(f"length must be in [2, block_size={model.block_size}], got {length}")
    dev = model.device
    ctx = random_context(batch, length, model.h_params["vocab_size"], seed, dev)
    out: dict[str, float] = {}
    for part in parts:
        if part == "full head":
            out[part] = time_fn(lambda: model(ctx)[:, -1].argmax(-1), dev, repeats).ms
        elif part == "last head":
            out[part] = time_fn(lambda: model(ctx, last_only=True)[:, -1].argmax(-1), dev, repeats).ms
        elif part == "cached":
            out[part] = cached_step_ms(model, ctx, repeats)
        elif part == "head matvec":
            h = torch.randn(batch, model.h_params["n_embd"], generator=torch.Generator().manual_seed(seed)).to(dev)
            out[part] = time_fn(lambda h=h: model.lm_head(h), dev, repeats).ms
        elif part == "0-layer step":
            out[part] = cached_step_ms(zero_layer_twin(model), ctx, repeats)
        else:
            raise ValueError(f"unknown part {part!r}; choose from 'full head', 'last head', 'cached', "
                             "'head matvec', '0-layer step'")
    return out


@torch.no_grad()
def batch_curve(model: GPT, batch_sizes: list[int], length: int, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Cached decode throughput against batch size at a fixed context: one dict per batch size with
    ms_per_step and tokens_per_s (= batch / step time; new tokens only, prefill not counted)."""
    rows = []
    for b in batch_sizes:
        ms = cached_step_ms(model, random_context(b, length, model.h_params["vocab_size"], seed, model.device), repeats)
        rows.append({"batch": b, "ms_per_step": ms, "tokens_per_s": 1000 * b / ms})
    return rows
