"""Beam search against brute force on a tiny vocabulary; sequence_logprob against a hand-computed loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from course_lib import sequence_logprob  # the public API path (COURSE_DESIGN.md: the package top level)
from course_lib.decoding.beam import BeamHypotheses, beam_search
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.scoring import sequence_logprobs
from course_lib.text.tokenizer import get_encoding

V, L, EOS = 4, 3, 2  # 4 tokens, 3 new tokens at most, token 2 ends a hypothesis


@pytest.fixture(scope="module")
def tiny(make_gpt):
    return make_gpt(seed=3, vocab_size=V, n_embd=16, n_layer=2, n_head=2, block_size=16, dropout=0.0)


@torch.no_grad()
def logprob_of(model, prompt: list[int], cont: list[int]) -> float:
    """Sum of log p(token | everything before), one forward pass per token (the slow, obvious way)."""
    total, ctx = 0.0, list(prompt)
    for t in cont:
        logits = model(torch.tensor([ctx]))[0, -1].double()
        total += float(torch.log_softmax(logits, -1)[t])
        ctx.append(t)
    return total


def brute_force(model, prompt, length_penalty, ends=lambda cont: cont[-1] == EOS):
    """Every finished continuation: the first one of its prefixes that ends (an eos id, a stop string), or L
    tokens without an end."""
    best = None
    for n in range(1, L + 1):
        for cont in itertools.product(range(V), repeat=n):
            if any(ends(cont[:i]) for i in range(1, n)) or (n < L and not ends(cont)):
                continue
            score = logprob_of(model, prompt, list(cont)) / n ** length_penalty
            if best is None or score > best[0]:
                best = (score, list(cont))
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("prompt", [[0], [3, 3, 0]])
def test_exhaustive_beam_equals_brute_force(tiny, prompt, length_penalty):
    # num_beams >= V**L keeps every partial continuation alive: beam search becomes exhaustive
    res = beam_search(tiny, torch.tensor([prompt]), L, V ** L, length_penalty=length_penalty,
                      eos_token_id=EOS, early_stopping="never")
    score, cont = brute_force(tiny, prompt, length_penalty)
    assert res.hypotheses[0][0][1] == cont
    assert math.isclose(res.scores[0], score, rel_tol=1e-6, abs_tol=1e-9)
    assert res.sequences[0, len(prompt):len(prompt) + len(cont)].tolist() == cont


@pytest.mark.parametrize("stop", ['"#', "$"])  # token ids 1, 2 are '"', '#' in cl100k_base: one stop spans two
def test_exhaustive_beam_with_a_stop_string_equals_brute_force(tiny, stop):
    """A stop string finishes a hypothesis like an eos id, even when it spans two tokens."""
    enc = get_encoding()
    res = beam_search(tiny, torch.tensor([[0]]), L, V ** L, length_penalty=1.0, early_stopping="never",
                      stop=stop, enc=enc)
    score, cont = brute_force(tiny, [0], 1.0, ends=lambda c: stop.encode() in enc.decode_bytes(list(c)))
    assert res.hypotheses[0][0][1] == cont
    assert math.isclose(res.scores[0], score, rel_tol=1e-6, abs_tol=1e-9)
    assert all(stop not in enc.decode(toks[:-1]) for _, toks in res.hypotheses[0])  # nothing runs past a stop


def test_small_beams_follow_hugging_face_steps(tiny):
    """K=2 by hand: the rules of the module docstring, step by step, in plain Python."""
    prompt, K = [1, 3], 2
    beams = [([], 0.0)]
    finished = BeamHypotheses(K, 1.0, "never", L)
    for step in range(L):
        cands = []
        for toks, s in beams:
            logp = torch.log_softmax(tiny(torch.tensor([prompt + toks]))[0, -1].double(), -1).tolist()
            cands += [(s + lp, toks + [t]) for t, lp in enumerate(logp)]
        cands.sort(key=lambda c: -c[0])
        beams = []
        for rank, (s, toks) in enumerate(cands[:2 * K]):
            if toks[-1] == EOS:
                if rank < K:
                    finished.add(toks, s, step + 1)
            elif len(beams) < K:
                beams.append((toks, s))
    for toks, s in beams:
        finished.add(toks, s, len(toks))
    res = beam_search(tiny, torch.tensor([prompt]), L, K, eos_token_id=EOS, early_stopping="never")
    assert res.hypotheses[0][0][1] == finished.best()[1]


def test_one_beam_is_greedy_and_batch_rows_are_independent(tiny):
    x = torch.tensor([[0, 1], [3, 3]])
    greedy = generate_ids(tiny, x, 6, temperature=0)
    assert torch.equal(beam_search(tiny, x, 6, 1).sequences, greedy)
    assert torch.equal(tiny.generate(x, 6, num_beams=1, temperature=0), greedy)
    both = beam_search(tiny, x, L, 4, eos_token_id=EOS)
    for b in range(2):
        alone = beam_search(tiny, x[b:b + 1], L, 4, eos_token_id=EOS)
        assert both.hypotheses[b] == alone.hypotheses[0]


def test_cache_and_no_cache_agree(tiny):
    x = torch.tensor([[1, 0, 3]])
    a = beam_search(tiny, x, 5, 3, eos_token_id=EOS, use_cache=True)
    b = beam_search(tiny, x, 5, 3, eos_token_id=EOS, use_cache=False)
    assert a.hypotheses == b.hypotheses or all(
        ta == tb and math.isclose(sa, sb, rel_tol=1e-5) for (sa, ta), (sb, tb) in zip(a.hypotheses[0], b.hypotheses[0], strict=True))


def test_early_stopping_true_stops_first_and_heap_is_bounded(tiny):
    x = torch.tensor([[1]])
    eager = beam_search(tiny, x, 8, 2, eos_token_id=[EOS, 0], early_stopping=True)
    never = beam_search(tiny, x, 8, 2, eos_token_id=[EOS, 0], early_stopping="never")
    assert eager.steps <= never.steps
    assert never.scores[0] >= eager.scores[0] - 1e-12  # the exhaustive bound never does worse
    assert len(never.hypotheses[0]) <= 2
    h = BeamHypotheses(2, 1.0, False, 5)
    for s in [-3.0, -1.0, -2.0, -0.5]:
        h.add([0], s, 1)
    assert sorted(x[0] for x in h.heap) == [-1.0, -0.5]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num_beams=0), "num_beams must be an int >= 1"),
    (dict(num_beams=2, length_penalty=-1.0), "length_penalty must be >= 0 with num_beams > 1"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(num_beams=2, top_k=5), "beam search does not sample"),
    (dict(stop=""), "stop must not contain an empty string"),
])
def test_generate_bad_beam_arguments(tiny, kwargs, needle):
    with pytest.raises(ValueError) as err:
        tiny.generate(torch.tensor([[1]]), 3, **kwargs)
    assert needle in str(err.value)


def test_sequence_logprob_equals_hand_loop(make_gpt):
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=48, dropout=0.0)
    for prompt, cont in [("农夫山泉", " 天然水 550ml 瓶装"), ("", "怡宝 纯净水"), ("Alpine", " Spring Water 1L")]:
        r = sequence_logprob(model, enc, prompt, cont)
        p = enc.encode(prompt) if prompt else [enc.eot_token]
        c = enc.encode(cont)
        ref = logprob_of(model, p, c)
        assert r["tokens"] == len(c)
        assert math.isclose(r["sum"], ref, rel_tol=1e-5)
        assert math.isclose(r["mean"], ref / len(c), rel_tol=1e-5)
        assert math.isclose(r["perplexity"], math.exp(-ref / len(c)), rel_tol=1e-5)
    pairs = [("农夫山泉", " 天然水"), ("", "a much longer continuation with more tokens in it"), ("x", "y")]
    many = sequence_logprobs(model, enc, pairs, batch_size=2)  # right-padded batches read the same numbers
    for (p, c), r in zip(pairs, many, strict=True):
        assert math.isclose(r["sum"], sequence_logprob(model, enc, p, c)["sum"], rel_tol=1e-5)
    with pytest.raises(ValueError, match="continuation must not be empty"):
        sequence_logprob(model, enc, "a", "")
    with pytest.raises(ValueError, match="context holds 48"):
        sequence_logprob(model, enc, "a", "word " * 60)


def test_multinomial_draws_converge_to_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    probs = logits.softmax(-1)
    ids = torch.multinomial(probs, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=5).float() / ids.numel()
    assert torch.allclose(freq, probs, atol=0.01)


def test_generate_scored_equals_sequence_logprob(make_gpt):
    from course_lib.decoding.quality import generate_scored
    enc = get_encoding()
    model = make_gpt(vocab_size=enc.n_vocab, n_embd=16, n_layer=1, n_head=2, block_size=48, dropout=0.0)
    prompts = ["农夫山泉", "Alpine Spring", "三只松鼠 每日坚果"]
    free = generate_ids(model, torch.tensor([enc.encode(prompts[0])]), 8, temperature=0)[0, len(enc.encode(prompts[0])):]
    eos = int(free[3])  # row 0 finishes early; the others may run to the budget
    texts, sums, counts = generate_scored(model, enc, prompts, 8, 0.0, eos_token_id=eos)
    for p, t, s, n in zip(prompts, texts, sums, counts, strict=True):
        cont = enc.encode(t) + ([eos] if n > len(enc.encode(t)) else [])
        assert n == len(cont)
        assert math.isclose(s, logprob_of(model, enc.encode(p), cont), rel_tol=1e-4)
