"""Seed 000's inference CLI: console output, saved files, and clear exit-2 errors on bad input.

Seed 000 is one of the course's source documents: notebooks/SOURCES.md#seed-000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from course_lib.act.build_dataset import build
from course_lib.act.inference import main
from course_lib.act.model import ACTReasoner
from course_lib.core.checkpoints import write_json_atomic
from course_lib.core.paths import REPO_ROOT

CFG = {"hidden_size": 32, "num_heads": 4, "halt_max_steps": 3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("act_cli")
    torch.manual_seed(0)
    model = ACTReasoner(CFG)
    ckpt_dir = root / "run"
    ckpt_dir.mkdir()
    torch.save(model.state_dict(), ckpt_dir / "step_7")
    write_json_atomic(model.config, ckpt_dir / "all_config.json")
    data = build(root / "data", seed=5, num_train=0, num_test=12)
    return root, ckpt_dir / "step_7", data


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "course_lib.act.inference", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)


def test_cli_run_prints_seed_output_and_saves(setup):
    root, ckpt, data = setup
    out = root / "out"
    r = cli("--checkpoint", str(ckpt), "--data_paths", str(data), "--batch_size", "20", "--device", "cpu",
            "--save_outputs", "preds", "inputs", "puzzle_identifiers", "q_halt_logits", "--output_dir", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for expected in ("Inference configuration", "Processing batch 1: all", "Processing batch 3: all",
                     "  Completed inference in 3 steps", "Running evaluator 1/1: ARC", "all:", "ARC/pass@1000: "):
        assert any(line.startswith(expected) for line in lines), expected
    for name in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss"):
        assert any(line.startswith(f"  {name}: ") for line in lines), name
    assert "  steps: 3.000000" in lines
    preds = torch.load(out / "step_7_all_preds.0", weights_only=True)
    assert set(preds) == {"preds", "inputs", "puzzle_identifiers", "q_halt_logits"}
    assert preds["preds"].shape == (48, 25) and preds["q_halt_logits"].shape == (48,)
    sub = json.loads((out / "evaluator_ARC_step_7" / "submission.json").read_text())
    assert len(sub) == 12 and set(sub["test00000"][0]) == {"attempt_1", "attempt_2"}
    assert not list(out.glob("**/.*tmp"))


def test_cli_dynamic_and_max_batches(setup, capsys):
    root, ckpt, data = setup
    out = root / "out_dyn"
    assert main(["--checkpoint", str(ckpt), "--data_paths", str(data), "--halting", "dynamic", "--max_batches", "1",
                 "--batch_size", "16", "--device", "cpu", "--output_dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("Processing batch") == 1 and "Halting: dynamic" in text
    assert torch.load(out / "step_7_all_preds.0", weights_only=True)["preds"].shape == (16, 25)


@pytest.mark.parametrize("case", ["missing", "folder", "corrupt"])
def test_bad_checkpoint_exits_2_and_writes_nothing(setup, case, capsys):
    root, ckpt, data = setup
    bad = {"missing": root / "nope" / "step_1", "folder": ckpt.parent, "corrupt": root / "corrupt" / "step_3"}[case]
    if case == "corrupt":
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
        write_json_atomic(CFG, bad.parent / "all_config.json")
    out = root / f"never_{case}"
    args = ["--checkpoint", str(bad), "--data_paths", str(data), "--output_dir", str(out), "--device", "cpu"]
    if case == "missing":  # one real subprocess: the exit code a shell sees
        r = cli(*args)
        code, err = r.returncode, r.stderr
    else:
        code, err = main(args), capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --checkpoint")
    assert {"missing": "not found", "folder": "is a folder", "corrupt": "corrupted"}[case] in err
    assert not out.exists()


def test_missing_data_path_exits_2(setup, capsys):
    root, ckpt, _ = setup
    out = root / "never_data"
    assert main(["--checkpoint", str(ckpt), "--data_paths", str(root / "no_data"), "--output_dir", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "dataset not found" in err and "build_dataset" in err
    assert not out.exists()


def test_unknown_save_key_exits_2(setup):
    root, ckpt, data = setup
    r = cli("--checkpoint", str(ckpt), "--data_paths", str(data), "--save_outputs", "preds", "halting_state")
    assert r.returncode == 2
    assert "unknown --save_outputs key(s) ['halting_state']" in r.stderr


def test_existing_output_dir_is_not_overwritten(setup, capsys):
    root, ckpt, data = setup
    used = root / "used"
    used.mkdir()
    (used / "keep.txt").write_text("earlier run")
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(ckpt), "--data_paths", str(data), "--output_dir", str(used)])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
