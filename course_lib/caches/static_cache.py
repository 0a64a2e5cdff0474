"""A static KV cache (the gpt-fast design): one compiled graph serves every decode step.

Chapter 03's `KVCache` is easy to read but returns a slice that grows by one token per step and
builds its mask from a Python int (`cache.length`). A compiler sees a new shape and a new constant
every step, so `torch.compile` recompiles (chapter 06 counts it). Here nothing changes shape:

- the buffers are (n_layer, B, n_head, max_len, head_dim) and attention always reads all of them;
- the slots to write are a tensor `input_pos` (T,), written with `index_copy_`;
- the mask is `layers.slot_mask` (the one mask rule) at the query slots `input_pos` over all max_len
  slots, so slots not yet written (zeros, or a previous prompt's keys) are never attended;
- left padding lives in two tensors too: `valid` (B, max_len) and `pad` (B, 1), the number of
  pad slots per row, so each row's rotary position is `slot - pad` (chapter 03's cumsum - 1).

`forward_static(model, cache, ids, input_pos)` runs the one model step (`caches.protocol.step_logits`)
against this cache; `compile_decode_step` gives a `torch.compile`d decode step that dynamo traces once.
The decode loop over this cache (`generate_static`, its `StaticRunner`) stands above it, in `decoding.static`.

`generate_static(..., compile=True)` is gpt-fast's recipe in one call: the decode step compiled
whole (fullgraph, static shapes; `mode="reduce-overhead"` = CUDA graphs on CUDA), the prefill
compiled separately at a few bucketed prompt lengths (a prompt is left-padded up to its bucket, so
a new prompt length does not mean a new graph), and caches of a few bucketed lengths reused per
model (fixed addresses, which CUDA graphs replay against).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from course_lib.caches.protocol import KVLayout, step_logits
from course_lib.core.layers import slot_mask

StepFn = Callable[..., torch.Tensor]


class StaticKVCache(nn.Module):
    """Fixed-size key/value buffers for a batch; positions come in as a tensor, never a Python int.

    An nn.Module with (non-persistent) buffers, as in gpt-fast, so `.to(device)` moves it and
    `torch.export` treats the in-place writes as buffer mutations of one graph.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        # row s: the slots slot s may attend (the one mask rule as a table; chapter 06's lab reads it)
        self.register_buffer("causal", slot_mask(torch.arange(max_len, device=device), max_len)[0, 0], persistent=False)
        # valid[b, s] is False at a left-padding slot; pad[b] counts them
        self.register_buffer("valid", torch.ones(batch_size, max_len, dtype=torch.bool, device=device), persistent=False)
        self.register_buffer("pad", torch.zeros(batch_size, 1, dtype=torch.long, device=device), persistent=False)
        self.max_len, self.n_layer = max_len, n_layer
        self.length = 0  # slots written, as the loop counts them (graphs never read it: they get input_pos)

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None,
                  device: torch.device | str | None = None) -> StaticKVCache:
        """A cache shaped for `model` (its `kv_layout()`); max_len defaults to its block_size."""
        args, kwargs = KVLayout.cache_args(model, batch_size, max_len, device)
        return cls(*args, **kwargs)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def advance(self, t: int) -> None:
        """Count t more written slots (for the loop; a compiled step writes at input_pos and never reads this)."""
        self.length += t

    def select_rows(self, rows: torch.Tensor) -> None:
        """Row i becomes old row rows[i]. The buffers keep their addresses when the batch size stays (a
        compiled graph or CUDA graph holds them); a new batch size means new buffers, and a new graph."""
        for name, dim in (("k", 1), ("v", 1), ("valid", 0), ("pad", 0)):  # dim: where the batch rows are
            buf = getattr(self, name)
            if rows.numel() == buf.shape[dim]:
                buf.copy_(buf.index_select(dim, rows))
            else:
                setattr(self, name, buf.index_select(dim, rows))

    def set_padding(self, attention_mask: torch.Tensor | None) -> None:
        """Before a prefill: mark left-padding slots (attention_mask (B, T), 1 = real token) as never attended."""
        self.valid.fill_(True)
        self.pad.zero_()
        if attention_mask is not None:
            T = attention_mask.shape[1]
            self.valid[:, :T] = attention_mask.bool()
            self.pad.copy_((attention_mask == 0).sum(-1, keepdim=True))

    def positions(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Rotary positions (B, T) of the tokens written at slots input_pos (T,): slot minus the row's padding."""
        return (input_pos[None, :] - self.pad).clamp(min=0)

    def mask(self, input_pos: torch.Tensor) -> torch.Tensor:
        """Boolean (B, 1, T, max_len), True = may attend: causal up to the slot, never a pad slot,
        except that a padded query sees itself (a row of all False would make softmax NaN)."""
        return slot_mask(input_pos, self.max_len, self.valid)

    def reset(self) -> None:
        """Forget the previous sequence (zero the buffers, no padding). Not needed for correctness between
        prompts (the mask hides every slot not yet written), but it is what `clear_cache()` means."""
        self.k.zero_()
        self.v.zero_()
        self.set_padding(None)
        self.length = 0

    def at(self, input_pos: torch.Tensor) -> _StepView:
        """The object `layers.run_blocks` talks to for one step writing at `input_pos`."""
        return _StepView(self, input_pos)


class _StepView:
    """`layers.run_blocks` protocol: `layer(i).update(k, v)` and `advance(T)`, for one step."""

    def __init__(self, cache: StaticKVCache, input_pos: torch.Tensor):
        self.cache, self.input_pos = cache, input_pos

    def layer(self, i: int) -> _LayerWrite:
        return _LayerWrite(self.cache, i, self.input_pos)

    def advance(self, t: int) -> None:
        """Nothing to count: the caller owns the position tensor (a Python counter here would be a new constant every step)."""


class _LayerWrite:
    def __init__(self, cache: StaticKVCache, index: int, input_pos: torch.Tensor):
        self.cache, self.index, self.input_pos = cache, index, input_pos

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, d) at slots input_pos; return the whole buffers (B, H, max_len, d)."""
        k_all, v_all = self.cache.k[self.index], self.cache.v[self.index]
        k_all.index_copy_(2, self.input_pos, k)
        v_all.index_copy_(2, self.input_pos, v)
        return k_all, v_all


def forward_static(model, cache: StaticKVCache, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Run ids (B, T) written at slots input_pos (T,) through the model; return last-position logits (B, vocab).

    Used for the prefill (T = prompt length, input_pos = arange(T)) and for each decode step (T = 1).
    Every shape depends only on B, T and max_len, so with T = 1 one graph fits every step.
    """
    return step_logits(model, ids, cache.positions(input_pos), cache.mask(input_pos), cache.at(input_pos))


class StaticStep(nn.Module):
    """`forward_static` as a module holding the model and the cache, for `torch.jit.trace` / `torch.export`
    (the cache writes become buffer mutations). No branch: the same code path is right for any T."""

    def __init__(self, model: nn.Module, cache: StaticKVCache):
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return forward_static(self.model, self.cache, ids, input_pos)


def bucket_length(n: int, buckets: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)) -> int:
    """The smallest bucket >= n: padding prompts to a few lengths bounds the number of compiled graphs."""
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}; add a larger bucket")


def pad_left(idx: torch.Tensor, length: int, attention_mask: torch.Tensor | None = None,
             pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad idx (B, T) to (B, length); returns (ids, attention_mask) with 0 at the new pad slots."""
    B, T = idx.shape
    mask = torch.ones_like(idx) if attention_mask is None else attention_mask.to(idx.device).long()
    if length < T:
        raise ValueError(f"cannot pad {T} tokens to a shorter length {length}")
    ids = torch.cat([idx.new_full((B, length - T), pad_id), idx], dim=1)
    return ids, torch.cat([mask.new_zeros((B, length - T)), mask], dim=1)


def compile_decode_step(backend: str | Callable = "inductor", **compile_kwargs) -> StepFn:
    """`forward_static` compiled for decode steps: fullgraph (a graph break is an error) and static shapes.

    backend="inductor" generates fused C++/Triton code; a custom backend (a callable) lets tests count
    graphs without paying for code generation.
    """
    return torch.compile(forward_static, backend=backend, fullgraph=True, dynamic=False, **compile_kwargs)


# Prompt lengths the compiled prefill is traced at, and cache lengths (attention reads every slot of the
# cache, so a 128-token job should not pay for 512 slots): about x1.5 apart, so padding wastes < 50%.
BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512)
COMPILE_MODES = (False, True, "decode")


def default_compile_mode(device: torch.device | str) -> str | None:
    """The torch.compile mode for the decode step: CUDA graphs on CUDA (one launch per step instead of
    one per kernel); inductor's default elsewhere (on this course's CPU "max-autotune-no-cudagraphs"
    was not faster than the default in our measurement, see benchmarks/README.md)."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def _decode_fn(model, cache: StaticKVCache, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """`forward_static` under its own code object: dynamo keeps its graphs per code object, so the decode
    graphs and the prefill graphs (`_prefill_fn`) never count against each other's recompile limit."""
    return forward_static(model, cache, ids, input_pos)


def _prefill_fn(model, cache: StaticKVCache, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    return forward_static(model, cache, ids, input_pos)


_COMPILED: dict[tuple[str, str | None], StepFn] = {}
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(B, max_len): StaticKVCache}


def compiled_steps(device: torch.device | str, mode: str | None = "auto") -> tuple[StepFn, StepFn]:
    """(decode step, prefill) compiled with inductor, built once per mode and shared by every call.

    Both are fullgraph with static shapes: one decode graph per (batch, cache length), one prefill graph
    per (batch, bucket, cache length). The prefill never uses CUDA graphs (it runs once per prompt).
    """
    mode = default_compile_mode(device) if mode == "auto" else mode
    if ("decode", mode) not in _COMPILED:
        _COMPILED["decode", mode] = torch.compile(_decode_fn, fullgraph=True, dynamic=False, mode=mode)
        _COMPILED["prefill", mode] = torch.compile(_prefill_fn, fullgraph=True, dynamic=False)
    return _COMPILED["decode", mode], _COMPILED["prefill", mode]


def reused_cache(model, batch_size: int, max_len: int) -> StaticKVCache:
    """One cache per (model, batch size, length), kept while the model lives: the same buffers every call."""
    per_model = _CACHES.setdefault(model, {})
    key = (batch_size, max_len, model.device, model.tok_emb.weight.dtype)
    if key not in per_model:
        per_model[key] = StaticKVCache.for_model(model, batch_size, max_len)
    return per_model[key]


class GraphCounter:
    """A torch.compile backend that counts the graphs dynamo hands it and runs them eagerly (no code generation)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> Callable:
        self.graphs += 1
        return gm.forward
