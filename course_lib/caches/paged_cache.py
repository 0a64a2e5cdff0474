"""A paged KV cache (vLLM's PagedAttention design, seed 002's `block_mgr`), readable rather than fast.

A contiguous cache (chapter 03) reserves `max_len` slots for every sequence of a batch up front. With
sequences of very different lengths most of those slots are never written. A paged cache cuts memory
into fixed-size **blocks** of `block_size` token slots and hands them out as a sequence grows:

- one **pool** of blocks per layer for keys and for values, allocated once: (n_blocks, block_size, H_kv, d);
- a **free list** of unused blocks;
- per sequence a **block table**: its i-th block holds its tokens i·block_size .. (i+1)·block_size - 1;
- the **slot mapping**: token position p of a sequence lives at slot table[p // block_size] · block_size
  + p % block_size of the pool (a block number and an offset, flattened);
- **reference counts**, so requests with the same prompt share the prompt's blocks (`fork`); a shared block
  that is only partly filled is copied before a sequence writes into it (**copy-on-write**).

`BlockManager` is the bookkeeping (plain Python, no tensors). `PagedKVCache` owns the pool tensors and a
manager; a `PagedBatch` is a batch of its sequences, answering to the cache protocol like every cache.
`cache.step(seq_ids, T)` reserves T slots per sequence and returns the object the model's forward pass
talks to (`layer(i).update(k, v)`, as every cache in the course), with positions and a mask.
Attention gathers each sequence's blocks back into token order, so it is token-exact with the
contiguous cache; a real kernel (vLLM's) reads the blocks in place instead of gathering them.
The step masks with `layers.slot_mask` (the one mask rule) and runs `caches.protocol.step_logits` (the one
model step). The decode loop over this cache (`generate_paged`, its `PagedRunner`) stands above it, in
`decoding.paged`.

Seed 002 is one of the course's source documents: notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence

import torch

from course_lib.caches.protocol import KVLayout, step_logits
from course_lib.core.checks import check_int
from course_lib.core.layers import slot_mask

SeqId = Hashable


class PoolExhausted(RuntimeError):
    """No free block is left for a sequence that needs one."""


# --------------------------------------------------------------------------- bookkeeping
class BlockManager:
    """Block tables, a free list and reference counts for a pool of `n_blocks` blocks of `block_size` slots."""

    def __init__(self, n_blocks: int, block_size: int):
        n_blocks, block_size = check_int("n_blocks", n_blocks, low=1), check_int("block_size", block_size, low=1)
        self.n_blocks, self.block_size = n_blocks, block_size
        self.free_blocks: deque[int] = deque(range(n_blocks))  # lowest numbers first: worked examples stay readable
        self.ref = [0] * n_blocks                              # how many sequences use each block
        self.tables: dict[SeqId, list[int]] = {}
        self.lengths: dict[SeqId, int] = {}                    # tokens stored per sequence

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.n_blocks - len(self.free_blocks)

    def add(self, seq: SeqId) -> None:
        """Register a new, empty sequence (it owns no block until it stores a token)."""
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} is already in the cache; free({seq!r}) it or clear_cache() first")
        self.tables[seq], self.lengths[seq] = [], 0

    def fork(self, parent: SeqId, child: SeqId) -> None:
        """The child starts as a copy of the parent that shares every block (reference counts, no data copied)."""
        self._check(parent)
        self.add(child)
        self.tables[child], self.lengths[child] = list(self.tables[parent]), self.lengths[parent]
        for b in self.tables[child]:
            self.ref[b] += 1

    def append(self, seq: SeqId, n: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Reserve slots for n more tokens of `seq`.

        Returns (slots, copies): the pool slot of each new token, and the (source, destination) blocks
        whose contents the caller must copy first (copy-on-write of a shared, partly filled last block).
        All or nothing: if the pool runs out, nothing is reserved and PoolExhausted names the fix.
        """
        _, slots, copies = self.reserve([seq], n)
        return slots[0], copies

    def reserve(self, seqs: Sequence[SeqId], n: int) -> tuple[list[int], list[list[int]], list[tuple[int, int]]]:
        """Reserve n more slots for each sequence of one step -> (starts, slots per sequence, copies).

        All or nothing over the whole step: if the pool runs out for any sequence, every change made
        for the others is undone too (blocks allocated, copy-on-write copies and the reference counts
        they moved, tables, lengths), so the free list, the counts and every table are as before and a
        caller can free something and retry. Only after success should the caller copy `copies`.
        """
        check_int("n", n, low=0)  # tokens per sequence: a negative length would corrupt the table
        if len(set(seqs)) != len(seqs):
            raise ValueError(f"seqs must name each sequence once, got {list(seqs)}")
        for seq in seqs:
            self._check(seq)
        undo: list[tuple] = []  # what to reverse, in order, if the step fails
        starts, slots, copies = [], [], []
        try:
            for seq in seqs:
                starts.append(self.lengths[seq])
                new_slots, new_copies = self._append(seq, n, undo)
                slots.append(new_slots)
                copies += new_copies
        except PoolExhausted:
            self._undo(undo)
            raise
        return starts, slots, copies

    def _append(self, seq: SeqId, n: int, undo: list[tuple]) -> tuple[list[int], list[tuple[int, int]]]:
        table, start, bs = self.tables[seq], self.lengths[seq], self.block_size
        undo.append(("table", seq, list(table), start))
        copies = []
        if n and start % bs and self.ref[table[-1]] > 1:  # writing into a block another sequence still reads
            old = table[-1]
            table[-1] = self._allocate(seq, start, undo)
            self.ref[old] -= 1
            undo.append(("unref", old))
            copies.append((old, table[-1]))
        while len(table) * bs < start + n:
            table.append(self._allocate(seq, len(table) * bs, undo))
        self.lengths[seq] = start + n
        return [self.slot(seq, p) for p in range(start, start + n)], copies

    def _allocate(self, seq: SeqId, position: int, undo: list[tuple]) -> int:
        if not self.free_blocks:
            raise PoolExhausted(f"KV block pool exhausted: sequence {seq!r} needs a block for token {position} and all "
                                f"{self.n_blocks} blocks of {self.block_size} slots are in use; free() finished "
                                f"sequences or build the cache with more blocks (n_blocks > {self.n_blocks})")
        block = self.free_blocks.popleft()
        self.ref[block] = 1
        undo.append(("alloc", block))
        return block

    def _undo(self, undo: list[tuple]) -> None:
        """Reverse a failed step's changes, last first: blocks go back to the front of the free list in
        their old order, copy-on-write sources get their reader back, tables and lengths their old values."""
        for entry in reversed(undo):
            if entry[0] == "alloc":
                self.ref[entry[1]] = 0
                self.free_blocks.appendleft(entry[1])
            elif entry[0] == "unref":
                self.ref[entry[1]] += 1
            else:
                _, seq, table, length = entry
                self.tables[seq][:] = table
                self.lengths[seq] = length

    def slot(self, seq: SeqId, position: int) -> int:
        """Where token `position` of `seq` lives: block table[position // block_size], offset position % block_size."""
        block, offset = divmod(position, self.block_size)
        return self.tables[seq][block] * self.block_size + offset

    def slot_mapping(self, seq: SeqId) -> list[int]:
        """The slot of every stored token of `seq`, in token order (what attention gathers)."""
        self._check(seq)
        return [self.slot(seq, p) for p in range(self.lengths[seq])]

    def free(self, seq: SeqId) -> None:
        """Forget a finished sequence; each block goes back to the free list when no other sequence uses it."""
        self._check(seq)
        for b in self.tables.pop(seq):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free_blocks.append(b)
        del self.lengths[seq]

    def clear_cache(self) -> None:
        """Forget every sequence and return every block (seed 002's `block_mgr.clear_cache()`)."""
        for seq in list(self.tables):
            self.free(seq)

    def describe(self, seq: SeqId) -> str:
        """One line per block of `seq`: which tokens it holds, how full it is, who shares it."""
        self._check(seq)
        lines, n, bs = [f"sequence {seq!r}: {self.lengths[seq]} tokens, block table {self.tables[seq]}"], self.lengths[seq], self.block_size
        for i, b in enumerate(self.tables[seq]):
            first, last = i * bs, min(n, (i + 1) * bs) - 1
            shared = f", shared by {self.ref[b]} sequences" if self.ref[b] > 1 else ""
            lines.append(f"  block {b:>3}: tokens {first:>3}..{last:<3} slots {b * bs}..{b * bs + last - first} "
                         f"({last - first + 1}/{bs} full{shared})")
        return "\n".join(lines)

    def pool_picture(self) -> str:
        """The pool block by block: '#' a filled slot, '.' an empty one, and which sequences hold the block
        (as "name[i]": its i-th block). Free blocks are listed at the end."""
        owners: dict[int, list[str]] = {}
        filled: dict[int, int] = {}
        for seq, table in self.tables.items():
            for i, b in enumerate(table):
                owners.setdefault(b, []).append(f"{seq}[{i}]")
                filled[b] = max(filled.get(b, 0), min(self.block_size, self.lengths[seq] - i * self.block_size))
        lines = [f"block {b:>3} |{'#' * filled[b]}{'.' * (self.block_size - filled[b])}| {', '.join(owners[b])}"
                 for b in sorted(owners)]
        return "\n".join(lines + [f"free: {sorted(self.free_blocks)}"])

    def _check(self, seq: SeqId) -> None:
        if seq not in self.tables:
            raise KeyError(f"sequence {seq!r} is not in the cache (known: {list(self.tables)}); add({seq!r}) it first")


# ------------------------------------------------------------------------------- tensors
class PagedKVCache:
    """The pool tensors of every layer plus a `BlockManager`; `step()` is what a forward pass uses."""

    def __init__(self, n_layer: int, n_kv_head: int, head_dim: int, n_blocks: int, block_size: int = 16,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.manager = BlockManager(n_blocks, block_size)
        shape = (n_layer, n_blocks, block_size, n_kv_head, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_kv_head, self.head_dim, self.block_size = n_kv_head, head_dim, block_size

    @classmethod
    def for_model(cls, model, batch_size: int | None = None, max_len: int | None = None,
                  device: torch.device | str | None = None, *, n_blocks: int | None = None,
                  block_size: int = 16) -> PagedKVCache:
        """A pool shaped for `model` (its `kv_layout()`: layers, kv heads, head size, device, dtype), built
        like every cache: enough blocks for batch_size sequences of max_len tokens (default block_size of
        the model), or exactly n_blocks blocks of block_size slots."""
        lay: KVLayout = model.kv_layout()
        check_int("block_size", block_size, low=1)
        if n_blocks is None:
            check_int("batch_size", batch_size, low=1)
            max_len = check_int("max_len", max_len, low=1, optional=True) or lay.max_len
            n_blocks = batch_size * math.ceil(max_len / block_size)
        return cls(lay.n_layer, lay.n_kv_head, lay.head_dim, n_blocks, block_size,
                   device=lay.device if device is None else device, dtype=lay.dtype)

    @property
    def block_bytes(self) -> int:
        """Keys + values of one block across all layers."""
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    def bytes_in_use(self) -> int:
        return self.manager.num_used * self.block_bytes

    def add(self, seq: SeqId) -> None:
        self.manager.add(seq)

    def fork(self, parent: SeqId, child: SeqId) -> None:
        self.manager.fork(parent, child)

    def free(self, seq: SeqId) -> None:
        self.manager.free(seq)

    def clear_cache(self) -> None:
        self.manager.clear_cache()

    def step(self, seq_ids: Sequence[SeqId], n_new: int) -> PagedStep:
        """Reserve n_new slots for each sequence (one row of the batch each) and return the step's view.

        All or nothing: if the pool runs out for one sequence, the sequences already reserved in this
        step are rolled back too, so a caller can free something and retry.
        """
        check_int("n_new (tokens per sequence this step)", n_new, low=1)
        if len(set(seq_ids)) != len(seq_ids) or not seq_ids:
            raise ValueError(f"seq_ids must name each sequence once (one row each), got {list(seq_ids)}")
        starts, slots, copies = self.manager.reserve(seq_ids, n_new)  # all or nothing (PoolExhausted)
        for src, dst in copies:  # copy-on-write: every layer's keys and values of the shared block
            self.k[:, dst] = self.k[:, src]
            self.v[:, dst] = self.v[:, src]
        return PagedStep(self, seq_ids, starts, slots)


class PagedBatch:
    """A batch's rows in the pool: row b is sequence seq_ids[b]. It answers to the `Cache` protocol like
    every other cache (batch_size, length, reset, select_rows); `step(n_new)` is a forward pass's view.

    select_rows drops a row by freeing its sequence and repeats one by forking it: the copies share
    every block (copy-on-write), so beam search keeps K beams without copying their common prefix,
    which is how vLLM runs beam search on a paged cache.
    """

    def __init__(self, cache: PagedKVCache, seq_ids: Sequence[SeqId]):
        self.cache, self.seq_ids = cache, list(seq_ids)
        self._forks = 0

    @property
    def batch_size(self) -> int:
        return len(self.seq_ids)

    @property
    def length(self) -> int:
        """The longest row's stored tokens (the rows of a paged batch differ: no padding is stored)."""
        lengths = self.cache.manager.lengths
        return max((lengths.get(s, 0) for s in self.seq_ids), default=0)

    def reset(self) -> None:
        """Every row empty again (its blocks go back to the pool)."""
        for seq in self.seq_ids:
            if seq in self.cache.manager.tables:
                self.cache.free(seq)
            self.cache.add(seq)

    def select_rows(self, rows: torch.Tensor) -> list[SeqId]:
        """Row i becomes what row rows[i] held: unpicked sequences are freed, a row picked again is forked.
        Returns the ids of the forks (new sequences, named ("fork", n))."""
        kept: set[SeqId] = set()
        new_ids, forks = [], []
        for i in rows.tolist():
            seq = self.seq_ids[i]
            if seq in kept:
                child = seq
                while child in self.cache.manager.tables:  # a name no sequence of the pool has yet
                    self._forks += 1
                    child = ("fork", self._forks)
                self.cache.fork(seq, child)
                forks.append(child)
                seq = child
            kept.add(seq)
            new_ids.append(seq)
        for seq in self.seq_ids:
            if seq not in kept:
                self.cache.free(seq)
        self.seq_ids = new_ids
        return forks

    def step(self, n_new: int) -> PagedStep:
        return self.cache.step(self.seq_ids, n_new)


class PagedStep:
    """One forward step over a batch of sequences: the `layers.run_blocks` protocol plus positions and mask.

    Row b holds sequence seq_ids[b], which had starts[b] tokens before this step and writes T new ones.
    """

    def __init__(self, cache: PagedKVCache, seq_ids: Sequence[SeqId], starts: list[int], slots: list[list[int]]):
        dev, m = cache.k.device, cache.manager
        self.cache, T = cache, len(slots[0])
        self.slot_mapping = torch.tensor(slots, dtype=torch.long, device=dev).view(len(seq_ids), T)  # (B, T)
        lengths = [m.lengths[s] for s in seq_ids]
        L = max(lengths)
        # Every row's stored tokens in order, padded to the longest with slot 0 (masked, never attended).
        self.gather = torch.tensor([m.slot_mapping(s) + [0] * (L - n) for s, n in zip(seq_ids, lengths, strict=True)],
                                   dtype=torch.long, device=dev)                                  # (B, L)
        start = torch.tensor(starts, dtype=torch.long, device=dev)[:, None]
        self.positions = start + torch.arange(T, device=dev)[None]                                # (B, T)
        # Query t of row b sits at position starts[b] + t and may attend every key up to it (the one mask rule;
        # the gather's padding slots lie past every query of a shorter row, so causality hides them).
        self.mask = slot_mask(self.positions, L)                                                  # (B, 1, T, L)

    def layer(self, i: int) -> _PagedLayer:
        return _PagedLayer(self, i)

    def advance(self, t: int) -> None:
        """Nothing to count: `PagedKVCache.step` already reserved the slots in the block manager."""


class _PagedLayer:
    def __init__(self, step: PagedStep, index: int):
        self.step, self.index = step, index

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, d) at their slots; return each row's keys and values in token order (B, H_kv, L, d)."""
        s, c = self.step, self.step.cache
        B, H, T, d = k.shape
        out = []
        for pool, new in ((c.k[self.index], k), (c.v[self.index], v)):
            flat = pool.view(-1, H, d)                                    # (n_blocks · block_size, H_kv, d), a view
            flat[s.slot_mapping.reshape(-1)] = new.transpose(1, 2).reshape(B * T, H, d)
            out.append(flat[s.gather].transpose(1, 2))                    # (B, H_kv, L, d)
        return out[0], out[1]


# --------------------------------------------------------------------------- decoding
@torch.no_grad()
def paged_forward(model, cache: PagedKVCache, seq_ids: Sequence[SeqId], ids: torch.Tensor) -> torch.Tensor:
    """Run ids (B, T) as the next T tokens of sequences seq_ids (one per row); return last-position logits (B, vocab)."""
    if ids.shape[0] != len(seq_ids):
        raise ValueError(f"ids has {ids.shape[0]} rows but {len(seq_ids)} sequence ids were given; one id per row")
    step = cache.step(seq_ids, ids.shape[1])
    return step_logits(model, ids, step.positions, step.mask, step)  # the one model step, as with every cache


def contiguous_slots(lengths: Sequence[int], max_len: int | None = None) -> int:
    """Slots a contiguous cache reserves for a batch: every row gets the longest row's length (or max_len)."""
    return len(lengths) * (max(lengths) if max_len is None else max_len)


def paged_slots(lengths: Sequence[int], block_size: int) -> int:
    """Slots a paged cache hands out for the same batch: whole blocks, at most block_size - 1 unused per sequence."""
    return sum(math.ceil(n / block_size) * block_size for n in lengths)
