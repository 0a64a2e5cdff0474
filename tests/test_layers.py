"""The shared building blocks as specifications: RoPE is relative, one mask rule, causal vs bidirectional."""

from __future__ import annotations

import pytest
import torch

from course_lib.caches.kv_cache import KVCache
from course_lib.core.layers import (
    Attention,
    Block,
    apply_rope,
    attend_mask,
    default_positions,
    padding_mask,
    position_ids_from_mask,
    rope_angles,
)


def _qk_scores(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_angles(positions, q.shape[-1])
    return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)


@pytest.mark.parametrize("shift", [1, 7, 300])
def test_rope_scores_depend_only_on_relative_position(shift):
    """Shifting every position by the same amount leaves every q·k score unchanged."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 9, 16, generator=g), torch.randn(2, 4, 9, 16, generator=g)
    pos = torch.arange(9)
    assert torch.allclose(_qk_scores(q, k, pos), _qk_scores(q, k, pos + shift), atol=1e-4)
    # ...while the rotated vectors themselves do change: the property is about scores, not values.
    cos, sin = rope_angles(pos, 16)
    cos2, sin2 = rope_angles(pos + shift, 16)
    assert not torch.allclose(apply_rope(q, cos, sin), apply_rope(q, cos2, sin2))


def test_rope_keeps_vector_length_and_position_zero_is_identity():
    x = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(1))
    cos, sin = rope_angles(torch.arange(5), 8)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(apply_rope(x, cos, sin)[:, :, 0], x[:, :, 0])


@pytest.mark.parametrize("causal", [True, False])
def test_no_cache_mask_is_the_cache_mask_at_length_zero(causal):
    key_padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert torch.equal(padding_mask(key_padding, causal=causal), attend_mask(5, 0, key_padding, causal=causal).expand(3, 1, 5, 5))
    if causal:
        cache = KVCache(n_layer=1, batch_size=3, n_head=1, head_dim=2, max_len=8)
        assert torch.equal(cache.attn_mask(5, key_padding), padding_mask(key_padding))


def test_cache_mask_at_length_n_is_the_last_rows_of_the_full_mask():
    """A step of q new tokens after n cached ones sees exactly what rows n.. of the no-cache mask see."""
    key_padding = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    full = padding_mask(key_padding)
    cache = KVCache(n_layer=1, batch_size=2, n_head=1, head_dim=2, max_len=8)
    cache.advance(4)
    assert torch.equal(cache.attn_mask(2, key_padding), full[:, :, 4:])


def test_padded_queries_see_themselves_and_real_queries_never_see_padding():
    m = padding_mask(torch.tensor([[0, 0, 1, 1]]))[0, 0]
    assert m[0].tolist() == [True, False, False, False] and m[1].tolist() == [False, True, False, False]
    assert not m[2:, :2].any()


def test_positions_come_from_one_rule():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert default_positions(2, 5, 0, mask).tolist() == position_ids_from_mask(mask).tolist()
    assert default_positions(2, 1, 4, mask).tolist() == [[2], [4]]  # a decode step: count of real tokens - 1
    assert default_positions(1, 3, 4).tolist() == [[4, 5, 6]]


def _future_changes_the_past(causal: bool) -> bool:
    torch.manual_seed(0)
    attn = Attention(16, 4, causal=causal).eval()
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, -1] += 1.0  # change only the last token
    rope = rope_angles(torch.arange(6), 4)
    with torch.no_grad():
        return not torch.allclose(attn(x, rope)[:, :-1], attn(y, rope)[:, :-1], atol=1e-6)


def test_causal_attention_never_sees_the_future_and_non_causal_does():
    assert not _future_changes_the_past(causal=True)
    assert _future_changes_the_past(causal=False)  # the ACT reasoner and the text encoder read both ways


def test_explicit_mask_equals_built_in_causal_mask():
    torch.manual_seed(0)
    block = Block(16, 4, causal=True).eval()
    x = torch.randn(2, 5, 16)
    rope = rope_angles(torch.arange(5), 4)
    with torch.no_grad():
        assert torch.allclose(block(x, rope), block(x, rope, padding_mask(torch.ones(2, 5))), atol=1e-6)
