"""Issue 21's library pieces behind chapters 02, 02b and 03: the difference test, the beam tree, the timed step variants."""

from __future__ import annotations

import pytest
import torch

from course_lib.core.stats import rate, wilson
from course_lib.decoding.beam import beam_search
from course_lib.decoding.quality import difference, verdict
from course_lib.decoding.speed import batch_comparison, step_comparison
from course_lib.text.plots import beam_tree
from course_lib.text.tokenizer import get_encoding


def test_difference_is_newcombes_interval():
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80 -> difference 0.2000, 95% CI 0.0524 to 0.3339
    d = difference(rate(48, 80), rate(56, 70))
    assert d["diff"] == pytest.approx(0.2, abs=1e-4)
    assert d["ci95"] == pytest.approx([0.0524, 0.3339], abs=2e-4)


def test_overlapping_intervals_can_still_differ():
    # the old rule ("intervals overlap -> cannot tell apart") misses this difference
    a, b = rate(150, 300), rate(183, 300)
    hi_a, lo_b = wilson(150, 300)[1], wilson(183, 300)[0]
    assert lo_b < hi_a  # the two intervals overlap
    assert verdict(a, b).endswith(": higher") and difference(a, b)["ci95"][0] > 0
    assert "no difference shown" in verdict(rate(50, 100), rate(52, 100))
    assert verdict(rate(90, 100), rate(60, 100)).endswith(": lower")
    with pytest.raises(ValueError, match="at least one sample"):
        difference(rate(0, 0), rate(1, 2))


def test_beam_tree_follows_beam_search(make_gpt):
    enc = get_encoding()
    model = make_gpt(dropout=0.0, vocab_size=enc.n_vocab)  # real token ids for the labels
    for beams in (2, 3):
        tree = beam_tree(model, enc, "Alpine Spring", num_beams=beams, steps=3)
        assert [len(step) for step in tree] == [2 * beams] * 3
        assert all(sum(c["kept"] for c in step) == beams for step in tree)
        best = next(c for c in tree[-1] if c["kept"])
        res = beam_search(model, torch.tensor([enc.encode("Alpine Spring")]), 3, beams)
        assert best["sum_logprob"] == pytest.approx(res.sum_logprobs[0], abs=1e-5)


def test_step_and_batch_comparisons_are_interleaved(make_gpt):
    model = make_gpt(dropout=0.0)
    c = step_comparison(model, 8, rounds=3, parts=("last head", "cached"), extra={"noop": lambda: None})
    assert c.names == ["last head", "cached", "noop"] and c.rounds == 3
    assert len(set(c.order[:3])) == 3  # every round runs every variant once
    b = batch_comparison(model, [1, 2], 6, rounds=2)
    assert b.names == ["batch 1", "batch 2"] and b.rounds == 2
    with pytest.raises(ValueError, match="unknown part"):
        step_comparison(model, 8, parts=("nope", "cached"))


def test_02b_exercise_switches_off_every_stop_helper():
    """Exercise 1 of 02b asks for a stop matcher: while the check runs, no public helper of
    `decoding.stopping` that finds stops may answer for the student (a new helper must join the list)."""
    import inspect
    import json

    import course_lib.decoding.stopping as stopping
    from course_lib.core.paths import REPO_ROOT

    nb = json.loads((REPO_ROOT / "notebooks" / "02b_stopping_scoring_beam_search.ipynb").read_text(encoding="utf-8"))
    cell = next("".join(c["source"]) for c in nb["cells"] if "def _library_off" in "".join(c["source"]))
    not_matchers = {"check_stopping_args", "stop_encoding", "default_pad_id"}  # arguments and defaults: no stops found
    helpers = [n for n, o in vars(stopping).items() if not n.startswith("_") and n not in not_matchers
               and (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == stopping.__name__]
    assert "completes_stop" in helpers
    assert [n for n in helpers if f'(_stopping, "{n}"' not in cell] == []
