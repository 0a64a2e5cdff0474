"""Weight-only quantization: exact round-trip bounds, the quantized matmul, cached decoding, the original untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.caches.quantize import (
    Int4Linear,
    Int8Linear,
    QuantizedEmbedding,
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    quantize,
    quantize_groups_int4,
    quantize_int4,
    quantize_int8,
    quantize_per_channel_int8,
    unpack_int4,
    weight_bytes,
)


def _w(n=48, k=64, seed=0) -> torch.Tensor:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    w[3] = 0.0          # an all-zero row: scale must not be 0
    w[5] *= 100         # a row with large values: its own scale
    w[7] = w[7].abs()   # a row that is all positive: int4's minimum is not 0
    return w


def test_int8_round_trip_error_is_at_most_half_a_step_per_row():
    w = _w()
    q, scale = quantize_per_channel_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (w.shape[0],)
    assert torch.allclose(scale, (w.abs().amax(1) / 127).clamp(min=torch.finfo(torch.float32).eps))
    err = (dequantize_int8(q, scale) - w).abs()
    assert (err <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert q.abs().amax(1)[scale > 1e-6].eq(127).all()  # the largest weight of each row uses the full range
    assert torch.equal(dequantize_int8(q, scale)[3], torch.zeros(w.shape[1]))


@pytest.mark.parametrize("group_size", [8, 16, 32, 64])
def test_int4_round_trip_error_is_at_most_half_a_step_per_group(group_size):
    w = _w()
    packed, scale, lo = quantize_groups_int4(w, group_size)
    N, K = w.shape
    assert packed.dtype == torch.uint8 and packed.shape == (N, K // 2)
    g = w.reshape(N, K // group_size, group_size)
    assert torch.equal(lo, g.amin(-1))
    assert torch.allclose(scale, ((g.amax(-1) - g.amin(-1)) / 15).clamp(min=torch.finfo(torch.float32).eps))
    deq = dequantize_int4(packed, scale, lo).reshape(N, K // group_size, group_size)
    err = (deq - g).abs()
    assert (err <= scale[..., None] / 2 * (1 + 1e-5) + 1e-6 * g.abs().amax()).all()


def test_int4_packing_round_trips_every_code():
    q = torch.arange(16).repeat(3, 2)  # (3, 32), every code in both nibbles
    packed = pack_int4(q)
    assert packed.shape == (3, 16) and torch.equal(unpack_int4(packed).long(), q)


@pytest.mark.parametrize("cls,kw", [(Int8Linear, {}), (Int4Linear, {"group_size": 16})])
@pytest.mark.parametrize("bias", [False, True])
def test_quantized_linear_equals_dequantized_weight_matmul(cls, kw, bias):
    torch.manual_seed(0)
    lin = nn.Linear(64, 40, bias=bias)
    qlin = cls(lin, **kw)
    x = torch.randn(3, 5, 64)
    ref = F.linear(x, qlin.dequantized(), lin.bias)
    assert torch.allclose(qlin(x), ref, atol=1e-5, rtol=1e-5)
    idx = torch.tensor([[0, 39], [7, 7]])
    assert torch.equal(qlin.rows(idx), qlin.dequantized()[idx])  # the embedding lookup reads the same table


@pytest.mark.parametrize("scheme", ["int8", "int4", "bf16"])
def test_quantized_model_decodes_with_the_cache(scheme, make_gpt):
    model = make_gpt(block_size=24, dropout=0.0)
    q = quantize(model, scheme, group_size=16)
    for seed in range(3):
        x = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(seed))
        slow = q.generate(x, 30, temperature=0, use_cache=False)  # 30 new tokens run past block_size
        fast = q.generate(x, 30, temperature=0)
        assert torch.equal(slow, fast), (scheme, seed)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_tied_head_and_embedding_share_one_quantized_table(scheme, make_gpt):
    model = make_gpt(dropout=0.0)
    q = quantize(model, scheme, group_size=16)
    assert isinstance(q.tok_emb, QuantizedEmbedding) and q.tok_emb.head is q.lm_head
    assert q.device == model.device and q.tok_emb.weight.dtype == torch.float32
    idx = torch.tensor([[1, 2, 299]])
    with torch.no_grad():
        assert torch.equal(q.tok_emb(idx), q.lm_head.dequantized()[idx])
        # the quantized model's logits are the fp32 model's run on the dequantized weights
        ref = make_gpt(dropout=0.0)
        for name, mod in q.named_modules():
            if isinstance(mod, (Int8Linear, Int4Linear)):
                name = "lm_head" if name == "tok_emb.head" else name  # the head is reached through the embedding first
                ref.get_submodule(name).weight.data.copy_(mod.dequantized())  # the head write also sets the tied embedding
        assert torch.allclose(q(idx), ref(idx), atol=1e-4)


def test_quantize_returns_a_copy_and_leaves_the_original_untouched(make_gpt):
    model = make_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    for scheme in ("int8", "int4", "bf16"):
        q = quantize(model, scheme, group_size=16)
        assert q is not model
    assert [type(m) for m in model.modules()] == types and not hasattr(model, "quantization")
    assert model.lm_head.weight is model.tok_emb.weight
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before)


def test_weight_bytes_count_the_tied_table_once(make_gpt):
    model = make_gpt(dropout=0.0)
    assert weight_bytes(model) == 4 * model.num_params()
    q8 = quantize_int8(model)
    # every weight matrix becomes 1 byte per weight + one fp32 scale per row; norms stay fp32
    mats = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)
    assert weight_bytes(q8) == sum(m.weight.numel() + 4 * m.out_features for m in mats) + 4 * norms
    assert weight_bytes(quantize(model, "bf16")) == weight_bytes(model) // 2


def test_bad_input_is_a_clear_error(make_gpt):
    model = make_gpt()
    with pytest.raises(ValueError, match="does not divide the input width 32 of .*choose one that does"):
        quantize_int4(model, group_size=64)
    with pytest.raises(ValueError, match="even int >= 2"):
        quantize_int4(model, group_size=3)
    with pytest.raises(ValueError, match="already quantized .*int8.*original fp32"):
        quantize_int8(quantize_int8(model))
    with pytest.raises(ValueError, match="expects fp32 weights"):
        quantize_int8(model.to(torch.float16))
    with pytest.raises(ValueError, match="unknown scheme 'int3'"):
        quantize(make_gpt(), "int3")
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        quantize_int8("model.pt")
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_int8(nn.Sequential(nn.ReLU()))
