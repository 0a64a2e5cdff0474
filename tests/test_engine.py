"""Seed 002's engine: generate() then infer() fails with a phase flag; each fix works; the engine check CLI.

Seed 002 is one of the course's source documents: notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from course_lib.core.paths import REPO_ROOT
from course_lib.labs.engine import Engine
from course_lib.labs.engine_check import main

PROMPT = torch.tensor([[11, 22, 33, 44]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    from course_lib.text.gpt import GPT
    return GPT({"vocab_size": 300, "n_embd": 32, "n_layer": 2, "n_head": 4, "block_size": 32, "dropout": 0.0}).eval()


def next_token(engine: Engine) -> int:
    return int(engine.infer(PROMPT, position_ids=torch.arange(4))[0].argmax())


def test_phase_flag_generate_then_infer_is_seed_002s_dims_error(model):
    engine = Engine(model, design="phase-flag", max_len=16)
    assert torch.equal(engine.generate(PROMPT, 6), model.generate(PROMPT, 6, temperature=0))
    assert engine.phase == "increment"
    with pytest.raises(Exception, match=r"ids.size\(\)\[1\] == 1"):  # the decode graph expects one token
        next_token(engine)


def test_phase_flag_fixes_clear_cache_and_run_order(model):
    expected = int(model(PROMPT)[0, -1].argmax())
    engine = Engine(model, design="phase-flag", max_len=16)
    assert next_token(engine) == expected                  # infer first (seed 002's adopted order)
    engine.clear_cache()
    assert torch.equal(engine.generate(PROMPT, 6), model.generate(PROMPT, 6, temperature=0))
    engine.clear_cache()                                   # clear_cache() resets the phase
    assert next_token(engine) == expected


def test_inputs_design_works_in_every_order_without_clearing(model):
    expected = int(model(PROMPT)[0, -1].argmax())
    reference = model.generate(PROMPT, 6, temperature=0)
    engine = Engine(model, design="inputs", max_len=16)
    for _ in range(2):
        assert torch.equal(engine.generate(PROMPT, 6), reference)
        assert next_token(engine) == expected
        assert next_token(engine) == expected


@pytest.mark.parametrize("mode", ["infer", "generate", "both"])
def test_engine_check_passes_in_every_mode(mode, capsys):
    assert main(["--test_mode", mode, "--max_new_tokens", "6"]) == 0
    out = capsys.readouterr().out
    if mode == "both":
        for line in ("[infer → generate] infer: ✓ passed", "[infer → generate] generate: ✓ passed",
                     "[generate → infer] generate: ✓ passed", "[generate → infer] infer: ✓ passed"):
            assert line in out
    else:
        assert f"{mode}: ✓ passed" in out


def test_engine_check_both_orders_pass_without_clearing_with_the_inputs_design(capsys):
    assert main(["--test_mode", "both", "--max_new_tokens", "6", "--no_clear_cache"]) == 0
    assert capsys.readouterr().out.count("✓ passed") == 4


def test_engine_check_reproduces_seed_002_and_exits_1_with_the_reason(capsys):
    assert main(["--test_mode", "both", "--max_new_tokens", "6", "--design", "phase-flag", "--no_clear_cache"]) == 1
    out, err = capsys.readouterr()
    assert "[generate → infer] infer: ✗ failed" in out and "[infer → generate] infer: ✓ passed" in out
    assert "error: infer failed in order generate → infer" in err and "ids.size()[1] == 1" in err


def test_engine_check_phase_flag_passes_with_clear_cache(capsys):
    assert main(["--test_mode", "both", "--max_new_tokens", "6", "--design", "phase-flag"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--test_mode", "decode"], "invalid choice: 'decode'"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["--prompt", ""], "--prompt must not be empty"),
    (["--max_new_tokens", "600"], "must be <= block_size 512"),
    (["--checkpoint", "nope.pt"], "--checkpoint"),
])
def test_engine_check_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("module", ["course_lib.labs.engine_check", "course_lib.engine_check"])
def test_engine_check_help_from_the_command_line(module):
    """Both the module's own path and the command the course design publishes run the same CLI."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       env=env, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0 and "--test_mode {infer,generate,both}" in r.stdout
