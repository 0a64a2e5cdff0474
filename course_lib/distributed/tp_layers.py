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


class TPAttention(Attention):
    """This rank's heads of an `Attention`: q, k, v of its heads (column), their output columns (row).

    With grouped-query attention (n_kv_head < n_head) the key/value heads are the unit of the split:
    rank r keeps key/value heads [r * kv, (r + 1) * kv) with kv = n_kv_head / world and the query
    heads that read them, [r * q, (r + 1) * q) with q = n_head / world. Query head h reads key/value
    head h // group, and contiguous blocks of q query heads map onto contiguous blocks of kv key/value
    heads, so every rank keeps whole groups and attention needs no communication. A world size that
    does not divide n_kv_head is refused (1 key/value head, multi-query, cannot be split: no
    replication here, so every weight lives on exactly one rank).

    The computation is `Attention.forward` itself, over this rank's heads (it reads the head counts and
    the projections from the module): no second copy of the attention code to keep in step.
    """

    def __init__(self, attn: Attention, rank: int, world_size: int):
        nn.Module.__init__(self)  # not Attention.__init__: the weights are a slice of attn's, not new ones
        H, H_kv, d = attn.n_head, attn.n_kv_head, attn.head_dim
        if H % world_size or H_kv % world_size:
            raise ValueError(f"world size {world_size} must divide n_head {H} and n_kv_head {H_kv}: "
                             "every rank holds whole key/value heads and the query heads that share them")
        self.n_head, self.n_kv_head, self.head_dim = H // world_size, H_kv // world_size, d
        self.causal, self.rope_fn, self.dropout = attn.causal, attn.rope_fn, 0.0
        h0, g0 = rank * self.n_head, rank * self.n_kv_head
        q_rows = slice(h0 * d, (h0 + self.n_head) * d)  # this rank's query heads (rows of q)
        kv_rows = slice(g0 * d, (g0 + self.n_kv_head) * d)  # its key/value heads (rows of k, of v)
        w = attn.qkv.weight.detach()
        wq, wk, wv = w.split([H * d, H_kv * d, H_kv * d])  # the fused projection: q rows, then k, then v
        self.qkv = _linear(torch.cat([wq[q_rows], wk[kv_rows], wv[kv_rows]]).clone())  # ((q + 2 kv) * d, C)
        self.proj = _linear(attn.proj.weight.detach()[:, q_rows].clone())  # (C, q * d)

    def partial(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn_mask: torch.Tensor | None = None,
                kv_cache=None) -> torch.Tensor:
        """Attention.forward over this rank's heads: a partial (B, T, C) that the all-reduce sums."""
        return self(x, rope, attn_mask, kv_cache)


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
