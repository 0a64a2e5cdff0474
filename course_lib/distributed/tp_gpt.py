"""The course GPT split over `world_size` ranks, and its decode loop (gpt-fast style: prefill, decode_one, sample).

Every rank holds: the norms (tiny, replicated), n_head / world_size heads of every attention
layer, 1 / world_size of every SwiGLU's hidden units, and 1 / world_size of the vocabulary table
(the tied embedding and head: the largest tensor). Its KV cache holds only its own heads.

Choosing the next token must give the SAME token on every rank, or the ranks' caches diverge:
- greedy: a distributed argmax. Each rank finds the max of its logit slice; an all-gather of
  (max, index) pairs (2 numbers per rank) lets every rank pick the largest, ties going to the
  lowest token id — exactly torch.argmax over the full row.
- sampling: the filters (top-k, top-p) need the whole row, so the slices are all-gathered
  (vocab numbers per row) and every rank runs the single-process sampler with a generator seeded
  identically: same logits + same random numbers = same token, with no extra broadcast.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.caches.kv_cache import KVCache
from course_lib.core.layers import default_positions, rope_angles, run_blocks
from course_lib.decoding.sampling import SamplingSettings, check_sampling_args
from course_lib.distributed.comm import Comm
from course_lib.distributed.process_group import check_divides
from course_lib.distributed.tp_layers import TPBlock, VocabParallelTable
from course_lib.text.gpt import GPT


def local_max_pair(local: torch.Tensor, v0: int) -> torch.Tensor:
    """(B, v_local) logits of ids v0 .. -> (B, 2): the slice's max and its global id (the first, if tied).
    Ids are stored as float64 next to the value: exact for any vocabulary (< 2^53)."""
    val, idx = local.double().max(-1, keepdim=True)
    return torch.cat([val, (idx + v0).double()], -1)


def global_argmax(pairs: torch.Tensor) -> torch.Tensor:
    """(B, world, 2) pairs in rank order -> ids (B, 1): the largest value; a tie goes to the lowest rank,
    whose ids are the lowest, so this is exactly torch.argmax over the full row (first maximum)."""
    best = pairs[..., 0].argmax(-1, keepdim=True)  # argmax returns the first maximum
    return pairs[..., 1].gather(1, best).long()


class TPGPT(nn.Module):
    """This rank's part of a loaded `GPT`; `prefill`/`decode_step` return this rank's logit slice."""

    def __init__(self, model: GPT, comm: Comm):
        super().__init__()
        hp = model.h_params
        check_divides(comm.world_size, hp["n_head"], model.n_kv_head)
        self.comm, self.h_params = comm, dict(hp)
        self.block_size, self.head_dim = model.block_size, model.head_dim
        self.n_local_heads = hp["n_head"] // comm.world_size
        self.n_local_kv_heads = model.n_kv_head // comm.world_size  # what the cache holds (grouped-query: fewer)
        self.table = VocabParallelTable(model.tok_emb.weight, comm)
        self.blocks = nn.ModuleList(TPBlock(b, comm) for b in model.blocks)
        self.norm = model.norm
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.table.weight.device

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return KVCache(len(self.blocks), batch_size, self.n_local_kv_heads, self.head_dim, max_len or self.block_size,
                       device=self.device, dtype=self.table.weight.dtype)

    def _run(self, idx: torch.Tensor, position_ids: torch.Tensor, mask, cache: KVCache) -> torch.Tensor:
        rope = rope_angles(position_ids, self.head_dim, self.h_params["rope_theta"])
        return self.norm(run_blocks(self.blocks, self.table.embed(idx), rope, mask, cache))

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Prompt (B, T) into an emptied cache -> this rank's last-position logits (B, v1 - v0)."""
        B, T = idx.shape
        cache.reset()
        h = self._run(idx, default_positions(B, T, 0, None, idx.device), cache.attn_mask(T), cache)
        return self.table.local_logits(h[:, -1, :])

    @torch.no_grad()
    def decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row (B, 1) -> this rank's logits (B, v1 - v0)."""
        pos = default_positions(token.shape[0], 1, cache.length, None, token.device)
        return self.table.local_logits(self._run(token, pos, None, cache)[:, -1, :])

    def argmax(self, local: torch.Tensor) -> torch.Tensor:
        """Distributed argmax of (B, v_local) slices -> global ids (B, 1), identical on every rank."""
        pair = local_max_pair(local, self.table.v0)
        pairs = self.comm.all_gather_last(pair, [2] * self.comm.world_size)  # (B, 2 * world): 2 numbers per rank
        return global_argmax(pairs.view(-1, self.comm.world_size, 2))

    def full_logits(self, local: torch.Tensor) -> torch.Tensor:
        """All-gather the vocabulary slices -> (B, vocab) on every rank."""
        return self.comm.all_gather_last(local.float(), self.table.sizes)

    def next_token(self, local: torch.Tensor, settings: SamplingSettings,
                   generator: torch.Generator | None) -> torch.Tensor:
        if settings.temperature == 0:
            return self.argmax(local)
        return settings.sample(self.full_logits(local), generator)


@torch.no_grad()
def tp_generate(model: TPGPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T) on every rank; the same tokens as GPT.generate with
    the same arguments and a generator in the same state (greedy: token-exact by construction of the
    argmax, up to the float rounding of the all-reduced sums)."""
    settings = SamplingSettings(temperature, top_k, top_p)
    check_sampling_args(max_new_tokens=max_new_tokens)
    if idx.shape[1] + max_new_tokens > model.block_size:
        raise ValueError(f"prompt ({idx.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
                         f"of {model.block_size}; ask for fewer tokens")
    if max_new_tokens == 0:
        return idx
    cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens)
    nxt = model.next_token(model.prefill(idx, cache), settings, generator)
    out = [idx, nxt]
    for _ in range(max_new_tokens - 1):
        nxt = model.next_token(model.decode_step(nxt, cache), settings, generator)
        out.append(nxt)
    return torch.cat(out, dim=1)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the parameters this process holds (each tensor once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total
