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

from course_lib.caches.protocol import KVLayout, KVStep
from course_lib.core.layers import rope_angles, run_blocks
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.runners import CachedRunner
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings
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

    def kv_layout(self) -> KVLayout:
        """This rank's cache: its own key/value heads only."""
        return KVLayout(len(self.blocks), self.n_local_kv_heads, self.head_dim, self.block_size,
                        self.device, self.table.weight.dtype)

    def hidden_states(self, idx: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None = None,
                      cache: KVStep | None = None) -> torch.Tensor:
        """`GPT.hidden_states` on this rank's shard (the blocks all-reduce their partial sums)."""
        rope = rope_angles(position_ids, self.head_dim, self.h_params["rope_theta"])
        return self.norm(run_blocks(self.blocks, self.table.embed(idx), rope, mask, cache))

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the logits (B, ..., v1 - v0)."""
        return self.table.local_logits(h)

    # The same cache, positions, masks and step as the single-process model: only hidden_states and lm_head
    # differ, so the shard reuses GPT's methods instead of a second copy. prefill -> (this rank's logit slice
    # (B, v1 - v0), cache); decode_step -> the slice.
    new_cache = GPT.new_cache
    prefill = GPT.prefill
    decode_step = GPT.decode_step

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


class TPRunner(CachedRunner):
    """The decode loop's runner on a shard: GPT's cached steps return this rank's logit slice, and the
    token is chosen by `TPGPT.next_token` (a distributed argmax, or the gathered row sampled alike on
    every rank). Every rank runs the same loop, so every rank appends the same tokens."""

    def sample(self, settings: SamplingSettings, logits: torch.Tensor, generator, draw: str) -> torch.Tensor:
        return self.model.next_token(logits, settings, generator)


@torch.no_grad()
def tp_generate(model: TPGPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE,
                top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None, *, attention_mask: torch.Tensor | None = None,
                eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None,
                pad_token_id: int | None = None, enc=None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T) on every rank; the same tokens as GPT.generate with
    the same arguments and a generator in the same state (greedy: token-exact by construction of the
    argmax, up to the float rounding of the all-reduced sums). The decode loop of every method
    (`decoding.decode`: eos ids, stop strings, left-padded batches, the block_size policy) with a `TPRunner`."""
    return generate_ids(model, idx, max_new_tokens, temperature, top_k, top_p, generator=generator,
                        attention_mask=attention_mask, eos_token_id=eos_token_id, stop=stop,
                        pad_token_id=pad_token_id, enc=enc, runner=TPRunner(model))


def weight_bytes(module: nn.Module) -> int:
    """Bytes of the parameters this process holds (each tensor once)."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total
