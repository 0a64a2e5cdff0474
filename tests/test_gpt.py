"""The text GPT: shapes, tied weights, causality, dropout only in train(), padding with a mask."""

import pytest
import torch

from course_lib.core.layers import apply_rope, rope_angles
from course_lib.text.corpus import BRANDS, is_well_formed
from course_lib.text.gpt import GPT
from course_lib.text.tokenizer import get_encoding


def test_shapes_and_tied_weights(tiny_gpt):
    idx = torch.randint(0, 300, (2, 10))
    assert tiny_gpt(idx).shape == (2, 10, 300)
    assert tiny_gpt.lm_head.weight is tiny_gpt.tok_emb.weight
    assert tiny_gpt.num_params() == sum(p.numel() for p in tiny_gpt.parameters())


def test_h_params_required():
    with pytest.raises(ValueError, match="missing"):
        GPT({"vocab_size": 10})


def test_causal_future_tokens_do_not_leak(tiny_gpt):
    a = torch.randint(0, 300, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 300
    assert torch.allclose(tiny_gpt(a)[:, :8], tiny_gpt(b)[:, :8], atol=1e-6)
    assert not torch.allclose(tiny_gpt(a)[:, 8:], tiny_gpt(b)[:, 8:])


def test_dropout_only_in_train_mode(tiny_gpt):
    idx = torch.randint(0, 300, (1, 8))
    tiny_gpt.train()
    assert not torch.equal(tiny_gpt(idx), tiny_gpt(idx))
    tiny_gpt.eval()
    assert torch.equal(tiny_gpt(idx), tiny_gpt(idx))


def test_left_padding_with_mask_matches_unpadded(tiny_gpt):
    row = torch.randint(0, 300, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    alone = tiny_gpt(row)[0, -1]
    with_mask = tiny_gpt(padded, attention_mask=mask)[0, -1]
    assert torch.allclose(alone, with_mask, atol=1e-5)
    # without the mask the pad tokens are attended to and positions shift: the output changes
    assert not torch.allclose(alone, tiny_gpt(padded)[0, -1], atol=1e-3)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16)
    scores = []
    for offset in (0, 37):
        cos, sin = rope_angles(torch.arange(5) + offset, 16)
        scores.append(apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2))
    assert torch.allclose(scores[0], scores[1], atol=1e-4)


def test_forward_rejects_too_long_input(tiny_gpt):
    with pytest.raises(ValueError, match="exceeds block_size 32"):
        tiny_gpt(torch.zeros(1, 33, dtype=torch.long))


def test_generate_greedy_is_argmax_loop(tiny_gpt):
    idx = torch.randint(0, 300, (2, 5))
    out = tiny_gpt.generate(idx, 6, temperature=0)
    ref = idx
    for _ in range(6):
        ref = torch.cat([ref, tiny_gpt(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ref)


def test_generate_crops_to_block_size(tiny_gpt):
    out = tiny_gpt.generate(torch.zeros(1, 30, dtype=torch.long), 10, temperature=0)
    assert out.shape == (1, 40)


def test_generator_reproduces_samples(tiny_gpt):
    idx = torch.zeros(1, 3, dtype=torch.long)
    a = tiny_gpt.generate(idx, 8, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
    b = tiny_gpt.generate(idx, 8, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs,name", [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                                         ({"top_p": 1.5}, "top_p"), ({"max_new_tokens": -2}, "max_new_tokens")])
def test_generate_bad_arguments(tiny_gpt, kwargs, name):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        tiny_gpt.generate(torch.zeros(1, 2, dtype=torch.long), **args)


def test_shipped_model_loads_in_eval_mode(shipped_gpt):
    hp = shipped_gpt.h_params
    assert hp["vocab_size"] == 100277 and shipped_gpt.tok_emb.weight.shape == (100277, hp["n_embd"])
    assert not shipped_gpt.training
    assert all(p.dtype == torch.float32 for p in shipped_gpt.parameters())
    assert all(isinstance(v, (int, float, str)) for v in hp.values())


def test_shipped_model_writes_listings(shipped_gpt):
    """The model really learned the grammar: greedy continuations of brand prompts are listings."""
    enc = get_encoding()
    good = 0
    for brand in BRANDS:
        out = shipped_gpt.generate(torch.tensor([enc.encode(brand)]), 48, temperature=0)  # the longest listings need ~40 tokens
        good += is_well_formed(enc.decode(out[0].tolist()).split("\n")[0])
    assert good >= len(BRANDS) - 1
