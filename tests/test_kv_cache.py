"""KV cache: cached greedy decoding is token-exact with the plain loop, also past the context limit."""

from __future__ import annotations

import pytest
import torch

from course_lib.caches.kv_cache import KVCache
from course_lib.core.paths import TEXT_MODEL
from course_lib.text.tokenizer import get_encoding


@pytest.mark.parametrize("prompt_len", [1, 3, 11, 24])
@pytest.mark.parametrize("new", [1, 5, 13, 40])  # 40 new tokens run far past block_size=24
def test_cached_greedy_equals_uncached(prompt_len, new, make_gpt):
    model = make_gpt(block_size=24, dropout=0.0)
    for seed in range(3):
        x = torch.randint(0, 300, (2, prompt_len), generator=torch.Generator().manual_seed(seed))
        slow = model.generate(x, new, temperature=0, use_cache=False)
        fast = model.generate(x, new, temperature=0, use_cache=True)
        assert torch.equal(slow, fast), (prompt_len, new, seed)


def test_cached_sampling_equals_uncached_with_same_seed(make_gpt):
    model = make_gpt(block_size=24, dropout=0.0)
    x = torch.randint(0, 300, (3, 4), generator=torch.Generator().manual_seed(5))
    kw = dict(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2)
    slow = model.generate(x, 30, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    fast = model.generate(x, 30, generator=torch.Generator().manual_seed(1), use_cache=True, **kw)
    assert torch.equal(slow, fast)


def test_infer_matches_forward_and_step_by_step(make_gpt):
    model = make_gpt(block_size=24, dropout=0.0)
    x = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        logits, cache = model.infer(x[:, :6], position_ids=torch.arange(6))
        assert cache.length == 6 and torch.allclose(logits, full[:, :6], atol=1e-5)
        for t in range(6, 10):  # one token at a time, positions given explicitly
            step, cache = model.infer(x[:, t:t + 1], position_ids=torch.tensor([[t], [t]]), cache=cache)
            assert torch.allclose(step[:, 0], full[:, t], atol=1e-5)
    assert cache.length == 10


def test_infer_without_position_ids_names_them(make_gpt):
    model = make_gpt(block_size=24, dropout=0.0)
    with pytest.raises(TypeError, match="position_ids"):
        model.infer(torch.zeros(1, 3, dtype=torch.long))


def test_cache_reset_between_calls(make_gpt):
    model = make_gpt(block_size=24, dropout=0.0)
    a = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(1))
    b = torch.randint(0, 300, (1, 4), generator=torch.Generator().manual_seed(2))
    cache = model.new_cache(1)
    with torch.no_grad():
        la, cache = model.prefill(a, cache=cache)
        model.decode_step(la.argmax(-1, keepdim=True), cache)
        assert cache.length == 8
        lb, cache2 = model.prefill(b, cache=cache)  # the same cache object, reused
        assert cache2 is cache and cache.length == 4
        assert torch.allclose(lb, model(b)[:, -1], atol=1e-5)  # nothing of prompt a leaks in
    # and generate() twice in a row gives the same answer (no position counter carried over)
    assert torch.equal(model.generate(b, 6, temperature=0), model.generate(b, 6, temperature=0))


def test_kv_cache_object():
    cache = KVCache(n_layer=2, batch_size=1, n_head=2, head_dim=4, max_len=5)
    k = torch.ones(1, 2, 3, 4)
    k_all, v_all = cache.layer(0).update(k, 2 * k)
    assert k_all.shape == (1, 2, 3, 4) and torch.equal(v_all, 2 * k)
    cache.layer(1).update(k, k)
    cache.advance(3)
    m = cache.attn_mask(2)
    assert m.shape == (1, 1, 2, 5) and m[0, 0].tolist() == [[True] * 4 + [False], [True] * 5]
    k_all, _ = cache.layer(0).update(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    assert k_all.shape == (1, 2, 5, 4) and k_all[0, 0, :, 0].tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(RuntimeError, match="KV cache full"):
        cache.advance(2)
        cache.layer(0).update(k, k)
    cache.reset()
    assert cache.length == 0


@pytest.mark.skipif(not TEXT_MODEL.exists(), reason="shipped text model not present")
def test_shipped_model_cached_equals_uncached_across_context_limit():
    from course_lib.text.gpt import load_gpt
    model = load_gpt()
    enc = get_encoding()
    assert model.block_size == 512
    lines = "农夫山泉 天然水 550ml 瓶装\nAlpine Spring Natural Mineral Water 1.5L Bottle\n"
    ids = (enc.encode(lines) * 40)[:505]  # 505 prompt tokens + 12 new: crosses 512
    x = torch.tensor([ids])
    slow = model.generate(x, 12, temperature=0, use_cache=False)
    fast = model.generate(x, 12, temperature=0, use_cache=True)
    assert torch.equal(slow, fast)
    for prompt in ["农夫山泉", "Sunbeam Instant Ramen", "三只松鼠"]:
        x = torch.tensor([enc.encode(prompt)])
        assert torch.equal(model.generate(x, 30, temperature=0, use_cache=False), model.generate(x, 30, temperature=0))


# ---------------------------------------------------------------- the fair no-cache baseline (issue 8 §2)
def test_nocache_baseline_computes_one_head_row_per_sequence(make_gpt):
    """generate(use_cache=False) runs the 100k-wide head at the last position only (nanoGPT's
    inference form), and gives the same greedy tokens as the full-head loop and the cached loop."""
    model = make_gpt(block_size=24, dropout=0.0)
    x = torch.randint(0, 300, (3, 7), generator=torch.Generator().manual_seed(0))
    rows: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows.append(o.shape[:-1].numel()))
    try:
        fair = model.generate(x, 20, temperature=0, use_cache=False)  # crosses block_size 24 too
    finally:
        hook.remove()
    assert rows == [3] * 20  # one head row per sequence per step, never B * T
    seq = x
    with torch.no_grad():
        for _ in range(20):  # the unfair loop: full head at every position, then read the last row
            seq = torch.cat([seq, model(seq[:, -24:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(fair, seq)
    assert torch.equal(fair, model.generate(x, 20, temperature=0))


def test_last_only_forward_equals_last_row(make_gpt):
    model = make_gpt(dropout=0.0)
    x = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        full, last = model(x, attention_mask=mask), model(x, attention_mask=mask, last_only=True)
    assert last.shape == (2, 1, 300) and torch.allclose(last[:, 0], full[:, -1], atol=1e-6)


# ---------------------------------------------------------------- KV-cache memory (issue 11)
def test_kv_cache_bytes_formula_and_real_buffers(make_gpt):
    from course_lib.caches.kv_cache import kv_cache_bytes
    model = make_gpt()
    cache = model.new_cache(batch_size=3)
    real = (cache.k.numel() + cache.v.numel()) * cache.k.element_size()
    hp = model.h_params
    assert kv_cache_bytes(hp["n_layer"], hp["n_head"], model.head_dim, model.block_size, 3, bytes_per_value=4) == real
    # a 7B LLaMA shape (32 layers, 32 KV heads of 128) in fp16 at 4k context: 2 GiB per sequence
    assert kv_cache_bytes(32, 32, 128, 4096, 1, 2) == 2 * 1024**3
    with pytest.raises(ValueError, match="tokens"):
        kv_cache_bytes(32, 32, 128, 0)
