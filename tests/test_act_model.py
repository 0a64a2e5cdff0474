"""The ACT reasoner: carry semantics, one-step gradient, Q head, forced vs dynamic loops, metrics."""

from __future__ import annotations

import pytest
import torch

from course_lib.act import puzzles as P
from course_lib.act.halting import run_dynamic, run_dynamic_refill, run_forced
from course_lib.act.loss import IGNORE_LABEL_ID, ACTLossHead, compute_metrics
from course_lib.act.model import ACTReasoner
from course_lib.core.layers import Block

TINY = {"hidden_size": 32, "num_heads": 4, "halt_max_steps": 4}


def random_batch(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sols = torch.from_numpy(P.solutions()[torch.randint(288, (n,), generator=g).numpy()])
    labels = torch.stack([torch.from_numpy(P.encode(s.numpy())) for s in sols])
    inputs = labels.clone()
    blank = torch.rand(n, P.SEQ_LEN, generator=g) < 0.4
    inputs[blank & (labels >= P.SYMBOL0)] = P.SYMBOL0
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": torch.arange(n)}


@pytest.fixture
def model() -> ACTReasoner:
    torch.manual_seed(0)
    m = ACTReasoner(TINY).eval()
    with torch.no_grad():  # give the Q head some signal so dynamic halting actually varies
        m.inner.q_head.weight.normal_(0, 1.0)
        m.inner.q_head.bias.fill_(0.0)
    return m


def varied_threshold(model, b) -> float:
    """A threshold between the Q values the model produces, so some rows halt early and some do not."""
    trace: list = []
    run_dynamic(model, b, threshold=1.0, trace=trace)
    probs = torch.sigmoid(torch.stack([t["q_halt"] for t in trace]))  # (steps, B)
    return float(probs.flatten().quantile(0.7))


def test_built_from_shared_noncausal_block():
    m = ACTReasoner(TINY)
    blocks = [b for b in m.modules() if isinstance(b, Block)]
    assert blocks and all(not b.attn.causal for b in blocks)
    assert torch.equal(m.inner.q_head.bias.detach(), torch.full((2,), -5.0))
    assert torch.equal(m.inner.q_head.weight.detach(), torch.zeros_like(m.inner.q_head.weight))


def test_attention_is_bidirectional(model):
    b = random_batch(2)
    carry = model.inner.reset_carry(torch.ones(2, dtype=torch.bool), model.inner.empty_carry(2))
    _, logits_a, _, _ = model.inner(carry, b["inputs"])
    changed = b["inputs"].clone()
    changed[:, 23] = P.SYMBOL0 + 1  # a token near the END changes the FIRST cell's logits
    _, logits_b, _, _ = model.inner(carry, changed)
    assert not torch.allclose(logits_a[:, 0], logits_b[:, 0])


def test_initial_carry_all_halted_and_first_call_loads_batch(model):
    b = random_batch(3)
    carry = model.initial_carry(b)
    assert carry.halted.all() and (carry.steps == 0).all()
    assert set(carry.current_data) == set(b)
    carry, out = model(carry, b)
    assert torch.equal(carry.current_data["inputs"], b["inputs"])
    assert (carry.steps == 1).all() and not carry.halted.any()
    # next call with a different batch: rows are not halted, so they keep their puzzle
    other = random_batch(3, seed=1)
    carry, _ = model(carry, other)
    assert torch.equal(carry.current_data["inputs"], b["inputs"]) and (carry.steps == 2).all()


def test_halted_rows_are_reset_and_take_new_data(model):
    b, other = random_batch(3), random_batch(3, seed=1)
    carry, _ = model(model.initial_carry(b), b)
    carry.halted = torch.tensor([True, False, False])
    carry, _ = model(carry, other)
    assert torch.equal(carry.current_data["inputs"][0], other["inputs"][0])
    assert torch.equal(carry.current_data["inputs"][1:], b["inputs"][1:])
    assert carry.steps.tolist() == [1, 2, 2]


def test_forced_runs_exactly_halt_max_steps(model):
    head = ACTLossHead(model).eval()
    steps, metrics, preds = run_forced(head, random_batch(5), return_keys=("preds", "q_halt_logits"))
    assert steps == TINY["halt_max_steps"]
    assert int(metrics["count"]) == 5 and int(metrics["steps"]) == 5 * TINY["halt_max_steps"]
    assert preds["preds"].shape == (5, P.SEQ_LEN)


def test_training_halts_on_q_and_explores():
    torch.manual_seed(0)
    m = ACTReasoner({**TINY, "halt_exploration_prob": 0.0}).train()
    with torch.no_grad():
        m.inner.q_head.bias.copy_(torch.tensor([5.0, -5.0]))  # "halt!" everywhere
    b = random_batch(4)
    carry, _ = m(m.initial_carry(b), b)
    assert carry.halted.all()  # training: the Q head may stop at step 1
    m.eval()
    carry, _ = m(m.initial_carry(b), b)
    assert not carry.halted.any()  # evaluation: only the max-steps rule
    m.train()
    m.config["halt_exploration_prob"] = 1.0
    torch.manual_seed(1)
    carry, _ = m(m.initial_carry(b), b)
    assert not carry.halted.any()  # forced exploration: min steps >= 2


def test_one_step_gradient_only_last_updates_have_graph(model):
    """The backward pass goes through ONE L and ONE H update: count Level calls with grad enabled."""
    calls = []
    for name in ("H_level", "L_level"):
        getattr(model.inner, name).register_forward_hook(lambda mod, i, o, n=name: calls.append((n, torch.is_grad_enabled())))
    model.train()
    carry, out = model(model.initial_carry(random_batch(2)), random_batch(2))
    h, lc = model.config["H_cycles"], model.config["L_cycles"]
    assert len(calls) == h * lc + h
    assert [c for c in calls if c[1]] == [("L_level", True), ("H_level", True)]
    out["logits"].sum().backward()
    assert model.inner.embed_tokens.weight.grad is not None
    assert not carry.inner.z_H.requires_grad


def test_dynamic_never_confident_equals_forced(model):
    b = random_batch(6)
    _, m_forced, p_forced = run_forced(ACTLossHead(model), b, return_keys=("preds", "logits"))
    n, m_dyn, p_dyn, steps = run_dynamic(model, b, threshold=1.0, return_keys=("preds", "logits"))
    assert n == TINY["halt_max_steps"] and (steps == TINY["halt_max_steps"]).all()
    assert torch.equal(p_forced["preds"], p_dyn["preds"])
    torch.testing.assert_close(p_forced["logits"], p_dyn["logits"], rtol=1e-4, atol=1e-4)
    for k in ("count", "exact_accuracy", "steps"):
        assert int(m_forced[k]) == int(m_dyn[k])


def test_dynamic_freezes_halted_rows(model):
    """A row that halted at step k keeps exactly the answer it had at step k."""
    b = random_batch(8)
    thr = varied_threshold(model, b)
    _, _, preds, steps = run_dynamic(model, b, threshold=thr, return_keys=("preds", "logits"))
    assert steps.min() < steps.max()  # halting really varies in this fixture
    for k in steps.unique().tolist():
        _, _, at_k, _ = run_dynamic(model, b, threshold=1.0, max_steps=k, return_keys=("logits",))
        rows = steps == k
        torch.testing.assert_close(preds["logits"][rows], at_k["logits"][rows], rtol=1e-4, atol=1e-4)


def test_refilling_gives_the_same_answers_with_fewer_row_steps(model):
    b = random_batch(10)
    thr = varied_threshold(model, b)
    _, _, preds, steps = run_dynamic(model, b, threshold=thr, return_keys=("preds",))
    out = run_dynamic_refill(model, b["inputs"], batch_size=3, threshold=thr)
    assert torch.equal(out["preds"], preds["preds"]) and torch.equal(out["steps"], steps)
    assert out["row_steps"] == int(steps.sum()) < 10 * TINY["halt_max_steps"]


def test_metrics_reference_semantics():
    # 3 rows, 2 label positions each; row 2 has no labels at all, so it is not counted.
    labels = torch.tensor([[2, 3], [2, 3], [IGNORE_LABEL_ID, IGNORE_LABEL_ID]])
    logits = torch.full((3, 2, 5), -10.0)
    logits[0, 0, 2] = logits[0, 1, 3] = 10  # row 0: all right
    logits[1, 0, 2] = logits[1, 1, 4] = 10  # row 1: half right
    q_halt = torch.tensor([1.0, 1.0, 1.0])
    m, lm_rows, seq = compute_metrics(logits, labels, q_halt, torch.tensor([3, 5, 7]), torch.ones(3, dtype=torch.bool))
    assert int(m["count"]) == 2
    assert float(m["accuracy"]) == pytest.approx(1.5)
    assert int(m["exact_accuracy"]) == 1
    assert int(m["q_halt_accuracy"]) == 1  # q_halt >= 0 predicts "correct": right for row 0 only
    assert int(m["steps"]) == 8
    assert seq.tolist() == [True, False, True]
    # not-halted rows are left out of every sum but the losses
    m2, _, _ = compute_metrics(logits, labels, q_halt, torch.tensor([3, 5, 7]), torch.tensor([True, False, False]))
    assert int(m2["count"]) == 1 and int(m2["steps"]) == 3


def test_replaying_a_trace_equals_the_real_dynamic_loop(model):
    from course_lib.act.analysis import accuracy_by_step, halting_steps, replay, trace_steps

    b = random_batch(10)
    thr = varied_threshold(model, b)
    tr = trace_steps(model, b["inputs"], b["labels"])
    _, metrics, preds, steps = run_dynamic(model, b, threshold=thr, return_keys=("preds",))
    assert torch.equal(halting_steps(tr, thr), steps)
    assert torch.equal(tr.preds.gather(0, (steps - 1)[None, :, None].expand(1, -1, P.SEQ_LEN))[0], preds["preds"])
    assert replay(tr, thr)["exact_accuracy"] == pytest.approx(float(metrics["exact_accuracy"]) / 10)
    assert replay(tr, None)["steps"] == TINY["halt_max_steps"]
    assert len(accuracy_by_step(tr)) == TINY["halt_max_steps"]
