"""Shared fixtures: one set of small random models for fast tests, and the shipped model.

`make_gpt(seed=0, **h_params)` and `make_motion_gpt(seed=0, nb_code=16, **config)` build seeded
models in eval mode from one base config each, overridden per test (e.g. a vocabulary as large as
cl100k_base's, a short block_size to cross the context limit). A missing shipped checkpoint fails
the test that needs it with the command that rebuilds it (one rule for every shipped model).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from course_lib.core.paths import TEXT_MODEL, display_path
from course_lib.motion.gpt import Config, MotionGPT
from course_lib.text.gpt import GPT, load_gpt

TINY = {"vocab_size": 300, "n_embd": 32, "n_layer": 2, "n_head": 4, "block_size": 32, "dropout": 0.1}


def _make_gpt(seed: int = 0, **h_params) -> GPT:
    torch.manual_seed(seed)
    return GPT({**TINY, **h_params}).eval()


def _make_motion_gpt(seed: int = 0, nb_code: int = 16, **config) -> MotionGPT:
    torch.manual_seed(seed)
    cfg = Config.from_name("course-tiny", **{"vocab_size": nb_code + 2, "clip_dim": 8, "block_size": 9, "dropout": 0.0, **config})
    return MotionGPT(cfg).eval()


@pytest.fixture(scope="session")
def make_gpt() -> Callable[..., GPT]:
    """A factory: make_gpt(seed=0, **h_params) -> a seeded tiny text GPT (TINY overridden), in eval mode."""
    return _make_gpt


@pytest.fixture(scope="session")
def make_motion_gpt() -> Callable[..., MotionGPT]:
    """A factory: make_motion_gpt(seed=0, nb_code=16, **config) -> a seeded course-tiny MotionGPT, in eval mode."""
    return _make_motion_gpt


@pytest.fixture
def tiny_gpt() -> GPT:
    """The default tiny text GPT (TINY, seed 0; dropout 0.1 so train() differs from eval())."""
    return _make_gpt()


@pytest.fixture(scope="session")
def shipped_gpt() -> GPT:
    if not TEXT_MODEL.exists():
        pytest.fail(f"shipped model missing: {display_path(TEXT_MODEL)}; run `make checkpoints`")
    return load_gpt()
