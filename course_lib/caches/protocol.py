"""The cache protocol: what every key/value cache of the course (contiguous, static, paged) answers to.

A forward pass talks to a cache through two calls, made by `layers.run_blocks` (the one loop over
blocks every model uses): layer i stores its new keys and values with `cache.layer(i).update(k, v)`
and gets back every key and value it may attend to; after the last layer `cache.advance(T)` says
the step is complete. Everything else a decode loop needs is asked of the cache, never done to its
tensors from outside: how many tokens it holds (`length`), which rows it keeps (`select_rows`: drop
finished rows, reorder or duplicate beams), and `reset`. Every cache is built the same way,
`Cache.for_model(model, batch_size, max_len=None, device=None)`, from the model's `kv_layout()`;
every cache masks with `layers.slot_mask`, the one mask rule.

`step_logits` is the one model step: run new token ids against a cache view at given positions
and mask, and read the logits (at the last position only, unless told otherwise: the 100k-wide head
is the costliest matmul of a decode step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from course_lib.core.checks import check_int


class LayerKV(Protocol):
    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, d) of this step; return the keys and values to attend to (B, H_kv, L, d)."""


class KVStep(Protocol):
    """What `layers.run_blocks` talks to during one forward step."""

    def layer(self, i: int) -> LayerKV: ...

    def advance(self, t: int) -> None: ...


@runtime_checkable
class Cache(Protocol):
    """A key/value cache for a batch of rows (contiguous `KVCache`, `StaticKVCache`; for the paged pool
    `PagedKVCache`, a batch of its sequences, `PagedBatch`)."""

    @property
    def batch_size(self) -> int: ...

    @property
    def length(self) -> int: ...

    def reset(self) -> None: ...

    def select_rows(self, rows: torch.Tensor) -> None:
        """Row i becomes what row rows[i] held (rows may drop, reorder or repeat rows)."""


@dataclass(frozen=True)
class KVLayout:
    """What a cache needs to know about a model: its layers, key/value heads, head size, device, dtype."""

    n_layer: int
    n_kv_head: int
    head_dim: int
    max_len: int
    device: torch.device
    dtype: torch.dtype

    @staticmethod
    def cache_args(model, batch_size: int, max_len: int | None = None,
                   device: torch.device | str | None = None) -> tuple[tuple, dict]:
        """The arguments every contiguous-style cache is built from, for `model` (its `kv_layout()`):
        (n_layer, batch_size, n_kv_head, head_dim, max_len), {device, dtype}; max_len defaults to block_size."""
        lay: KVLayout = model.kv_layout()
        check_int("batch_size", batch_size, low=1)
        max_len = check_int("max_len", max_len, low=1, optional=True) or lay.max_len
        return ((lay.n_layer, batch_size, lay.n_kv_head, lay.head_dim, max_len),
                {"device": lay.device if device is None else device, "dtype": lay.dtype})


def step_logits(model, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVStep | None,
                last_only: bool = True) -> torch.Tensor:
    """The one model step: ids (B, T) at positions (B, T) through `model.hidden_states` against a cache view,
    then the head: logits (B, vocab) at the last position (last_only) or (B, T, vocab) at every position."""
    h = model.hidden_states(ids, positions, mask, cache)
    return model.lm_head(h[:, -1] if last_only else h)
