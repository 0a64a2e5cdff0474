"""Dynamic halting's default threshold (issue 20): chosen on a validation split, stored beside the checkpoint,
measured on held-out classes, used by act.inference --halting dynamic."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.act import calibrate as C
from course_lib.act.analysis import Trace
from course_lib.core.checkpoints import CheckpointError, read_manifest, sha256_file
from course_lib.core.paths import CHECKPOINTS

HALTING = CHECKPOINTS / "act" / C.HALTING_NAME


def fake_trace(q_halt: list[list[float]], correct: list[list[bool]]) -> Trace:
    """A trace of S steps x N rows with the given q_halt logits and per-step correctness."""
    q = torch.tensor(q_halt)
    c = torch.tensor(correct)
    S, N = q.shape
    return Trace(torch.zeros(S, N, 1, dtype=torch.long), q, torch.full((S, N), -5.0), c, c.float())


def test_rule_takes_the_lowest_threshold_that_costs_nothing_there_and_above():
    logit = lambda p: float(torch.logit(torch.tensor(p)))  # noqa: E731
    # row 0: confident (0.95) at step 1 but wrong there, right from step 2; row 1: right throughout
    tr = fake_trace([[logit(0.95), logit(0.6)], [logit(0.99), logit(0.99)]], [[False, True], [True, True]])
    t, rows = C.choose_threshold(tr, grid=(0.5, 0.9, 0.97))
    assert t == 0.97  # 0.5 and 0.9 stop row 0 on its wrong first answer
    assert [r["cost_points"] for r in rows] == [50.0, 50.0, 0.0]


def test_rule_skips_a_lucky_tie_between_losing_thresholds():
    logit = lambda p: float(torch.logit(torch.tensor(p)))  # noqa: E731
    # row 0 wrong at step 1 (p 0.7); row 1 wrong at step 1 (p 0.9); both right at step 2 (p 0.99)
    tr = fake_trace([[logit(0.7), logit(0.9)], [logit(0.99), logit(0.99)]], [[False, False], [True, True]])
    t, _ = C.choose_threshold(tr, grid=(0.5, 0.8, 0.95))
    assert t == 0.95


def test_shipped_halting_record_is_in_the_manifest_and_consistent():
    record = json.loads(HALTING.read_text())
    entry = read_manifest()["act/halting.json"]
    assert entry["sha256"] == sha256_file(HALTING) and entry["recipe"] == C.COMMAND
    assert entry["metrics"]["threshold"] == record["threshold"]
    v, h = record["validation"], record["heldout"]
    # the stored choice follows the rule on the stored validation grid
    ok = [r["cost_points"] <= 0 for r in v["grid"]]
    assert record["threshold"] == next(r["threshold"] for i, r in enumerate(v["grid"]) if all(ok[i:]))
    assert v["seed"] != h["seed"] and v["shares_classes_with_training"] == 0
    assert h["shares_classes_with_training"] == 0 and h["shares_classes_with_validation"] == 0
    assert v["puzzle_classes"] + h["puzzle_classes"] <= 121  # the unseen classes, split in two
    # the goal: at most one point of exact accuracy lost against forced halting on the held-out classes
    assert h["cost_points"] <= 1.0
    lo, hi = h["dynamic"]["exact_accuracy_ci95"]
    assert lo <= h["dynamic"]["exact_accuracy"] <= hi


def test_read_threshold_default_fallback_and_damaged_files(tmp_path):
    assert C.read_threshold(CHECKPOINTS / "act" / "step_8000") == (json.loads(HALTING.read_text())["threshold"], HALTING)
    assert C.read_threshold(tmp_path / "step_1") == (C.FALLBACK_THRESHOLD, None)
    for text in ("{", '{"threshold": NaN}', '{"threshold": 1.5}', '{"threshold": true}', '{"t": 0.5}', "[1]"):
        (tmp_path / C.HALTING_NAME).write_text(text)
        with pytest.raises(CheckpointError, match="halting.json"):
            C.read_threshold(tmp_path / "step_1")


def test_validation_and_heldout_sets_share_no_class(tmp_path, monkeypatch):
    """The split itself, rebuilt small: validation classes are outside training, the held-out set outside both."""
    from course_lib.act.build_dataset import build

    train = build(tmp_path / "train", seed=5, num_train=400, num_test=1)
    val = build(tmp_path / "val", seed=6, num_train=0, num_test=30, exclude_train=[train], unseen_classes=True)
    held = build(tmp_path / "held", seed=7, num_train=0, num_test=30, exclude_train=[train], unseen_classes=True,
                 exclude_test=[val])
    assert C.check_disjoint(val, (train, "train")) == 30
    assert C.check_disjoint(held, (train, "train"), (val, "test")) == 30
    same = build(tmp_path / "same", seed=6, num_train=0, num_test=30, exclude_train=[train], unseen_classes=True)
    with pytest.raises(ValueError, match="shares 30 puzzle classes"):
        C.check_disjoint(same, (val, "test"))


def test_inference_dynamic_defaults_to_the_calibrated_threshold(tmp_path, capsys):
    from course_lib.act.build_dataset import build
    from course_lib.act.inference import main

    data = build(tmp_path / "ds", seed=9, num_train=0, num_test=3)
    ckpt = str(CHECKPOINTS / "act" / "step_8000")
    assert main(["--checkpoint", ckpt, "--data_paths", str(data), "--halting", "dynamic", "--device", "cpu",
                 "--output_dir", str(tmp_path / "o1")]) == 0
    t = json.loads(HALTING.read_text())["threshold"]
    assert f"threshold {t} (calibrated, checkpoints/act/halting.json)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o1" / "run.json").read_text())["threshold"] == t  # the run records what it used
    assert main(["--checkpoint", ckpt, "--data_paths", str(data), "--halting", "dynamic", "--threshold", "0.3",
                 "--device", "cpu", "--output_dir", str(tmp_path / "o2")]) == 0
    assert "threshold 0.3 (given)" in capsys.readouterr().out


def test_help_says_how_the_default_was_chosen(capsys):
    from course_lib.act.inference import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "validation split" in text and "calibrate" in text and "halting.json" in text
