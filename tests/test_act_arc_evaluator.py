"""The ARC-style evaluator on hand-made cases: inverse transforms, voting, ranking, pass@k, submission."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from course_lib.act import puzzles as P
from course_lib.act.arc_evaluator import ARCEvaluator, Candidate, pass_at_k, rank

SOL = P.solutions()[0]
WRONG = P.solutions()[1]
WRONG2 = P.solutions()[2]
VARIANTS = [(0, (1, 2, 3, 4)), (1, (2, 1, 4, 3)), (6, (4, 3, 2, 1)), (7, (3, 1, 4, 2))]


def make(votes: list[tuple[np.ndarray, float]], base: str = "test00000"):
    """One row per (prediction in the ORIGINAL frame, q_halt logit); each row uses the next variant."""
    names = ["<blank>"]
    preds, labels, ids, qs = [], [], [], []
    for i, (grid, q) in enumerate(votes):
        tid, perm = VARIANTS[i % len(VARIANTS)]
        names.append(P.variant_name(base, tid, perm))
        preds.append(P.encode(P.augment(grid, tid, perm)))  # the model answers in the variant's frame
        labels.append(P.encode(P.augment(SOL, tid, perm)))
        ids.append(len(names) - 1)
        qs.append(q)
    t = lambda a: torch.tensor(np.stack(a) if isinstance(a[0], np.ndarray) else a)  # noqa: E731
    return names, t(preds), t(ids), torch.tensor(qs), t(labels)


def test_inverse_transform_makes_all_variants_agree():
    names, preds, ids, qs, labels = make([(SOL, 0.0)] * 4)
    ev = ARCEvaluator(names)
    ev.update(preds, ids, qs, labels)
    ranked = ev.ranked("test00000")
    assert len(ranked) == 1 and ranked[0].votes == 4
    assert ranked[0].grid == tuple(map(tuple, SOL.tolist()))
    assert ev.result()["ARC/pass@1"] == 1.0


def test_majority_wins_over_confidence():
    names, preds, ids, qs, labels = make([(WRONG, 5.0), (SOL, -1.0), (SOL, -1.0)])
    ev = ARCEvaluator(names)
    ev.update(preds, ids, qs, labels)
    assert [c.votes for c in ev.ranked("test00000")] == [2, 1]
    r = ev.result()
    assert r["ARC/pass@1"] == 1.0 and r["ARC/pass@1000"] == 1.0


def test_tie_broken_by_mean_sigmoid_q_and_pass_at_k():
    # one vote each: WRONG is more confident, so the true answer is only 2nd -> pass@1 = 0, pass@2 = 1
    names, preds, ids, qs, labels = make([(WRONG, 3.0), (SOL, 1.0), (WRONG2, -2.0)])
    ev = ARCEvaluator(names)
    ev.update(preds, ids, qs, labels)
    r = ev.result()
    assert r["ARC/pass@1"] == 0.0 and r["ARC/pass@2"] == 1.0 and r["ARC/pass@5"] == 1.0


def test_pass_at_k_over_several_puzzles():
    ev = ARCEvaluator(["<blank>"])
    for base, votes in [("a", [(SOL, 0.0)]), ("b", [(WRONG, 2.0), (SOL, 0.0)]), ("c", [(WRONG, 0.0), (WRONG2, 0.0)])]:
        names, preds, ids, qs, labels = make(votes, base)
        offset = len(ev.names) - 1
        ev.names.extend(names[1:])
        ev.update(preds, ids + offset, qs, labels)
    r = ev.result()
    assert r["ARC/pass@1"] == pytest.approx(1 / 3)
    assert r["ARC/pass@2"] == pytest.approx(2 / 3)
    assert r["ARC/pass@1000"] == pytest.approx(2 / 3)


def test_rank_and_pass_at_k_functions():
    a, b = Candidate(((1,),), votes=2, q_sum=0.2), Candidate(((2,),), votes=2, q_sum=1.8)
    c = Candidate(((3,),), votes=3, q_sum=0.0)
    assert [x.grid for x in rank({1: a, 2: b, 3: c})] == [((3,),), ((2,),), ((1,),)]
    assert pass_at_k([c, b, a], np.array([[1]]), ks=(1, 2, 3)) == {1: False, 2: False, 3: True}


def test_submission_format(tmp_path):
    names, preds, ids, qs, labels = make([(SOL, 0.0), (SOL, 0.0), (WRONG, 4.0)])
    ev = ARCEvaluator(names)
    ev.update(preds, ids, qs, labels)
    path = ev.write_submission(tmp_path / "evaluator_ARC_step_1")
    sub = json.loads(path.read_text())
    assert list(sub) == ["test00000"]
    assert sub["test00000"] == [{"attempt_1": SOL.tolist(), "attempt_2": WRONG.tolist()}]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_single_candidate_repeats_attempt():
    names, preds, ids, qs, labels = make([(SOL, 0.0)])
    ev = ARCEvaluator(names)
    ev.update(preds, ids, qs, labels)
    assert ev.submission()["test00000"][0]["attempt_2"] == SOL.tolist()


def test_result_needs_labels():
    names, preds, ids, qs, _ = make([(SOL, 0.0)])
    ev = ARCEvaluator(names)
    ev.update(preds, ids, qs)
    with pytest.raises(ValueError, match="labels"):
        ev.result()


def test_wilson_interval_known_values():
    from course_lib.core.stats import fmt_rate, rate, wilson
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(6, 6)[1] == pytest.approx(1.0) and wilson(6, 6)[0] == pytest.approx(0.6097, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)  # no data: every rate is possible
    assert rate(3, 4) == {"rate": 0.75, "k": 3, "n": 4, "ci95": [0.3006, 0.9544]}
    assert fmt_rate(rate(0, 0)).startswith("n/a")
