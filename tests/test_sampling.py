"""Sampling: filter_logits against the Hugging Face processors' rules, greedy, errors, penalty, trace."""

from __future__ import annotations

import warnings

import pytest
import torch

from course_lib.decoding.batching import read_prompts
from course_lib.decoding.decode import encode_prompt
from course_lib.decoding.quality import quality_and_diversity
from course_lib.decoding.sampling import apply_repetition_penalty, check_sampling_args, filter_logits, sample_next
from course_lib.decoding.trace import format_trace, generate_with_trace
from course_lib.text.tokenizer import get_encoding, show_token

NEG = float("-inf")


# --- a hand transcription of the Hugging Face warpers (min_tokens_to_keep=1), applied in HF's order
def hf_temperature(scores, t):
    return scores / t


def hf_top_k(scores, k):
    k = min(max(k, 1), scores.size(-1))
    indices_to_remove = scores < torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(indices_to_remove, NEG)


def hf_top_p(scores, p):
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - p)
    sorted_indices_to_remove[..., -1:] = 0
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, NEG)


def hf_repetition(input_ids, scores, penalty):
    score = torch.gather(scores, 1, input_ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, input_ids, score)


def hf_pipeline(scores, t, k, p):
    if t != 1.0:
        scores = hf_temperature(scores, t)
    if k is not None:
        scores = hf_top_k(scores, k)
    if p is not None and p < 1.0:
        scores = hf_top_p(scores, p)
    return scores


def random_logits(seed: int, rows: int = 6, vocab: int = 50, ties: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 2
    if ties:  # integer-valued logits: many exact ties, also at the k-th value and the top-p boundary
        x = torch.randint(-3, 4, (rows, vocab), generator=g).float()
    return x


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("t,k,p", [(1.0, None, None), (0.7, None, None), (1.3, 5, None), (1.0, 1, None),
                                   (1.0, 10, None), (0.8, None, 0.9), (1.0, None, 0.5), (1.0, None, 0.01),
                                   (1.5, 8, 0.7), (0.5, 3, 0.95), (1.0, 100, 1.0), (2.0, None, 1.0)])
def test_filter_logits_equals_hugging_face(ties, t, k, p):
    for seed in range(5):
        x = random_logits(seed, ties=ties)
        ours, ref = filter_logits(x, t, k, p), hf_pipeline(x.clone(), t, k, p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_top_k_keeps_ties_and_top_p_keeps_one():
    x = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    kept = ~torch.isinf(filter_logits(x, 1.0, top_k=2))
    assert kept.tolist() == [[True, True, True, True, False]]  # every token tied with the 2nd value stays
    peaked = torch.tensor([[10.0, 0.0, 0.0]])
    assert (~torch.isinf(filter_logits(peaked, 1.0, top_p=0.01))).sum() == 1  # at least one survives


def test_top_p_keeps_smallest_set_reaching_p():
    # Loop-based check of the rule, independent of the tensor code: keep the most likely tokens
    # until their mass reaches p (HF removes tokens whose ascending cumulative mass is <= 1 - p).
    for seed in range(10):
        x = random_logits(seed, rows=1, vocab=30)[0]
        probs = x.softmax(-1).tolist()
        for p in (0.3, 0.6, 0.9):
            order = sorted(range(30), key=lambda i: -probs[i])
            keep, mass = set(), 0.0
            for i in order:
                keep.add(i)
                mass += probs[i]
                if mass >= p - 1e-6:
                    break
            ours = {i for i, v in enumerate(filter_logits(x[None], 1.0, top_p=p)[0].tolist()) if v != NEG}
            assert ours == keep


def test_temperature_zero_is_greedy_everywhere():
    x = random_logits(3)
    f = filter_logits(x, 0.0, top_k=5, top_p=0.5)
    assert (~torch.isinf(f)).sum(-1).tolist() == [1] * x.shape[0]
    assert torch.equal(sample_next(x, 0.0), x.argmax(-1, keepdim=True))
    assert torch.equal(sample_next(x, 0), x.argmax(-1, keepdim=True))  # the int 0 too
    assert not torch.isnan(f.softmax(-1)).any()


@pytest.mark.parametrize("kwargs,needle", [
    (dict(temperature=-0.1), "temperature must be a number >= 0"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k must be None or an int >= 1"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p must be None or a number in (0, 1]"),
    (dict(top_p=1.5), "top_p must be None or a number in (0, 1]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
])
def test_bad_arguments_name_argument_and_range(kwargs, needle):
    with pytest.raises(ValueError) as err:
        check_sampling_args(**kwargs)
    assert needle in str(err.value)


def test_generate_rejects_bad_arguments(make_gpt):
    model = make_gpt(vocab_size=50, n_embd=16, n_layer=1, n_head=2, block_size=8, dropout=0.0)
    x = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(x, 3, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(x, -2)
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate(x[:, :0], 3)


def test_repetition_penalty_equals_hugging_face():
    for seed in range(5):
        x = random_logits(seed, rows=3, vocab=40)
        ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(seed))
        for pen in (0.5, 1.3, 2.0):
            assert torch.allclose(apply_repetition_penalty(x, ids, pen), hf_repetition(ids, x.clone(), pen))


def test_repetition_penalty_ignores_padding():
    x = torch.tensor([[1.0, -1.0, 2.0]])
    ids = torch.tensor([[0, 1]])
    out = apply_repetition_penalty(x, ids, 2.0, context_mask=torch.tensor([[0, 1]]))
    assert out.tolist() == [[1.0, -2.0, 2.0]]  # token 0 was padding: untouched


def test_seeded_generator_reproduces_a_sample(make_gpt):
    x = random_logits(1)
    a = sample_next(x, 1.0, generator=torch.Generator().manual_seed(7))
    b = sample_next(x, 1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    model = make_gpt(vocab_size=60, n_embd=16, n_layer=1, n_head=2, block_size=16, dropout=0.0)
    idx = torch.zeros(2, 1, dtype=torch.long)
    r1 = model.generate(idx, 10, 1.0, top_k=20, generator=torch.Generator().manual_seed(3))
    r2 = model.generate(idx, 10, 1.0, top_k=20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2)


def test_prompts_empty_and_too_long():
    enc = get_encoding()
    assert encode_prompt(enc, "", 8) == [enc.eot_token]
    long = " ".join(["word"] * 20)
    with pytest.warns(UserWarning, match="keeping the last 8 tokens"):
        ids = encode_prompt(enc, long, 8)
    assert ids == enc.encode(long)[-8:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encode_prompt(enc, "word", 8) == enc.encode("word")


def test_read_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("农夫山泉\n\nAlpine Spring\r\n", encoding="utf-8")
    assert read_prompts(f) == ["农夫山泉", "Alpine Spring"]
    with pytest.raises(FileNotFoundError, match="one prompt per line"):
        read_prompts(tmp_path / "missing.txt")


def test_show_token_partial_chinese_as_bytes():
    enc = get_encoding()
    # Find a Chinese character cl100k_base splits across tokens; its pieces are not valid UTF-8.
    split = next(ch for ch in "鲜虾鱼板面坚果夏威夷碧根" if len(enc.encode(ch)) > 1)
    pieces = [show_token(enc, t) for t in enc.encode(split)]
    assert all(p.startswith("<") and p.endswith(">") for p in pieces if "\ufffd" not in p)
    assert "\ufffd" not in "".join(pieces)
    assert b"".join(bytes.fromhex(p.strip("<>").replace(" ", "")) for p in pieces) == split.encode()


def test_trace_records_steps_and_matches_generate(make_gpt):
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=32, dropout=0.0)
    tr = generate_with_trace(model, enc, "农夫山泉", 5, temperature=0.9, top_k=4, generator=torch.Generator().manual_seed(1))
    x = torch.tensor([enc.encode("农夫山泉")])
    ref = model.generate(x, 5, 0.9, top_k=4, generator=torch.Generator().manual_seed(1))
    assert tr.token_ids == ref[0].tolist()
    assert len(tr.steps) == 5 and all(len(s.candidates) == 5 for s in tr.steps)
    for s in tr.steps:
        probs = [c.prob for c in s.candidates]
        assert probs == sorted(probs, reverse=True)
        assert sum(c.prob_filtered > 0 for c in s.candidates) <= 4 + sum(  # top-4 (ties allowed)
            c.prob == s.candidates[3].prob for c in s.candidates[4:])
        assert s.chosen_prob_filtered > 0
    text = format_trace(tr)
    assert text.count("candidates:") == 5 and "Step 3 candidates:" in text and "→ chosen" in text
    assert "\ufffd" not in text


def test_trace_text_shows_pending_bytes():
    from course_lib.decoding.trace import _visible_text
    enc = get_encoding()
    ids = enc.encode("水鲜虾")
    full = _visible_text(enc, ids)
    assert full == "水鲜虾"
    partial = _visible_text(enc, ids[:-1]) if len(enc.encode("虾")) > 1 else None
    if partial is not None:
        assert partial.startswith("水鲜") and partial.endswith(">") and "\ufffd" not in partial


def test_quality_and_diversity():
    r = quality_and_diversity(["a", "a", "b", "c"], lambda s: s != "c")
    assert r == {"n": 4, "well_formed": 0.75, "distinct": 0.75}


def test_inverse_cdf_draw_is_the_single_level_inverse_cdf():
    from course_lib.decoding.sampling import inverse_cdf_draw
    for V in (7, 64, 1000, 3000):
        for seed in range(10):
            p = torch.randn(5, V, generator=torch.Generator().manual_seed(seed)).mul(3).softmax(-1)
            p[:, ::3] = 0  # zero-probability tokens must never be drawn
            got = inverse_cdf_draw(p, torch.Generator().manual_seed(seed), block=64)
            u = torch.rand(5, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            cdf = p.double().cumsum(-1)
            assert torch.equal(got, torch.searchsorted(cdf, u * cdf[:, -1:], right=True))
            assert (p.gather(1, got) > 0).all()


def test_both_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.clamp_min(1e-30).log().expand(4000, 5)
    for draw in ("multinomial", "inverse_cdf"):
        ids = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0), draw=draw)[:, 0]
        freq = torch.bincount(ids, minlength=5).float() / ids.numel()
        assert freq[4] == 0 and torch.allclose(freq, probs, atol=0.03), (draw, freq)
    with pytest.raises(ValueError, match="draw must be one of"):
        sample_next(logits, 1.0, draw="gumbel")


def test_device_mixing_on_meta():
    """CPU context / prompt tensors meeting device logits (issue 15): the meta device fails on
    meta/CPU mixing just as CUDA/CPU mixing does, without needing a GPU."""
    from course_lib.text.plots import temperature_probs
    logits = torch.empty(2, 50, device="meta")
    ctx = torch.tensor([[1, 2, 3], [4, 5, 5]])  # on the CPU, as a prompt built from enc.encode
    out = apply_repetition_penalty(logits, ctx, 1.3, context_mask=torch.ones(2, 3))
    assert out.device.type == "meta" and out.shape == (2, 50)
    top, table = temperature_probs(torch.empty(50, device="meta"), [0, 0.7, 1.5], n=4)
    assert top.device.type == "meta" and table.shape == (3, 4)


def test_line_rates_with_intervals():
    from course_lib.decoding.quality import line_rates
    from course_lib.text.corpus import generate_corpus
    train = generate_corpus(3, 0, split="train")
    held = generate_corpus(2, 0, split="heldout")
    lines = train + held + ["not a listing", held[0]]
    r = line_rates(lines, set(train))
    assert r["n"] == 7
    assert (r["well_formed"]["k"], r["novel"]["k"], r["heldout"]["k"], r["distinct"]["k"]) == (6, 3, 3, 6)
    lo, hi = r["well_formed"]["ci95"]
    assert lo < 6 / 7 < hi
    with pytest.raises(ValueError, match="no lines"):
        line_rates([])
