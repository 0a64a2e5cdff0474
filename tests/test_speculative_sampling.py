"""Speculative *sampling* is distributed exactly as the target's own sampling, over whole multi-round runs.

`test_speculative.py` checks the acceptance rule on one drafted token. Here a tiny target and a close but
different draft generate 5 new tokens with k = 3 on a vocabulary of 4, many times under one seeded generator.
The first new token comes from the prefill; the first round drafts positions 2-4 (draft positions 1, 2, 3) and,
when all three are accepted, adds the bonus token at position 5; when a round rejects, the caches roll back and a
second round drafts again from there. The exact law of the 5 tokens, p(x1) p(x2 | x1) ... p(x5 | x1..x4), is
computed by running the target on every prefix (4^4 of them), and the sampled sequences are compared with it:
a chi-square test on the joint (bins with expected count < 5 pooled) and a total-variation bound on each
position's marginal. The test also asserts that the paths it is about were taken (accepted draft positions >= 2,
bonus tokens, runs with a rejection followed by another round), so it cannot pass vacuously. With the classic bug
(at a rejection, sampling from p instead of normalize(max(0, p - q))) the joint test's p-value is about 1e-13.
"""

from __future__ import annotations

import itertools

import torch
from test_speculative import chi2_pvalue  # the same goodness-of-fit test as the one-round sampling tests

from course_lib.decoding.sampling import SamplingSettings
from course_lib.decoding.speculative import speculative_generate

V, K, NEW, RUNS = 4, 3, 5, 2500
PROMPT = torch.tensor([[1, 2, 3, 1]])
SETTINGS = {"temperature": 0.9, "top_k": None, "top_p": None}


def _models(make_gpt):
    target = make_gpt(seed=0, vocab_size=V, n_embd=16, n_layer=1, n_head=2, block_size=16, dropout=0.0)
    draft = make_gpt(seed=0, vocab_size=V, n_embd=16, n_layer=1, n_head=2, block_size=16, dropout=0.0)
    with torch.no_grad():  # the same network with a sharper table: q close to p, but not equal
        target.tok_emb.weight.mul_(3.0)
        draft.tok_emb.weight.mul_(4.5)
    return target, draft


def _exact_joint(target) -> torch.Tensor:
    """P(x1..x5) for all 4^5 continuations, as a flat tensor indexed by the base-4 number x1 x2 x3 x4 x5."""
    s = SamplingSettings(**SETTINGS)
    probs = torch.ones(1)
    with torch.no_grad():
        for j in range(NEW):
            prefixes = torch.tensor(list(itertools.product(range(V), repeat=j)), dtype=torch.long).reshape(V ** j, j)
            ids = torch.cat([PROMPT.expand(V ** j, -1), prefixes], dim=1)
            p_next = s.filter(target(ids)[:, -1]).softmax(-1)          # (V^j, V)
            probs = (probs[:, None] * p_next).reshape(-1)
    return probs.double()


def test_multi_round_speculative_sampling_matches_the_target(make_gpt):
    target, draft = _models(make_gpt)
    joint = _exact_joint(target)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V ** NEW, dtype=torch.float64)
    accepted_at = [0] * K          # rounds that accepted draft position i + 1
    bonus = rollback_then_round = 0
    for _ in range(RUNS):
        out, stats = speculative_generate(target, draft, PROMPT, NEW, k=K, generator=g, return_stats=True,
                                          keep_rounds=True, **SETTINGS)
        new = out[0, PROMPT.shape[1]:].tolist()
        counts[sum(t * V ** (NEW - 1 - i) for i, t in enumerate(new))] += 1
        for drafted, n, _tok in stats.rounds:
            for i in range(n):
                accepted_at[i] += 1
            bonus += n == len(drafted) == K
        rollback_then_round += any(n < len(d) for d, n, _ in stats.rounds[:-1])
    # the paths under test were taken, many times
    assert accepted_at[1] >= 200 and accepted_at[2] >= 200, accepted_at
    assert bonus >= 200, bonus
    assert rollback_then_round >= 200, rollback_then_round
    # the joint law of all 5 tokens
    assert chi2_pvalue(counts, joint) > 1e-3
    # and every position's marginal, within a total-variation bound (2500 runs: sampling noise ~0.02)
    sampled = (counts / RUNS).reshape([V] * NEW)
    exact = joint.reshape([V] * NEW)
    for pos in range(NEW):
        dims = [d for d in range(NEW) if d != pos]
        tv = 0.5 * (sampled.sum(dims) - exact.sum(dims)).abs().sum()
        assert tv < 0.05, (pos, float(tv))


def test_exact_joint_is_a_distribution(make_gpt):
    target, _ = _models(make_gpt)
    joint = _exact_joint(target)
    assert joint.shape == (V ** NEW,) and abs(float(joint.sum()) - 1) < 1e-6 and bool((joint >= 0).all())
