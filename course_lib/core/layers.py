"""The building blocks shared by every model in the course (text GPT, ACT reasoner, motion GPT).

A LLaMA-style pre-norm block: RMSNorm → attention with rotary position embeddings → residual,
RMSNorm → SwiGLU feed-forward → residual. The same `Block` runs causal (text, motion) or
bidirectional (ACT puzzles); the only difference is the attention mask.

Seed 002 is one of the course's source documents: notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.checks import check_int, is_valid


class RMSNorm(nn.Module):
    """Scale by the root mean square (no mean subtraction, no bias): cheaper than LayerNorm, as in LLaMA."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even when x is fp16/bf16: the mean of squares overflows easily.
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


# ---------------------------------------------------------------------------------- RoPE
def rope_angles(position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotary embeddings at the given positions, shape (B, 1, T, head_dim).

    position_ids is (B, T) or (T,). Angles are computed in fp32: in fp16 large positions lose
    precision and the rotation drifts. Layout is "rotate-half": dimension i pairs with i + d/2.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None, :]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, head_dim)
    return emb.cos()[:, None], emb.sin()[:, None]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions for a left-padded batch: each row's first real token is position 0.
    Padding gets 0 too (a dummy: it is masked out and never read)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def position_ids_from_lengths(lengths: torch.Tensor | list[int], T: int, side: str = "right") -> torch.Tensor:
    """Seed 002's recipe: row i's real tokens get 0 .. len_i - 1, padding gets 0 (B, T).

    side says where the real tokens are: "right" padding keeps them in the first len_i columns
    (the seed's `position_ids[i, :len_i] = arange(len_i)`), "left" padding in the last len_i.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if lengths.dim() != 1 or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"lengths must be a 1-d list of ints in [0, {T}], got {lengths.tolist()}")
    col = torch.arange(T, device=lengths.device)[None]
    pos = col if side == "right" else col - (T - lengths[:, None])  # left: first real column is T - len
    real = (pos >= 0) & (pos < lengths[:, None])
    return torch.where(real, pos, torch.zeros_like(pos))


def default_positions(batch: int, q_len: int, start: int = 0, attention_mask: torch.Tensor | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Positions (B, q_len) of q_len new tokens that follow `start` earlier ones: the one place they are derived.

    Without padding they are start, start+1, ...; with attention_mask (B, start + q_len) each row
    counts only its real tokens (`position_ids_from_mask`), so left padding does not shift them.
    """
    if attention_mask is None:
        return torch.arange(start, start + q_len, device=device)[None].expand(batch, q_len)
    return position_ids_from_mask(attention_mask)[:, -q_len:]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + d/2) pair of x (B, H, T, d) by its position's angle."""
    return (x.float() * cos + rotate_half(x.float()) * sin).type_as(x)


# ----------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`, with optional grouped-query attention.

    `kv_cache`, when given, is an object with `update(k, v) -> (k_all, v_all)`: it stores this
    step's keys/values and returns everything seen so far, so decoding one token does not
    recompute the keys and values of the whole prefix.

    n_kv_head < n_head is grouped-query attention (GQA; n_kv_head = 1 is multi-query, MQA): each
    group of n_head / n_kv_head query heads shares one key/value head. The cache stores only the
    n_kv_head heads, so it shrinks by that factor; the heads are repeated just before attention.
    One fused `qkv` projection (rows: n_head query heads, then n_kv_head key and value heads) keeps
    the parameter names and shapes of plain multi-head attention when n_kv_head == n_head.
    """

    # The RoPE layout (rotate-half); `rope.set_rope_layout` swaps in Meta's interleaved one (chapter 05).
    rope_fn = staticmethod(apply_rope)

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = True, n_kv_head: int | None = None):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if not is_valid(check_int, n_kv_head, low=1) or n_head % n_kv_head:
            raise ValueError(f"n_kv_head ({n_kv_head!r}) must be an int >= 1 that divides n_head ({n_head}); "
                             f"n_kv_head = n_head is plain multi-head attention, 1 is multi-query")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        d, kv = self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * d, kv, kv], dim=-1)
        q = q.view(B, T, self.n_head, d).transpose(1, 2)         # (B, H, T, d)
        k = k.view(B, T, self.n_kv_head, d).transpose(1, 2)      # (B, H_kv, T, d)
        v = v.view(B, T, self.n_kv_head, d).transpose(1, 2)
        cos, sin = rope
        q, k = self.rope_fn(q, cos, sin), self.rope_fn(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, H_kv, T_total, d): the cache holds only the kv heads
        if self.n_kv_head != self.n_head:  # query head h reads kv head h // group
            group = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        # With an explicit mask (padding, or a cache offset) the mask carries causality itself.
        is_causal = self.causal and attn_mask is None and kv_cache is None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * d))  # n_head * d = C (fewer: a TP shard)


class SwiGLU(nn.Module):
    """Gated feed-forward (LLaMA): down(silu(gate(x)) * up(x))."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=False)
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def swiglu_hidden(n_embd: int, multiple_of: int = 32) -> int:
    """LLaMA's sizing: 2/3 of 4·n_embd (same parameter count as a plain 4× MLP), rounded up."""
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class Block(nn.Module):
    """One pre-norm transformer block; dropout on both residual branches is active only in train()."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, causal: bool = True, ffn_hidden: int | None = None,
                 n_kv_head: int | None = None):
        super().__init__()
        self.attn_norm = RMSNorm(n_embd)
        self.attn = Attention(n_embd, n_head, dropout, causal, n_kv_head)
        self.ffn_norm = RMSNorm(n_embd)
        self.ffn = SwiGLU(n_embd, ffn_hidden or swiglu_hidden(n_embd))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None = None, kv_cache=None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), rope, attn_mask, kv_cache))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               attn_mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
    """x (B, T, C) through every block. With a cache, layer i stores its keys and values in
    `cache.layer(i)` and the cache advances by T once, after the last layer (the only place it does)."""
    for i, block in enumerate(blocks):
        x = block(x, rope, attn_mask, kv_cache=None if cache is None else cache.layer(i))
    if cache is not None:
        cache.advance(x.shape[1])
    return x


# ------------------------------------------------------------------------------- masks
def slot_mask(q_slots: torch.Tensor, n_keys: int, key_valid: torch.Tensor | None = None,
              causal: bool = True, window: int | None = None) -> torch.Tensor:
    """THE mask rule, used by every cache (contiguous, static, paged) and by a forward pass without one.

    q_slots (T,) or (B, T): the slot each new query sits at; keys are slots 0 .. n_keys - 1. Returns a
    boolean (B or 1, 1, T, n_keys), True = "may attend": a causal query sees every slot <= its own;
    key_valid (B, >= n_keys) marks real tokens with 1, and padding is never attended, except that a
    query always sees its own slot (a padded query would otherwise see nothing: softmax of all -inf
    is NaN; its output is garbage and never read). window: a query sees only the last `window` slots up
    to its own (a sliding window, chapter 05's long-context experiment).
    """
    q = q_slots if q_slots.dim() == 2 else q_slots[None]                      # (B or 1, T)
    k_slot = torch.arange(n_keys, device=q.device)[None, None, :]              # (1, 1, n_keys)
    own = k_slot == q[:, :, None]                                              # (B or 1, T, n_keys)
    mask = (k_slot <= q[:, :, None]) if causal else torch.ones_like(own)
    if window is not None:
        mask = mask & (q[:, :, None] - k_slot < window)
    if key_valid is not None:
        mask = (mask & key_valid[:, None, :n_keys].bool()) | own
    return mask[:, None]


def attend_mask(q_len: int, start: int = 0, key_padding: torch.Tensor | None = None, causal: bool = True,
                device: torch.device | str | None = None) -> torch.Tensor:
    """`slot_mask` for q_len new queries after `start` cached tokens (slots start .. start + q_len - 1):
    boolean (B or 1, 1, q_len, start + q_len). key_padding (B, >= start + q_len): 1 = real token.
    Without a cache start is 0 (`padding_mask`)."""
    if key_padding is not None:
        device = key_padding.device
    return slot_mask(torch.arange(start, start + q_len, device=device), start + q_len, key_padding, causal)


def padding_mask(attention_mask: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask from a (B, T) 0/1 padding mask; True means "may attend".
    The cache's mask at length 0 (`attend_mask` with start=0): one rule for both paths."""
    return attend_mask(attention_mask.shape[-1], 0, attention_mask, causal)


# ------------------------------------------------------------------------ shared model helpers
def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation, shared by the text and motion GPTs: N(0, 0.02) for linear and embedding
    weights, zero biases, and residual projections scaled by 1/sqrt(2 * n_layer) so the residual
    stream's variance does not grow with depth."""
    def base(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    model.apply(base)
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "ffn.down.weight")):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))


def num_params(model: nn.Module) -> int:
    """Parameters counted once (a tied output head shares the embedding's tensor)."""
    return sum(p.numel() for p in model.parameters())
