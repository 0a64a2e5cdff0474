"""Grouped-query attention: n_kv_head == n_head is today's model bit for bit; GQA/MQA cache correctly and smaller."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.caches.kv_cache import kv_cache_bytes
from course_lib.core.checkpoints import load_checkpoint
from course_lib.core.layers import Attention, rope_angles
from course_lib.core.paths import TEXT_MODEL
from course_lib.text.gpt import GPT


def mha_reference(attn: Attention, x: torch.Tensor, rope) -> torch.Tensor:
    """Multi-head attention exactly as `layers.Attention` computed it before GQA (one fused qkv, 3 × H heads)."""
    B, T, C = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4)
    cos, sin = rope
    q, k = attn.rope_fn(q, cos, sin), attn.rope_fn(k, cos, sin)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


def test_mha_attention_is_bit_identical_to_the_pre_gqa_formula(shipped_gpt):
    x = torch.randn(2, 9, shipped_gpt.h_params["n_embd"], generator=torch.Generator().manual_seed(0))
    rope = rope_angles(torch.arange(9), shipped_gpt.head_dim)
    with torch.no_grad():
        for block in shipped_gpt.blocks:
            assert block.attn.n_kv_head == block.attn.n_head
            assert torch.equal(block.attn(x, rope), mha_reference(block.attn, x, rope))


def test_shipped_checkpoint_with_explicit_n_kv_head_gives_identical_logits(shipped_gpt):
    ckpt = load_checkpoint(TEXT_MODEL)
    assert "n_kv_head" not in ckpt["h_params"]  # the shipped checkpoint predates GQA and loads unchanged
    explicit = GPT({**ckpt["h_params"], "n_kv_head": ckpt["h_params"]["n_head"]}).eval()
    explicit.load_state_dict(ckpt["model_state_dict"], strict=True)  # same keys, same shapes
    assert explicit.state_dict().keys() == shipped_gpt.state_dict().keys()
    x = torch.randint(0, 100277, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(explicit(x), shipped_gpt(x))
    assert torch.equal(explicit.generate(x, 12, temperature=0), shipped_gpt.generate(x, 12, temperature=0))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])  # MHA, GQA (2 query heads per kv head), MQA
def test_gqa_and_mqa_cached_decoding_equals_uncached(n_kv_head, make_gpt):
    model = make_gpt(n_kv_head=n_kv_head, dropout=0.0, block_size=24)
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * n_kv_head) * 8, 32)
    for seed in range(3):
        x = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(seed))
        slow = model.generate(x, 30, temperature=0, use_cache=False)  # 30 new tokens slide past block_size 24
        fast = model.generate(x, 30, temperature=0, use_cache=True)
        assert torch.equal(slow, fast), (n_kv_head, seed)


def test_gqa_cache_stores_only_the_kv_heads_and_bytes_match_the_formula(make_gpt):
    sizes = {}
    for name, kv in [("MHA", 4), ("GQA", 2), ("MQA", 1)]:
        model = make_gpt(n_kv_head=kv)
        cache = model.new_cache(batch_size=3)
        assert cache.k.shape == (2, 3, kv, 32, 8)
        real = (cache.k.numel() + cache.v.numel()) * cache.k.element_size()
        assert real == kv_cache_bytes(2, kv, model.head_dim, 32, 3, bytes_per_value=4)
        sizes[name] = real
    assert sizes["MHA"] == 2 * sizes["GQA"] == 4 * sizes["MQA"]


def test_gqa_groups_query_heads_onto_shared_kv_heads():
    """Query head h reads kv head h // (n_head / n_kv_head): copying kv head g into every head of its group
    makes an MHA layer with the same output."""
    torch.manual_seed(0)
    gqa, mha = Attention(32, 4, n_kv_head=2).eval(), Attention(32, 4).eval()
    q_w, k_w, v_w = gqa.qkv.weight.split([32, 16, 16])
    repeat = lambda w: w.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)  # noqa: E731
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q_w, repeat(k_w), repeat(v_w)]))
        mha.proj.weight.copy_(gqa.proj.weight)
        x = torch.randn(2, 6, 32)
        rope = rope_angles(torch.arange(6), 8)
        assert torch.allclose(gqa(x, rope), mha(x, rope), atol=1e-6)


@pytest.mark.parametrize("bad", [3, 0, 8, True, 2.0])
def test_bad_n_kv_head_names_the_rule(bad, make_gpt):
    with pytest.raises(ValueError, match="n_kv_head.*divides n_head"):
        make_gpt(n_kv_head=bad)
