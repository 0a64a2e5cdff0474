"""The decode loop over a paged KV cache: `generate_paged` and its runner.

The cache itself (`caches.paged_cache`: blocks, tables, slot mapping, sharing, copy-on-write) stands
below; this module plugs it into THE loop (`decoding.decode.generate_ids`: eos ids, stop strings,
repetition penalty, the block_size policy) through a `PagedRunner`: one request per row, each
prefilled alone at its own length, finished rows leaving the batch and freeing their blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from course_lib.caches.paged_cache import PagedBatch, PagedKVCache, SeqId, paged_forward
from course_lib.core.checks import check_int
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings, check_sampling_args


class PagedRunner:
    """The decode loop's runner for a paged cache: row b is sequence batch.seq_ids[b] (a `PagedBatch`). The
    prefill runs each row's real tokens alone (its padding stripped: a paged cache never stores padding);
    with a shared `prefix` the first prefill runs the prefix once and forks it into every row. Finished
    rows leave the batch and free their blocks; a repeated row (beam search) is forked."""

    drops_rows = True

    def __init__(self, model, cache: PagedKVCache, n_rows: int, prefix: list[int] | None = None):
        self.model, self.cache, self.prefix = model, cache, prefix or []
        self.batch = PagedBatch(cache, range(n_rows))
        self.added: list[SeqId] = []  # what this run put in the cache (generate_paged frees what is left)

    def _add(self, seq: SeqId, parent: SeqId | None = None) -> None:
        if seq in self.added:  # a re-prefill after the window slid: start the row over
            self.cache.free(seq)
        self.cache.fork(parent, seq) if parent is not None else self.cache.add(seq)
        if seq not in self.added:
            self.added.append(seq)

    def prefill(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        dev, logits = window.device, []
        shared = bool(self.prefix) and not self.added  # the prefix is shared on the first prefill only
        if shared:
            self._add("prefix")
            prefix_logits = paged_forward(self.model, self.cache, ["prefix"], torch.tensor([self.prefix], device=dev))
        for b, seq in enumerate(self.batch.seq_ids):  # each request alone, at its own length
            row = window[b] if mask is None else window[b][mask[b].bool()]
            own = row[len(self.prefix):] if shared else row
            self._add(seq, "prefix" if shared else None)
            logits.append(paged_forward(self.model, self.cache, [seq], own[None]) if len(own) else prefix_logits)
        return torch.cat(logits)                                                   # (rows, vocab)

    def step(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return paged_forward(self.model, self.cache, self.batch.seq_ids, window[:, -1:])  # every request, one token

    def select_rows(self, rows: torch.Tensor) -> None:
        self.added += self.batch.select_rows(rows)  # the batch asks the pool: free dropped rows, fork repeated ones

    def owned(self) -> list[SeqId]:
        """The sequences of this run still in the cache."""
        return [seq for seq in self.added if seq in self.cache.manager.tables]

    def sample(self, settings: SamplingSettings, logits: torch.Tensor, generator, draw: str) -> torch.Tensor:
        return settings.sample(logits, generator, draw)


def _as_token_list(name: str, toks) -> list[int]:
    """A prompt or prefix as a list of ints: a list/tuple of ints or a 1-d integer tensor."""
    if isinstance(toks, torch.Tensor):
        if toks.dim() != 1 or toks.dtype.is_floating_point or toks.dtype == torch.bool:
            raise ValueError(f"{name} must be a list of token ids or a 1-d integer tensor, got a tensor of shape "
                             f"{tuple(toks.shape)} and dtype {toks.dtype}")
        return toks.tolist()
    if isinstance(toks, (str, bytes)) or not isinstance(toks, Sequence):
        raise ValueError(f"{name} must be a list of token ids, got {type(toks).__name__}; encode text first (enc.encode)")
    for t in toks:
        check_int(f"{name}[i] (a token id)", t)
    return [int(t) for t in toks]


@torch.no_grad()
def generate_paged(model, cache: PagedKVCache, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None, top_p: float | None = None, *,
                   prefix: Sequence[int] = (), generator: torch.Generator | None = None,
                   free: bool = True, repetition_penalty: float = 1.0, eos_token_id: int | list[int] | None = None,
                   stop: str | list[str] | None = None, pad_token_id: int | None = None, enc=None) -> list[list[int]]:
    """New tokens for each request prefix + prompts[i] (token ids; prompts may differ in length); temperature=0 is greedy.

    The decode loop (`decoding.decode`: eos ids, stop strings, repetition penalty, the block_size policy)
    with a `PagedRunner`. A non-empty `prefix` (e.g. a brand prompt every request shares) is run once and
    its blocks are shared by every request (`fork`). Each request's own tokens are then run alone (no
    padding) and all requests decode together, one token per row per step. free=False keeps the
    sequences (ids 0..n-1, the prefix "prefix") in the cache so its blocks can be inspected; free them
    afterwards. With eos ids or stop strings a finished row's list is padded with pad_token_id.
    """
    settings = SamplingSettings(temperature, top_k, top_p, repetition_penalty)
    check_sampling_args(max_new_tokens=max_new_tokens)
    prefix = _as_token_list("prefix", prefix)
    if isinstance(prompts, (str, torch.Tensor)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of requests, each a list of token ids")
    rows = [prefix + _as_token_list(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
    if any(len(r) == 0 for r in rows):
        raise ValueError("give at least one request, each with at least one token (in its prompt or in prefix)")
    dev, T = model.device, max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long, device=dev)         # left-padded: the loop's batch form
    mask = torch.zeros(len(rows), T, dtype=torch.long, device=dev)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = torch.tensor(r, device=dev)
        mask[b, T - len(r):] = 1
    runner = PagedRunner(model, cache, len(rows), prefix if T <= model.block_size else None)  # cropped: no sharing
    try:
        out = generate_ids(model, ids, max_new_tokens, settings.temperature, settings.top_k, settings.top_p,
                           repetition_penalty=settings.repetition_penalty, generator=generator,
                           attention_mask=mask if T > min(len(r) for r in rows) else None,
                           eos_token_id=eos_token_id, stop=stop, pad_token_id=pad_token_id, enc=enc, runner=runner)
    except Exception:
        free = True  # never leave a failed request's blocks behind
        raise
    finally:
        if free:
            for seq in runner.owned():
                cache.free(seq)
    return out[:, T:].tolist()
