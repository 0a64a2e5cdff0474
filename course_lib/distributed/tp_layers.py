"""Megatron-style tensor-parallel layers, cut from the layers of a loaded single-process model.

A linear layer y = x W^T can be split two ways (Megatron-LM, Shoeybi et al. 2019):
- column-parallel: each rank keeps some OUTPUT features (rows of W) and computes its slice of y;
  no communication, the slices simply sit on different ranks.
- row-parallel: each rank keeps some INPUT features (columns of W), multiplies the matching slice
  of x, and gets a partial y; the full y is the SUM over ranks (an all-reduce).
Chaining them costs one all-reduce per pair: attention splits q/k/v by heads (column) and the
output projection by the same heads (row); SwiGLU splits gate/up by hidden unit (column) and down
by the same units (row). Each layer here returns its PARTIAL output (`partial`); the block sums it.
The 100k-row table splits by vocabulary: an embedding lookup is a row-parallel sum (other ranks
add zeros), the tied output head is column-parallel (each rank scores its slice of the vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.layers import Attention, Block, SwiGLU
from course_lib.distributed.comm import Comm


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items (torch.tensor_split's sizes: the first n % world get one more)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_sizes(n: int, world_size: int) -> list[int]:
    return [b - a for a, b in (shard_range(n, r, world_size) for r in range(world_size))]


def column_shard(weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rows (output features) [start, stop) of a (out, in) weight: this rank's slice of y."""
    a, b = shard_range(weight.shape[0], rank, world_size)
    return weight[a:b].clone()  # a copy: the full weight can be freed, only the shard stays


def row_shard(weight: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Columns (input features) [start, stop) of a (out, in) weight: a partial y to be summed over ranks."""
    a, b = shard_range(weight.shape[1], rank, world_size)
    return weight[:, a:b].clone()


def _linear(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


class TPAttention(nn.Module):
    """This rank's heads of an `Attention`: q, k, v of heads [h0, h1) (column), their output columns (row)."""

    def __init__(self, attn: Attention, rank: int, world_size: int):
        super().__init__()
        if attn.n_head % world_size:
            raise ValueError(f"world size {world_size} does not divide n_head {attn.n_head}")
        d, H = attn.head_dim, attn.n_head
        self.n_head, self.head_dim, self.causal, self.rope_fn = H // world_size, d, attn.causal, attn.rope_fn
        h0 = rank * self.n_head
        rows = slice(h0 * d, (h0 + self.n_head) * d)  # this rank's heads inside q, inside k, inside v
        w = attn.qkv.weight.detach()
        C = H * d
        self.qkv = _linear(torch.cat([w[i * C:(i + 1) * C][rows] for i in range(3)]).clone())  # (3 * local, C)
        self.proj = _linear(attn.proj.weight.detach()[:, rows].clone())  # (C, local)

    def partial(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn_mask: torch.Tensor | None = None,
                kv_cache=None) -> torch.Tensor:
        """The same computation as Attention.forward over this rank's heads; returns a partial (B, T, C)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope
        q, k = self.rope_fn(q, cos, sin), self.rope_fn(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # the cache holds only this rank's heads
        is_causal = self.causal and attn_mask is None and kv_cache is None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class TPSwiGLU(nn.Module):
    """This rank's hidden units of a `SwiGLU`: gate and up rows (column), down columns (row)."""

    def __init__(self, ffn: SwiGLU, rank: int, world_size: int):
        super().__init__()
        self.gate = _linear(column_shard(ffn.gate.weight.detach(), rank, world_size))
        self.up = _linear(column_shard(ffn.up.weight.detach(), rank, world_size))
        self.down = _linear(row_shard(ffn.down.weight.detach(), rank, world_size))

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TPBlock(nn.Module):
    """A pre-norm block with two all-reduces: after attention's and after SwiGLU's partial output.
    The norms are tiny and replicated: every rank holds the full residual stream x (B, T, C)."""

    def __init__(self, block: Block, comm: Comm):
        super().__init__()
        self.comm = comm
        self.attn_norm, self.ffn_norm = block.attn_norm, block.ffn_norm
        self.attn = TPAttention(block.attn, comm.rank, comm.world_size)
        self.ffn = TPSwiGLU(block.ffn, comm.rank, comm.world_size)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn_mask: torch.Tensor | None = None,
                kv_cache=None) -> torch.Tensor:
        x = x + self.comm.all_reduce(self.attn.partial(self.attn_norm(x), rope, attn_mask, kv_cache))
        return x + self.comm.all_reduce(self.ffn.partial(self.ffn_norm(x)))


class VocabParallelTable(nn.Module):
    """Rows [v0, v1) of the tied embedding / output head table.

    Lookup: ids outside this rank's rows give zeros, so the all-reduced sum is exactly the full
    lookup (x + 0 == x in floating point). Head: logits for this rank's slice of the vocabulary only.
    """

    def __init__(self, weight: torch.Tensor, comm: Comm):
        super().__init__()
        self.comm = comm
        self.vocab_size = weight.shape[0]
        self.sizes = shard_sizes(self.vocab_size, comm.world_size)
        self.v0, self.v1 = shard_range(self.vocab_size, comm.rank, comm.world_size)
        self.weight = nn.Parameter(weight.detach()[self.v0:self.v1].clone(), requires_grad=False)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        mine = (idx >= self.v0) & (idx < self.v1)
        local = F.embedding((idx - self.v0).clamp(0, self.v1 - self.v0 - 1), self.weight)
        return self.comm.all_reduce(local * mine[..., None])

    def local_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) -> this rank's logits (..., v1 - v0) for token ids v0 .. v1 - 1."""
        return F.linear(h, self.weight)
