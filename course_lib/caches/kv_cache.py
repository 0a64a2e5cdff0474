"""A contiguous, pre-allocated key/value cache (the gpt-fast design).

Decoding one token only needs that token's query; the keys and values of every earlier token
are unchanged, so we store them once instead of recomputing the whole prefix every step.
Buffers are allocated once at (B, H, max_len, head_dim) and written in place, so shapes and
addresses stay fixed across steps (what compiled graphs and CUDA graphs want).

It follows the cache protocol (`caches.protocol`): for a step of T new tokens every layer calls
`cache.layer(i).update(k, v)`, which writes at [length, length + T) and returns the keys and
values of all tokens so far; after the last layer `layers.run_blocks` calls `cache.advance(T)`.
The mask follows `layers.attend_mask`, the same rule as a forward pass without a cache (which is
this mask at length 0). `select_rows` is how a loop drops finished rows or reorders beams.
"""

from __future__ import annotations

import torch

from course_lib.caches.protocol import KVLayout
from course_lib.core.checks import check_int
from course_lib.core.layers import attend_mask


class LayerKV:
    """One layer's view of the cache."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, d) after the cached tokens; return all keys and values (B, H, length + T, d)."""
        c = self.cache
        start, T = c.length, k.shape[2]
        if start + T > c.max_len:
            raise RuntimeError(f"KV cache full: {start} cached + {T} new tokens > max_len {c.max_len}; "
                               "reset() it or allocate a longer cache")
        c.k[self.index, :, :, start:start + T] = k
        c.v[self.index, :, :, start:start + T] = v
        return c.k[self.index, :, :, :start + T], c.v[self.index, :, :, :start + T]


class KVCache:
    """Keys and values of every layer for a batch, plus how many positions are filled."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already filled (the same for every row)
        self._layers = [LayerKV(self, i) for i in range(n_layer)]

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty cache shaped for `model` (its `kv_layout()`); max_len defaults to its block_size."""
        args, kwargs = KVLayout.cache_args(model, batch_size, max_len, device)
        return cls(*args, **kwargs)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Row i becomes old row rows[i] (drop finished rows, reorder or repeat beams).

        Same batch size (beams): only the filled slots are copied, in place (a listing fills a few dozen of
        block_size slots). A smaller batch (finished rows dropped): new, smaller buffers."""
        if rows.numel() == self.batch_size:
            n = self.length
            self.k[:, :, :, :n] = self.k[:, rows, :, :n]
            self.v[:, :, :, :n] = self.v[:, rows, :, :n]
        else:
            self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)

    def layer(self, i: int) -> LayerKV:
        return self._layers[i]

    def advance(self, t: int) -> None:
        """Call once per forward step, after every layer has stored its t new positions."""
        self.length += t

    def reset(self) -> None:
        """Forget everything (a new prompt must never see the previous one's keys)."""
        self.length = 0

    def attn_mask(self, q_len: int, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean (B, 1, q_len, length + q_len) mask for the next step; True = may attend.

        New query j sits at slot length + j and may see every slot <= its own (causal).
        key_padding (B, length + q_len) marks real tokens with 1, so left padding is never attended.
        """
        mask = attend_mask(q_len, self.length, key_padding, causal=True, device=self.k.device)
        return mask.expand(self.batch_size, 1, q_len, self.length + q_len)


def kv_cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, tokens: int, batch: int = 1,
                   bytes_per_value: int = 2) -> int:
    """Memory of a full KV cache: 2 (keys and values) × layers × kv-heads × head_dim × bytes × tokens × batch.

    Why it matters: the weights are paid once, the cache once per token per sequence, so at long
    contexts and large batches the cache, not the model, decides how many sequences fit.
    """
    for name, v in [("n_layer", n_layer), ("n_kv_head", n_kv_head), ("head_dim", head_dim), ("tokens", tokens),
                    ("batch", batch), ("bytes_per_value", bytes_per_value)]:
        check_int(name, v, low=1)
    return 2 * n_layer * n_kv_head * head_dim * bytes_per_value * tokens * batch
