"""Paths in messages: repo-relative inside the repo, the full path outside it (issue 8)."""

from __future__ import annotations

import os

import pytest

from course_lib.core.checkpoints import CheckpointError, load_checkpoint
from course_lib.core.paths import REPO_ROOT, TEXT_MODEL, display_path


def test_inside_the_repo_paths_are_repo_relative():
    assert display_path(TEXT_MODEL) == "checkpoints/text_gpt.pt"
    assert display_path(REPO_ROOT / "notebooks" / ".." / "assets") == "assets"


def test_outside_the_repo_the_full_path_is_shown(tmp_path):
    outside = tmp_path / "data" / "x" / "model.pt"
    assert display_path(outside) == str(outside)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(outside)
    assert f"checkpoint not found: {outside}." in str(err.value)  # not the bare "model.pt"


def test_relative_paths_outside_the_repo_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert display_path("model.pt") == os.path.join(str(tmp_path), "model.pt")
