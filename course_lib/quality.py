"""Measuring what sampling produces (chapter 02): many sampled lines, their well-formed and distinct rates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .batching import generate_batch


@torch.no_grad()
def sample_lines(model, enc, prompts: Sequence[str], n_per_prompt: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, repetition_penalty: float = 1.0, max_new_tokens: int = 36,
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
