"""The shipped ACT checkpoint: layout, manifest hash, and that it still solves unseen puzzles."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.act.build_dataset import build
from course_lib.act.checkpoint import SHIPPED, load_reasoner
from course_lib.act.data import load_split
from course_lib.act.evaluate import evaluate_set
from course_lib.checkpoints import read_manifest, verify_checkpoint


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.exists():
        pytest.fail(f"shipped ACT checkpoint missing: {SHIPPED.name}; run `python -m course_lib.train.act`")
    return load_reasoner(SHIPPED)


def test_layout_and_manifest(shipped):
    assert (SHIPPED.parent / "all_config.json").exists()
    assert json.loads((SHIPPED.parent / "all_config.json").read_text()) == shipped.config
    verify_checkpoint(SHIPPED)
    entry = read_manifest()["act/" + SHIPPED.name]
    assert entry["metrics"]["unseen_seed_exact_accuracy_forced"] >= 0.9
    assert SHIPPED.stat().st_size < 2_000_000
    sd = torch.load(SHIPPED, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())


def test_solves_fresh_unseen_puzzles(shipped, tmp_path):
    # seed 4242: used neither for training nor for the recorded metrics
    pset = load_split(build(tmp_path / "d", seed=4242, num_train=0, num_test=30), "test")
    forced = evaluate_set(shipped, pset)
    dynamic = evaluate_set(shipped, pset, halting="dynamic")
    assert forced["steps"] == shipped.config["halt_max_steps"]
    assert forced["exact_accuracy"] >= 0.85
    assert dynamic["steps"] < 0.7 * forced["steps"]
