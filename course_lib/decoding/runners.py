"""How a step of the decode loop runs: a *runner* owns a cache kind and runs prefill and steps against it.

`decoding.decode.decode_loop` asks a runner for last-position logits (prefill over a window, then one token
per step), to drop finished rows (`select_rows`: the runner asks its cache) and to choose the next token.
Here: the protocol, the uncached runner and chapter 03's contiguous cache. The static and paged runners
live with the loops that use them (`decoding.static.StaticRunner`, `decoding.paged.PagedRunner`); the
tensor-parallel and chapter-06 runners with their models (`distributed.tp_gpt.TPRunner`, `labs.engine`).
"""

from __future__ import annotations

from typing import Protocol

import torch

from course_lib.decoding.sampling import SamplingSettings


class Runner(Protocol):
    """How a step runs against which cache; `decode_loop` calls it. window (B, T) is the sequence so far
    (at most block_size tokens), mask its (B, T) attention mask or None; both return (B, vocab) logits."""

    drops_rows: bool  # can finished rows leave the batch? (a static cache keeps its shapes: no)

    def prefill(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor: ...

    def step(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor: ...

    def select_rows(self, rows: torch.Tensor) -> None: ...

    def sample(self, settings: SamplingSettings, logits: torch.Tensor, generator: torch.Generator | None,
               draw: str) -> torch.Tensor: ...


class UncachedRunner:
    """No cache: the whole window every step, the head at the last position only (nanoGPT's inference form)."""

    drops_rows = True

    def __init__(self, model):
        self.model = model

    def prefill(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model(window, attention_mask=mask, last_only=True)[:, -1, :]

    step = prefill

    def select_rows(self, rows: torch.Tensor) -> None:
        pass

    def sample(self, settings, logits, generator, draw):
        return settings.sample(logits, generator, draw)


class CachedRunner(UncachedRunner):
    """Chapter 03's contiguous KV cache: prefill the window once, then one token per step."""

    def __init__(self, model, cache=None):
        self.model, self.cache = model, cache

    def prefill(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        logits, self.cache = self.model.prefill(window, attention_mask=mask, cache=self.cache)
        return logits

    def step(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model.decode_step(window[:, -1:], self.cache, attention_mask=mask)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)
