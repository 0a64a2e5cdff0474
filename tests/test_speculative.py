"""Speculative decoding: greedy output token-identical to the target, the sampling rule equal in distribution.

Fast tests use tiny random models (same vocabulary, or a reduced-vocabulary `DraftGPT`); the shipped
target and draft are checked on every brand prompt. Timing is never asserted here (benchmarks/speculative.py).
"""

from __future__ import annotations

import pytest
import torch

from course_lib.caches.static_cache import GraphCounter, StaticKVCache
from course_lib.decoding import speculative
from course_lib.decoding.speculative import (
    accept_sampled,
    prompt_lookup_candidates,
    prompt_lookup_generate,
    speculative_generate,
    verify_static,
)
from course_lib.text.corpus import BRANDS
from course_lib.text.draft import DraftGPT, load_draft
from course_lib.text.tokenizer import get_encoding


def _peaky(model, scale: float = 12.0):
    """Sharpen a random model's predictions (scaled tied table) so drafts sometimes agree and tests mean something."""
    with torch.no_grad():
        model.tok_emb.weight.mul_(scale)
    return model


def _subset_draft(target, vocab_ids: list[int], seed: int = 3) -> DraftGPT:
    torch.manual_seed(seed)
    hp = {"vocab_size": len(vocab_ids) + 1, "n_embd": 16, "n_layer": 1, "n_head": 2,
          "block_size": target.block_size, "dropout": 0.0, "target_vocab_size": target.h_params["vocab_size"]}
    return _peaky(DraftGPT(hp, torch.tensor(vocab_ids)).eval())


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit, upper-tail p-value (bins with expected < 5 pooled)."""
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]]).double()
    exp = torch.cat([expected[~small], expected[small].sum()[None]]).double()
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


# ------------------------------------------------------------------------------ greedy identity
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_identical_same_vocab_draft(make_gpt, k):
    target = _peaky(make_gpt(seed=0, vocab_size=40, block_size=48, dropout=0.0))
    draft = _peaky(make_gpt(seed=1, vocab_size=40, n_layer=1, block_size=48, dropout=0.0))
    g = torch.Generator().manual_seed(k)
    accepted = 0
    for trial in range(6):
        T = int(torch.randint(1, 12, (1,), generator=g))
        x = torch.randint(0, 40, (1, T), generator=g)
        ref = target.generate(x, 20, temperature=0)
        out, st = speculative_generate(target, draft, x, 20, temperature=0.0, k=k, return_stats=True)
        assert torch.equal(out, ref), (k, trial)
        accepted += sum(st.accepted)
    assert accepted > 0  # the test exercised acceptance, not only rejections


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_identical_across_block_size(make_gpt, k):
    """Speculation stops where the verify would pass block_size; past it the window slides like generate()."""
    target = _peaky(make_gpt(seed=0, vocab_size=40, block_size=24, dropout=0.0))
    draft = _peaky(make_gpt(seed=1, vocab_size=40, n_layer=1, block_size=24, dropout=0.0))
    x = torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(0))
    for new in (19, 20, 30):  # ends exactly at block_size, one past it, well past it
        assert torch.equal(speculative_generate(target, draft, x, new, temperature=0.0, k=k), target.generate(x, new, temperature=0))


def test_greedy_identical_reduced_vocab_draft(make_gpt):
    target = _peaky(make_gpt(seed=0, vocab_size=60, block_size=48, dropout=0.0))
    draft = _subset_draft(target, list(range(0, 60, 2)))  # half the ids: the rest must come from the target
    for seed in range(5):
        x = torch.randint(0, 60, (1, 4), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(speculative_generate(target, draft, x, 24, temperature=0.0, k=3), target.generate(x, 24, temperature=0))


def test_prompt_lookup_greedy_identical(make_gpt):
    target = _peaky(make_gpt(seed=0, vocab_size=12, block_size=64, dropout=0.0), 20.0)  # small vocab: it repeats
    for seed in range(5):
        x = torch.randint(0, 12, (1, 10), generator=torch.Generator().manual_seed(seed))
        out, st = prompt_lookup_generate(target, x, 40, temperature=0.0, num_tokens=4, return_stats=True)
        assert torch.equal(out, target.generate(x, 40, temperature=0))
    assert sum(st.proposed) > 0


def test_prompt_lookup_candidates_hf_semantics():
    #            0  1  2  3  4  5  6  7  8
    seq = [5, 6, 7, 8, 9, 5, 6, 1, 5, 6]
    assert prompt_lookup_candidates(seq, 3, max_ngram=2) == [7, 8, 9]       # first earlier match of (5, 6)
    assert prompt_lookup_candidates([1, 2, 3, 9, 3], 2, max_ngram=2) == [9, 3]  # (9, 3) unseen: unigram 3 matches
    assert prompt_lookup_candidates([1, 2, 3], 4) == []


def test_shipped_draft_greedy_identical_on_every_brand(shipped_gpt):
    enc = get_encoding()
    draft = load_draft()
    total = accepted = 0
    for brand in BRANDS:
        x = torch.tensor([enc.encode(brand)])
        out, st = speculative_generate(shipped_gpt, draft, x, 48, temperature=0.0, k=4, return_stats=True)
        assert torch.equal(out, shipped_gpt.generate(x, 48, temperature=0)), brand
        total, accepted = total + sum(st.proposed), accepted + sum(st.accepted)
    assert accepted / total > 0.5  # a trained draft agrees with its target most of the time


@pytest.mark.parametrize("k", [1, 3, 6])
def test_draft_equal_to_target_accepts_every_token(make_gpt, k):
    """A round stores its last draft d_k only in the next round's first draft call (over 2 tokens): if that
    left a stale slot, a draft identical to the target would start disagreeing with it."""
    target = _peaky(make_gpt(seed=0, vocab_size=40, block_size=64, dropout=0.0))
    x = torch.tensor([[3, 14, 15]])
    out, st = speculative_generate(target, target, x, 40, temperature=0.0, k=k, return_stats=True)
    assert torch.equal(out, target.generate(x, 40, temperature=0))
    assert st.accepted == st.proposed  # every drafted token, in every round


@pytest.mark.parametrize("reduced", [False, True])
def test_compiled_round_is_one_graph_and_identical(make_gpt, monkeypatch, reduced):
    """compile=True runs each greedy round (k draft calls + the verify) as one graph, the same graph every round."""
    target = _peaky(make_gpt(seed=0, vocab_size=60, block_size=48, dropout=0.0))
    draft = (_subset_draft(target, list(range(0, 60, 2))) if reduced
             else _peaky(make_gpt(seed=1, vocab_size=60, n_layer=1, block_size=48, dropout=0.0)))
    torch._dynamo.reset()
    counter = GraphCounter()
    monkeypatch.setitem(speculative._COMPILED, "greedy_round",
                        torch.compile(speculative.greedy_round, backend=counter, fullgraph=True, dynamic=False))
    for seed in range(3):
        x = torch.randint(0, 60, (1, 2 + seed), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(speculative_generate(target, draft, x, 24, temperature=0.0, k=3, compile=True),
                           target.generate(x, 24, temperature=0))
    assert counter.graphs == 1
    # compile="steps" (the benchmark's comparison) dispatches to the separate draft-step and verify graphs
    monkeypatch.setitem(speculative._COMPILED, "draft_step_greedy", speculative.draft_step_greedy)
    monkeypatch.setitem(speculative._COMPILED, "verify_greedy", speculative.verify_greedy)
    assert torch.equal(speculative_generate(target, draft, x, 24, temperature=0.0, k=3, compile="steps"), target.generate(x, 24, temperature=0))


# ------------------------------------------------------------------------------ caches
def test_rollback_overwrites_rejected_slots(make_gpt):
    """Verify [a, b, c], keep only a, write x where b was: logits equal a fresh forward over prompt + a + x."""
    model = make_gpt(seed=0, vocab_size=40, block_size=32, dropout=0.0)
    prompt = torch.tensor([[3, 14, 15, 9]])
    cache = StaticKVCache.for_model(model, 1)
    with torch.no_grad():
        verify_static(model, cache, prompt, torch.arange(4))
        verify_static(model, cache, torch.tensor([[7, 1, 2]]), torch.arange(4, 7))     # b, c get rejected
        got = verify_static(model, cache, torch.tensor([[11, 5]]), torch.arange(5, 7))  # overwrite slots 5, 6
        want = model(torch.tensor([[3, 14, 15, 9, 7, 11, 5]]))[:, -2:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ sampling rule
def test_acceptance_rule_preserves_target_distribution():
    """One drafted token: the emitted token must be distributed as p, whatever q is."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    q = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.2, 0.2])  # very different, and proposes a token p forbids
    n = 20000
    counts = torch.zeros(6)
    for _ in range(n):
        d = torch.multinomial(q, 1, generator=g)
        acc, tok = accept_sampled(d, q[None], torch.stack([p, p]), g)
        counts[d if acc == 1 else tok] += 1
    assert counts[5] == 0
    assert chi2_pvalue(counts[:5], p[:5]) > 1e-3


@pytest.mark.parametrize("drafter", ["model", "lookup"])
def test_speculative_sampling_matches_target_distribution(make_gpt, drafter):
    """Two new tokens on a vocabulary of 6: the exact joint law p(x1) p(x2 | x1) is computable; chi-square."""
    V = 6
    target = _peaky(make_gpt(seed=0, vocab_size=V, block_size=16, dropout=0.0), 4.0)
    draft = _peaky(make_gpt(seed=1, vocab_size=V, n_layer=1, block_size=16, dropout=0.0), 4.0)
    x = torch.tensor([[1, 2, 3, 1]])
    kw = dict(temperature=0.9, top_k=5)
    from course_lib.decoding.sampling import SamplingSettings
    s = SamplingSettings(**kw)
    with torch.no_grad():
        p1 = s.filter(target(x)[0, -1]).softmax(-1)
        both = torch.cat([x.expand(V, -1), torch.arange(V)[:, None]], dim=1)
        p2 = s.filter(target(both)[:, -1]).softmax(-1)
    joint = (p1[:, None] * p2).flatten()
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V * V)
    n = 3000
    for _ in range(n):
        if drafter == "model":
            out = speculative_generate(target, draft, x, 2, k=2, generator=g, **kw)
        else:
            out = prompt_lookup_generate(target, x, 2, num_tokens=2, generator=g, **kw)
        counts[out[0, -2] * V + out[0, -1]] += 1
    assert chi2_pvalue(counts, joint) > 1e-3


def test_a_padded_batch_with_eos_gives_each_rows_own_tokens(make_gpt):
    """Rows run one at a time without their padding; one that finishes early is padded like in the decode loop."""
    target = make_gpt(seed=0, vocab_size=40, dropout=0.0)
    draft = make_gpt(seed=1, vocab_size=40, dropout=0.0)
    rows = [[5, 6, 7, 8], [9, 10]]
    alone = [target.generate(torch.tensor([r]), 12, temperature=0)[0, len(r):].tolist() for r in rows]
    eos = alone[1][3]  # row 1 produces this id by its 4th new token at the latest
    end = alone[1].index(eos)
    ids = torch.tensor([rows[0], [0, 0] + rows[1]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    ref = target.generate(ids, 12, temperature=0, attention_mask=mask, eos_token_id=eos, pad_token_id=39)
    for out in (speculative_generate(target, draft, ids, 12, temperature=0.0, k=3, attention_mask=mask,
                                     eos_token_id=eos, pad_token_id=39),
                prompt_lookup_generate(target, ids, 12, 2, temperature=0.0, attention_mask=mask, eos_token_id=eos,
                                       pad_token_id=39)):
        assert out.tolist() == ref.tolist()
    assert ref[1, 4:5 + end].tolist() == alone[1][:end + 1] and set(ref[1, 5 + end:].tolist()) <= {39}  # then padding


# ------------------------------------------------------------------------------ bad input
def test_bad_arguments_are_clear(make_gpt):
    target = make_gpt(seed=0, vocab_size=40, dropout=0.0)
    draft = make_gpt(seed=1, vocab_size=40, dropout=0.0)
    x = torch.tensor([[1, 2]])
    for k in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="k"):
            speculative_generate(target, draft, x, 4, temperature=0.0, k=k)
    with pytest.raises(ValueError, match="attention_mask"):
        speculative_generate(target, draft, x.expand(2, -1), 4, temperature=0.0, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="vocab_size"):
        speculative_generate(target, make_gpt(seed=1, vocab_size=41), x, 4, temperature=0.0)
    other = make_gpt(seed=0, vocab_size=50, dropout=0.0)
    with pytest.raises(ValueError, match="maps into a vocabulary of 40"):
        speculative_generate(other, _subset_draft(target, [1, 2, 3]), x, 4, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, x, 4, temperature=-1)
