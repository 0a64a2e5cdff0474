"""Device choice (cuda > mps > cpu, clear errors for unavailable devices) and seeding."""

import random

import numpy as np
import pytest
import torch

from course_lib.core.device import pick_device, seed_everything


def test_auto_picks_available_device(capsys):
    d = pick_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert d.type == expected
    assert capsys.readouterr().out.startswith(f"Using device: {expected}")
    assert pick_device("cpu", verbose=False) == torch.device("cpu")


def test_bad_device_names():
    with pytest.raises(ValueError, match="device must be one of"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="use device='auto' or 'cpu'"):
            pick_device("cuda")


def test_seed_everything_repeats():
    g = seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    g = seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    assert a == b
    with pytest.raises(ValueError):
        seed_everything(-1)
