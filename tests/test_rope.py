"""Chapter 05 as specifications: RoPE layouts convert exactly, shifts are invisible in fp32, position
ids from lengths and from masks agree, wrong position ids in a padded batch change the output
(and the right ones do not), and the past-the-trained-length measurements are what they claim.

Seed 002 is one of the course's source documents: notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from course_lib.core.layers import apply_rope, position_ids_from_lengths, position_ids_from_mask, rope_angles
from course_lib.decoding.batching import pad_batch
from course_lib.text.rope import (
    angle_error,
    apply_rope_interleaved,
    convert_qk_layout,
    half_to_interleaved_perm,
    loss_by_position,
    scaled_positions_and_theta,
    set_rope_layout,
    to_interleaved,
    window_mask,
)
from course_lib.text.tokenizer import get_encoding


# ------------------------------------------------------------------------------ layouts
def test_perm_pairs_i_with_i_plus_half():
    assert half_to_interleaved_perm(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    with pytest.raises(ValueError, match="even"):
        half_to_interleaved_perm(7)


def test_interleaved_rotation_matches_meta_pairs():
    """Neighbour pairs (2i, 2i+1) rotated by position × frequency i, written out by hand."""
    d, T = 8, 5
    x = torch.randn(1, 2, T, d, generator=torch.Generator().manual_seed(0))
    cos, sin = rope_angles(torch.arange(T), d)
    out = apply_rope_interleaved(x, cos, sin)
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    for t in range(T):
        for i in range(d // 2):
            c, s = math.cos(t * inv[i]), math.sin(t * inv[i])
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            assert torch.allclose(out[..., t, 2 * i], c * a - s * b, atol=1e-5)
            assert torch.allclose(out[..., t, 2 * i + 1], s * a + c * b, atol=1e-5)
    # ...and it is the rotate-half rotation in permuted coordinates
    p = half_to_interleaved_perm(d)
    assert torch.allclose(apply_rope_interleaved(x[..., p], cos, sin), apply_rope(x, cos, sin)[..., p], atol=1e-6)


def test_converted_weights_give_the_same_logits_and_unconverted_do_not(make_gpt):
    model = make_gpt(dropout=0.0)
    with torch.no_grad():  # sharpen attention: at init scale every layout attends almost uniformly
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10)
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(to_interleaved(model)(x), ref, atol=1e-5)
        mixed = set_rope_layout(copy.deepcopy(model), "interleaved")
        assert (mixed(x) - ref).abs().max() > 1e-2  # wrong output, and no error
    assert model.blocks[0].attn.rope_fn is apply_rope  # to_interleaved copied; the original is untouched


def test_convert_permutes_only_q_and_k_rows_and_round_trips(make_gpt):
    model = make_gpt()
    sd = model.state_dict()
    n_head, n_embd = model.h_params["n_head"], model.h_params["n_embd"]
    meta = convert_qk_layout(sd, n_head, "interleaved")
    for name, w in sd.items():
        if name.endswith("attn.qkv.weight"):
            assert torch.equal(meta[name][2 * n_embd:], w[2 * n_embd:])  # v untouched
            assert not torch.equal(meta[name][:n_embd], w[:n_embd])
            assert torch.equal(convert_qk_layout(meta, n_head, "rotate_half")[name], w)
        else:
            assert meta[name] is w
    with pytest.raises(ValueError, match="to must be one of"):
        convert_qk_layout(sd, n_head, "meta")
    with pytest.raises(ValueError, match="layout must be one of"):
        set_rope_layout(model, "gptj")


def test_shipped_model_in_meta_layout_gives_the_same_logits(shipped_gpt):
    enc = get_encoding()
    x = torch.tensor([[enc.eot_token] + enc.encode_ordinary("农夫山泉 天然水 550ml 瓶装\nSunbeam Oat Crackers 200g Box\n")])
    with torch.no_grad():  # fp32 rounding: ~1e-5 on logits of size ~20
        assert torch.allclose(to_interleaved(shipped_gpt)(x), shipped_gpt(x), atol=1e-5, rtol=1e-6)


# ----------------------------------------------------------------------- the shift property
@pytest.mark.parametrize("offset", [1, 100])
def test_shifting_every_position_leaves_fp32_logits_unchanged(shipped_gpt, offset):
    enc = get_encoding()
    x = torch.tensor([[enc.eot_token] + enc.encode_ordinary("元气森林 气泡水 白桃味 330ml 罐装\n")])
    pos = torch.arange(x.shape[1])[None]
    with torch.no_grad():
        diff = (shipped_gpt(x, position_ids=pos + offset) - shipped_gpt(x, position_ids=pos)).abs().max()
    assert diff < 1e-4


def test_low_precision_angles_are_wrong_past_256():
    err = angle_error(torch.tensor([100, 257, 1000]), 16, torch.bfloat16)
    assert err[1] > 0.5  # bf16 stores 257 as 256: one radian off on the fastest pair
    assert angle_error(torch.tensor([257, 1000]), 16, torch.float32).max() < 1e-4


# ----------------------------------------------------------------------- position ids
@pytest.mark.parametrize("side", ["left", "right"])
def test_positions_from_lengths_and_from_mask_agree_on_real_tokens(side):
    enc = get_encoding()
    _, mask = pad_batch(enc, ["怡宝", "Crunchwell Oat Crackers", "a"], 512, side=side)
    from_len = position_ids_from_lengths(mask.sum(1), mask.shape[1], side=side)
    from_mask = position_ids_from_mask(mask)
    real = mask.bool()
    assert torch.equal(from_len[real], from_mask[real])
    assert (from_len[~real] == 0).all()
    for row, keep in zip(from_mask, real, strict=True):
        assert row[keep].tolist() == list(range(int(keep.sum())))  # 0, 1, 2, ... on every row's real tokens


def test_seed_002_recipe_is_the_right_padding_form():
    assert position_ids_from_lengths([2, 3], 4).tolist() == [[0, 1, 0, 0], [0, 1, 2, 0]]
    assert position_ids_from_lengths([2, 3], 4, side="left").tolist() == [[0, 0, 0, 1], [0, 0, 1, 2]]
    with pytest.raises(ValueError, match="side must be"):
        position_ids_from_lengths([2], 4, side="middle")
    with pytest.raises(ValueError, match="lengths must be"):
        position_ids_from_lengths([5], 4)


def _greedy_infer(model, ids, mask, prefill_pos, decode_pos, n):
    logits, cache = model.infer(ids, position_ids=prefill_pos, attention_mask=mask)
    out, am = [], mask
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(n):
        out.append(nxt)
        am = torch.cat([am, torch.ones_like(nxt)], dim=1)
        logits, cache = model.infer(nxt, position_ids=decode_pos(am, cache), cache=cache, attention_mask=am)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(out, dim=1).tolist()


@torch.no_grad()
def test_left_padded_batch_needs_positions_from_the_mask(shipped_gpt):
    """Seed 002's failure: the same infer loop with zero position ids silently changes rows; the fix equals each prompt alone."""
    enc = get_encoding()
    prompts = ["怡宝", "Crunchwell Oat Crackers", "元气森林 气泡水 白桃味", "伊利 纯牛奶"]
    ids, mask = pad_batch(enc, prompts, shipped_gpt.block_size)
    n = 8
    alone = [shipped_gpt.generate(torch.tensor([enc.encode(p)]), n, temperature=0)[0, -n:].tolist() for p in prompts]
    fixed = _greedy_infer(shipped_gpt, ids, mask, position_ids_from_mask(mask),
                          lambda am, c: position_ids_from_mask(am)[:, -1:], n)
    assert fixed == alone
    zeros = _greedy_infer(shipped_gpt, ids, mask, torch.zeros_like(ids),
                          lambda am, c: torch.zeros((len(prompts), 1), dtype=torch.long), n)
    assert zeros != alone


# ------------------------------------------------------------------ past the trained length
def test_ntk_keeps_the_fastest_pair_and_stretches_the_slowest_by_the_factor():
    d, theta, f = 16, 10000.0, 4.0
    _, theta2 = scaled_positions_and_theta(torch.arange(3), theta, d, "ntk", f)
    inv = lambda th: 1.0 / th ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # noqa: E731
    ratio = inv(theta) / inv(theta2)
    assert ratio[0] == 1.0 and abs(ratio[-1].item() - f) < 1e-9
    pos, th = scaled_positions_and_theta(torch.arange(4), theta, d, "interpolate", f)
    assert pos.tolist() == [0.0, 0.25, 0.5, 0.75] and th == theta
    with pytest.raises(ValueError, match="method must be"):
        scaled_positions_and_theta(torch.arange(3), theta, d, "yarn", f)


def test_loss_by_position_matches_the_model_loss_and_goes_past_block_size(make_gpt):
    model = make_gpt(dropout=0.0)  # block_size 32
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(3))
    at, loss = loss_by_position(model, x)
    assert at.tolist() == list(range(19))
    with torch.no_grad():
        assert torch.allclose(loss.mean(), model.loss(x[:, :-1], x[:, 1:]), atol=1e-5)
    # a window as long as the sequence is plain causal attention; thinning the head keeps the same values
    assert torch.allclose(loss_by_position(model, x, window=20)[1], loss, atol=1e-5)
    assert torch.allclose(loss_by_position(model, x, stride=3)[1], loss[:, ::3], atol=1e-6)
    long = torch.randint(0, 300, (1, 80), generator=torch.Generator().manual_seed(4))
    at, loss = loss_by_position(model, long, method="ntk", factor=2.0, window=16)
    assert loss.shape == (1, 79) and torch.isfinite(loss).all()


def test_window_mask_is_a_causal_band():
    m = window_mask(5, 2)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]


def test_angle_error_is_a_rotation_error_wrapped_to_pi():
    """bf16 angles at large positions are off by many radians as numbers, but a rotation error is at most π."""
    err = angle_error(torch.tensor([60000, 100000]), 16, torch.bfloat16)
    assert bool((err <= math.pi + 1e-9).all()) and err.max() > 1.0
    # a position that stays exact in bf16 (256) keeps a small error: wrapping changes nothing there
    assert angle_error(torch.tensor([256]), 16, torch.bfloat16).item() < 0.05
