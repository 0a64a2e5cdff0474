"""Batched generation: left padding + attention mask + per-row positions = each prompt run alone."""

from __future__ import annotations

import pytest
import torch

from course_lib import generate_batch  # the public API path (COURSE_DESIGN.md: the package top level)
from course_lib.core.layers import position_ids_from_mask
from course_lib.decoding.batching import pad_batch
from course_lib.text.tokenizer import get_encoding

PROMPTS = ["农夫山泉", "Alpine Spring Sparkling Water", "", "三只松鼠 每日坚果 500g", "🙂", "Sunbeam Instant Ramen Beef 120g Cup"]


@pytest.fixture(scope="module")
def setup(make_gpt):
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, block_size=40, dropout=0.0)
    return model, enc


def test_pad_batch_left_and_positions(setup):
    _, enc = setup
    ids, mask = pad_batch(enc, ["a b c", "a"], 40)
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids[1, :2].tolist() == [enc.eot_token] * 2 and ids[1, 2] == enc.encode("a")[0]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    _, rmask = pad_batch(enc, ["a b c", "a"], 40, side="right")
    assert rmask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="side"):
        pad_batch(enc, ["a"], 40, side="middle")


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_greedy_rows_equal_single_runs(setup, use_cache):
    model, enc = setup
    single = [generate_batch(model, enc, [p], 12, temperature=0.0, use_cache=use_cache)[0] for p in PROMPTS]
    assert generate_batch(model, enc, PROMPTS, 12, temperature=0.0, use_cache=use_cache) == single
    assert generate_batch(model, enc, PROMPTS, 12, temperature=0.0, batch_size=4, use_cache=use_cache) == single


def test_batched_rows_equal_single_past_context_limit(setup):
    model, enc = setup  # block_size 40: 50 new tokens slide the window for every row
    single = [generate_batch(model, enc, [p], 50, temperature=0.0)[0] for p in PROMPTS[:3]]
    assert generate_batch(model, enc, PROMPTS[:3], 50, temperature=0.0) == single


def test_single_run_equals_model_generate(setup):
    model, enc = setup
    x = torch.tensor([enc.encode("农夫山泉")])
    out = model.generate(x, 10, temperature=0, use_cache=False)
    ref = enc.decode(out[0, x.shape[1]:].tolist())
    assert generate_batch(model, enc, ["农夫山泉"], 10, temperature=0.0) == [ref]


def test_right_padding_reads_the_wrong_column(setup):
    """Right padding: the last column of a short row is padding, so its "next token" logits are garbage.
    Left padding with the mask gives exactly the logits of the prompt alone."""
    model, enc = setup
    prompts = ["农夫山泉 天然水", "三只松鼠"]
    alone = model(torch.tensor([enc.encode(prompts[1])]))[0, -1]
    with torch.no_grad():
        ids, mask = pad_batch(enc, prompts, 40, side="left")
        left = model(ids, attention_mask=mask)[1, -1]
        rids, rmask = pad_batch(enc, prompts, 40, side="right")
        right = model(rids, attention_mask=rmask)[1, -1]
    assert torch.allclose(left, alone, atol=1e-5)
    assert not torch.allclose(right, alone, atol=1e-2)


def test_stop_progress_and_errors(setup):
    model, enc = setup
    outs = generate_batch(model, enc, ["a", "b"], 8, temperature=0.0, stop="\n", progress=False)
    assert all("\n" not in o for o in outs)
    with pytest.raises(ValueError, match="list of strings"):
        generate_batch(model, enc, "a", 3, temperature=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        generate_batch(model, enc, ["a"], 3, temperature=0.0, batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        generate_batch(model, enc, ["a"], 3, temperature=-1)


def test_sampled_batch_reproducible(setup):
    model, enc = setup
    a = generate_batch(model, enc, PROMPTS, 8, temperature=1.0, top_k=40, generator=torch.Generator().manual_seed(4))
    b = generate_batch(model, enc, PROMPTS, 8, temperature=1.0, top_k=40, generator=torch.Generator().manual_seed(4))
    assert a == b
