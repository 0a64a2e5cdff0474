"""Stopping: eos ids and stop strings, finished rows in a batch, text that never shows a stop string."""

from __future__ import annotations

import pytest
import torch

from course_lib.decoding.batching import generate_batch
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.stopping import StopCriteria, check_stopping_args, finished_text, safe_to_emit
from course_lib.text.tokenizer import get_encoding

PROMPTS = ["农夫山泉", "Alpine Spring Sparkling Water", "三只松鼠 每日坚果 500g", "🙂"]


@pytest.fixture(scope="module")
def setup(make_gpt):
    enc = get_encoding()
    return make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=64, dropout=0.0), enc


def feed(enc, text, stop):
    """Feed text's tokens one at a time; return the step (1-based) at which the row finished, or None."""
    sc = StopCriteria(1, stop=stop, enc=enc)
    for step, t in enumerate(enc.encode(text), start=1):
        if sc.update(torch.tensor([[t]]))[0]:
            return step
    return None


def test_stop_string_across_token_boundary():
    enc = get_encoding()
    text = "农夫山泉 天然水 550ml 瓶装"
    ids = enc.encode(text)
    stop = "泉 天"  # spans several tokens (泉 is itself split into two byte pieces)
    # the step at which the stop string is complete: the shortest prefix whose bytes contain it
    complete = next(i for i in range(1, len(ids) + 1) if stop.encode() in b"".join(enc.decode_single_token_bytes(t) for t in ids[:i]))
    assert complete >= 3 and feed(enc, text, stop) == complete
    assert finished_text(enc, ids, stop=stop) == "农夫山"  # no partial stop string, no half character
    assert feed(enc, text, "瓶装 ") is None  # never completed: never stops
    assert finished_text(enc, ids, stop=["ml", "水"]) == "农夫山泉 天然"  # the earliest of several


def test_eos_one_or_several_and_text_before_it():
    enc = get_encoding()
    ids = enc.encode("a b c d")
    assert finished_text(enc, ids, eos_token_id=ids[2]) == enc.decode(ids[:2])
    assert finished_text(enc, ids, eos_token_id=[ids[3], ids[1]]) == enc.decode(ids[:1])
    sc = StopCriteria(2, eos_token_id=[ids[1], ids[3]])
    assert sc.update(torch.tensor([[ids[1]], [ids[0]]])).tolist() == [True, False]
    assert sc.update(torch.tensor([[ids[0]], [ids[3]]])).tolist() == [True, True]  # finished stays finished


def test_safe_to_emit_holds_back_a_possible_stop():
    assert safe_to_emit("瓶装\n", "\n\n") == ("瓶装", "\n")
    assert safe_to_emit("瓶装\n\n下一行", "\n\n") == ("瓶装", "")
    assert safe_to_emit("abc", ["cd", "bcx"]) == ("a", "bc")
    assert safe_to_emit("abc", "xyz") == ("abc", "")


@pytest.mark.parametrize("kwargs,needle", [
    (dict(stop=""), "stop must not contain an empty string"),
    (dict(stop=["a", ""]), "stop must not contain an empty string"),
    (dict(stop=3), "stop must be None, a string or a list of strings"),
    (dict(eos_token_id=[]), "eos_token_id must be None, an int or a non-empty list"),
    (dict(eos_token_id=-1), "eos_token_id must be token ids >= 0"),
    (dict(eos_token_id="\n"), "eos_token_id"),
])
def test_bad_stopping_arguments(kwargs, needle):
    with pytest.raises(ValueError) as err:
        check_stopping_args(**kwargs)
    assert needle in str(err.value)


def test_generate_rejects_empty_stop(setup):
    model, enc = setup
    with pytest.raises(ValueError, match="stop must not contain an empty string"):
        model.generate(torch.tensor([enc.encode("a")]), 3, stop="")
    with pytest.raises(ValueError, match="stop must not contain an empty string"):
        generate_batch(model, enc, ["a"], 3, temperature=0.0, stop="")


def test_rows_finishing_at_different_steps_equal_rows_run_alone(setup):
    model, enc = setup
    free = generate_batch(model, enc, PROMPTS, 12, temperature=0.0)  # no stopping: where would each row produce what?
    ids = [enc.encode(f) for f in free]
    eos = ids[0][3]  # row 0 finishes at its 4th token; the others at other steps or never
    finish = [row.index(eos) if eos in row else None for row in ids]
    assert len(set(finish)) > 1, finish
    alone = [generate_batch(model, enc, [p], 12, temperature=0.0, eos_token_id=eos)[0] for p in PROMPTS]
    assert generate_batch(model, enc, PROMPTS, 12, temperature=0.0, eos_token_id=eos) == alone
    assert alone[0] == finished_text(enc, ids[0], eos_token_id=eos)
    # the same with a stop string taken from row 0's text
    stop = free[0][len(free[0]) // 2:len(free[0]) // 2 + 2] or free[0]
    alone = [generate_batch(model, enc, [p], 12, temperature=0.0, stop=stop)[0] for p in PROMPTS]
    assert generate_batch(model, enc, PROMPTS, 12, temperature=0.0, stop=stop, batch_size=3) == alone
    assert all(stop not in a for a in alone)


def test_finished_rows_emit_padding_and_the_loop_ends(setup):
    model, enc = setup
    x = torch.tensor([enc.encode("农夫山泉"), enc.encode("怡宝 纯净")[:len(enc.encode("农夫山泉"))]])
    free = generate_ids(model, x, 10, temperature=0)
    T = x.shape[1]
    row0 = free[0, T:].tolist()
    eos = max(row0, key=row0.index)  # the token that appears first latest: row 0 finishes right there
    k = row0.index(eos)
    out = generate_ids(model, x, 10, temperature=0, eos_token_id=eos, pad_token_id=7)
    got = out[0, T:].tolist()
    assert got[:k + 1] == row0[:k + 1] and set(got[k + 1:]) <= {7}
    if eos not in free[1, T:].tolist():
        assert out.shape[1] == T + 10  # row 1 never finishes: all 10 steps run
    both = generate_ids(model, x, 10, temperature=0, eos_token_id=[row0[0], int(free[1, T])])
    assert both.shape[1] == T + 1  # every row finished at step 1: the loop stopped there


def test_sampled_rows_stop_too(setup):
    model, enc = setup
    g = torch.Generator().manual_seed(0)
    outs = generate_batch(model, enc, PROMPTS * 3, 10, temperature=1.0, stop=" ", generator=g, draw="inverse_cdf")
    assert all(" " not in o for o in outs)
