"""Paged KV cache: block tables and slot mapping, reference counts and copy-on-write, freeing, the pool
limit, and greedy decoding through pages token-exact with the contiguous `KVCache`."""

from __future__ import annotations

import os

import pytest
import torch

from course_lib.caches.paged_cache import (
    BlockManager,
    PagedKVCache,
    PoolExhausted,
    contiguous_slots,
    paged_forward,
    paged_slots,
)
from course_lib.decoding.paged import generate_paged
from course_lib.text.tokenizer import get_encoding

PROMPTS = ["Sunbeam", "农夫山泉 Oat Crackers Honey, 12 pack, family size, gluten free", "伊利", "Crunchwell Oat"]


def contiguous_greedy(model, ids: list[int], new: int) -> list[int]:
    """The reference: the same prompt alone through chapter 03's contiguous KVCache."""
    out = model.generate(torch.tensor([ids], device=model.device), new, temperature=0, use_cache=True)
    return out[0, len(ids):].tolist()


# ------------------------------------------------------------------------- bookkeeping
def test_block_tables_and_slot_mapping_worked_example():
    m = BlockManager(n_blocks=8, block_size=4)
    m.add("a")
    m.add("b")
    assert m.append("a", 6) == ([0, 1, 2, 3, 4, 5], [])        # blocks 0, 1: tokens 0-3, then 4-5
    assert m.append("b", 3) == ([8, 9, 10], [])                # block 2
    assert m.append("a", 3) == ([6, 7, 12], [])                # fills block 1, then a new block 3
    assert m.tables == {"a": [0, 1, 3], "b": [2]} and m.lengths == {"a": 9, "b": 3}
    assert m.slot("a", 8) == 3 * 4 + 0 and m.slot_mapping("b") == [8, 9, 10]
    assert (m.num_used, m.num_free) == (4, 4)
    assert "block table [0, 1, 3]" in m.describe("a") and "(1/4 full)" in m.describe("a")


def test_free_and_clear_cache_return_every_block():
    m = BlockManager(6, 2)
    for s in range(3):
        m.add(s)
        m.append(s, 3)
    assert m.num_free == 0
    m.free(1)
    assert m.num_free == 2 and 1 not in m.tables
    m.fork(0, "child")
    m.append("child", 2)
    m.clear_cache()
    assert m.num_free == 6 and m.tables == {} and m.ref == [0] * 6


def test_fork_shares_blocks_and_copy_on_write_touches_only_the_writer():
    m = BlockManager(8, 4)
    m.add("p")
    m.append("p", 6)                         # block 0 full, block 1 half full
    m.fork("p", "c")
    assert m.tables["c"] == [0, 1] and m.ref[:2] == [2, 2] and m.num_used == 2
    slots, copies = m.append("c", 1)         # c writes into the shared half-full block: copy it first
    assert copies == [(1, 2)] and m.tables["c"] == [0, 2] and slots == [2 * 4 + 2]
    assert m.tables["p"] == [0, 1] and m.ref[:3] == [2, 1, 1]
    assert m.append("p", 1) == ([1 * 4 + 2], [])   # p is the only reader of block 1 now: no copy
    m.free("p")
    assert m.ref[0] == 1 and m.num_used == 2   # the shared full block stays for c


def test_pool_exhaustion_is_a_clear_error_and_reserves_nothing():
    m = BlockManager(3, 4)
    m.add("a")
    m.append("a", 9)
    with pytest.raises(PoolExhausted, match=r"needs a block for token 12 .*free\(\) finished sequences or build the cache "
                                            r"with more blocks \(n_blocks > 3\)"):
        m.append("a", 5)
    assert m.lengths["a"] == 9 and m.tables["a"] == [0, 1, 2] and m.num_free == 0


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        BlockManager(4, 0)
    m = BlockManager(4, 2)
    with pytest.raises(KeyError, match="add"):
        m.append("nope", 1)
    m.add(0)
    with pytest.raises(ValueError, match="already in the cache"):
        m.add(0)


# ------------------------------------------------------------------------------ decoding
def test_paged_greedy_equals_contiguous_for_a_batch_of_different_lengths(shipped_gpt):
    enc = get_encoding()
    prompts = [enc.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)
    cache = PagedKVCache.for_model(shipped_gpt, n_blocks=64, block_size=4)
    got = generate_paged(shipped_gpt, cache, prompts, 12, temperature=0.0)
    assert got == [contiguous_greedy(shipped_gpt, p, 12) for p in prompts]
    assert cache.manager.num_free == 64  # generate_paged freed every sequence


def test_paged_logits_match_the_contiguous_cache(shipped_gpt):
    enc = get_encoding()
    ids = enc.encode(PROMPTS[1])
    x = torch.tensor([ids])
    cache = PagedKVCache.for_model(shipped_gpt, n_blocks=16, block_size=8)
    cache.add(0)
    paged = paged_forward(shipped_gpt, cache, [0], x)
    ref, kv = shipped_gpt.prefill(x)
    assert torch.allclose(paged, ref, atol=1e-5)
    tok = ref.argmax(-1, keepdim=True)
    assert torch.allclose(paged_forward(shipped_gpt, cache, [0], tok), shipped_gpt.decode_step(tok, kv), atol=1e-5)


def test_prefix_sharing_is_token_exact_and_saves_blocks(shipped_gpt):
    enc = get_encoding()
    prefix = enc.encode("农夫山泉 Oat Crackers Honey, 12 pack,")
    suffixes = [enc.encode(s) for s in [" family", " gluten free", "", " 500g"]]
    cache = PagedKVCache.for_model(shipped_gpt, n_blocks=64, block_size=4)
    got = generate_paged(shipped_gpt, cache, suffixes, 8, temperature=0.0, prefix=prefix, free=False)
    assert got == [contiguous_greedy(shipped_gpt, prefix + s, 8) for s in suffixes]
    shared = len(prefix) // 4  # the prefix's full blocks are stored once
    lengths = [len(prefix) + len(s) + 8 - 1 for s in suffixes]   # the last sampled token is never fed back
    unshared = sum(-(-n // 4) for n in lengths)
    assert cache.manager.num_used == unshared - (len(suffixes) - 1) * shared + (-(-len(prefix) // 4) - shared)
    for b in cache.manager.tables["prefix"][:shared]:
        assert cache.manager.ref[b] == len(suffixes) + 1
    cache.clear_cache()
    assert cache.manager.num_free == 64


def test_copy_on_write_leaves_the_other_sequence_unchanged(make_gpt):
    model = make_gpt(dropout=0.0)
    cache = PagedKVCache.for_model(model, n_blocks=8, block_size=4)
    cache.add("p")
    paged_forward(model, cache, ["p"], torch.tensor([[5, 6, 7, 8, 9, 10]]))   # block 1 half full
    before_k = cache.k[:, :, :].clone()
    cache.fork("p", "c")
    paged_forward(model, cache, ["c"], torch.tensor([[11, 12]]))               # c copies block 1, then writes
    m = cache.manager
    assert m.tables["p"] == [0, 1] and m.tables["c"] == [0, 2]
    assert torch.equal(cache.k[:, :2], before_k[:, :2]) and torch.equal(cache.v[:, 1, :2], cache.v[:, 2, :2])
    assert torch.equal(cache.k[:, 2, :2], before_k[:, 1, :2])   # the copy carries p's tokens 4, 5
    # p decodes as if c never existed
    fresh = PagedKVCache.for_model(model, n_blocks=8, block_size=4)
    fresh.add("p")
    paged_forward(model, fresh, ["p"], torch.tensor([[5, 6, 7, 8, 9, 10]]))
    assert torch.equal(paged_forward(model, cache, ["p"], torch.tensor([[42]])),
                       paged_forward(model, fresh, ["p"], torch.tensor([[42]])))


def test_gqa_model_decodes_through_pages(make_gpt):
    model = make_gpt(n_kv_head=1, dropout=0.0)
    cache = PagedKVCache.for_model(model, n_blocks=16, block_size=4)
    assert cache.k.shape == (2, 16, 4, 1, 8)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    got = generate_paged(model, cache, prompts, 6, temperature=0.0)
    assert got == [contiguous_greedy(model, p, 6) for p in prompts]


def test_a_step_that_runs_out_of_blocks_rolls_back_every_row(make_gpt):
    model = make_gpt(dropout=0.0)
    cache = PagedKVCache.for_model(model, n_blocks=3, block_size=4)
    for s in (0, 1):
        cache.add(s)
        paged_forward(model, cache, [s], torch.arange(1, 5)[None])    # one full block each
    with pytest.raises(PoolExhausted, match="n_blocks > 3"):
        paged_forward(model, cache, [0, 1], torch.tensor([[7], [7]]))  # row 0 takes the last block, row 1 finds none
    assert cache.manager.lengths == {0: 4, 1: 4} and cache.manager.num_free == 1
    assert cache.manager.tables == {0: [0], 1: [1]}


def test_memory_formulas():
    assert contiguous_slots([5, 40, 200]) == 600 and contiguous_slots([5, 40], max_len=512) == 1024
    assert paged_slots([5, 40, 200], 16) == 16 + 48 + 208


def test_generate_paged_frees_its_sequences_when_the_pool_runs_out(make_gpt):
    model = make_gpt(dropout=0.0)
    cache = PagedKVCache.for_model(model, n_blocks=3, block_size=4)
    cache.add("mine")
    with pytest.raises(PoolExhausted):
        generate_paged(model, cache, [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], 4, temperature=0.0)
    assert list(cache.manager.tables) == ["mine"] and cache.manager.num_free == 3
    cache.add(0)  # someone else's sequence 0: generate_paged refuses to reuse the id and leaves it alone
    with pytest.raises(ValueError, match="already in the cache"):
        generate_paged(model, cache, [[1]], 2, temperature=0.0)
    assert list(cache.manager.tables) == ["mine", 0]


@pytest.mark.skipif(not os.environ.get("COURSE_TEST_DEVICE"), reason="set COURSE_TEST_DEVICE (make test-gpu does)")
def test_paged_decoding_on_the_test_device(make_gpt):
    device = os.environ["COURSE_TEST_DEVICE"]
    model = make_gpt(n_kv_head=2, dropout=0.0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    on_cpu = generate_paged(model, PagedKVCache.for_model(model, 16, 4), prompts, 6, temperature=0.0, prefix=[20, 21, 22, 23, 24])
    model = model.to(device)
    cache = PagedKVCache.for_model(model, 16, 4)
    assert cache.k.device.type == torch.device(device).type
    assert generate_paged(model, cache, prompts, 6, temperature=0.0, prefix=[20, 21, 22, 23, 24]) == on_cpu


def test_a_paged_batch_answers_to_the_cache_protocol():
    """Dropping a row frees its blocks, repeating one forks it (shared blocks), reordering permutes the rows."""
    from course_lib.caches.paged_cache import PagedBatch
    from course_lib.caches.protocol import Cache

    cache = PagedKVCache(1, 1, 2, n_blocks=8, block_size=4)
    batch = PagedBatch(cache, ["a", "b", "c"])
    assert isinstance(batch, Cache) and batch.batch_size == 3 and batch.length == 0
    batch.reset()  # every row empty and registered
    batch.step(5)  # 5 tokens each: 2 blocks per row
    assert batch.length == 5 and cache.manager.num_used == 6
    forks = batch.select_rows(torch.tensor([2, 0, 0]))  # b dropped, a repeated, c first
    assert batch.seq_ids == ["c", "a", forks[0]] and forks == [("fork", 1)]
    assert cache.manager.tables[forks[0]] == cache.manager.tables["a"] and cache.manager.num_used == 4  # shared
    batch.step(1)  # the fork writes into the shared, partly filled last block: copied first
    assert cache.manager.tables[forks[0]][0] == cache.manager.tables["a"][0]
    assert cache.manager.tables[forks[0]][1] != cache.manager.tables["a"][1]
    batch.select_rows(torch.tensor([1]))
    assert batch.seq_ids == ["a"] and set(cache.manager.tables) == {"a"} and cache.manager.num_used == 2


def test_beam_search_on_a_paged_cache_equals_the_contiguous_cache(make_gpt):
    """Beams kept as forked sequences of a paged pool (copy-on-write) give the contiguous cache's beams and scores."""
    from course_lib.decoding.beam import beam_search
    from course_lib.decoding.paged import PagedRunner

    model = make_gpt(seed=2, vocab_size=60, n_embd=32, n_layer=2, n_head=4, block_size=24, dropout=0.0)
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    K = 3
    for eos in (None, 4):
        ref = beam_search(model, ids, 10, K, eos_token_id=eos, attention_mask=mask)
        cache = PagedKVCache.for_model(model, n_blocks=64, block_size=4)
        runner = PagedRunner(model, cache, ids.shape[0] * K)
        got = beam_search(model, ids, 10, K, eos_token_id=eos, attention_mask=mask, runner=runner)
        assert got.sequences.tolist() == ref.sequences.tolist()
        assert got.scores == pytest.approx(ref.scores, rel=1e-6)  # float32 logits summed in another order
        assert len(runner.owned()) == ids.shape[0] * K  # the live beams, each a sequence of the pool
