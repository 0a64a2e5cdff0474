"""Shared fixtures: small random models for fast tests, the shipped model when a test needs it."""

from __future__ import annotations

import pytest
import torch

from course_lib.gpt import GPT, load_gpt
from course_lib.paths import TEXT_MODEL

TINY = {"vocab_size": 300, "n_embd": 32, "n_layer": 2, "n_head": 4, "block_size": 32, "dropout": 0.1}


@pytest.fixture
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(dict(TINY)).eval()


@pytest.fixture(scope="session")
def shipped_gpt() -> GPT:
    if not TEXT_MODEL.exists():
        pytest.fail(f"shipped model missing: {TEXT_MODEL.name}; run `make checkpoints`")
    return load_gpt()
