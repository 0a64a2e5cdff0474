"""Safe outputs: atomic writes leave a whole file or none, numbered run folders are claimed once."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from course_lib.core.files import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_text, claim_numbered_folder
from course_lib.motion import inference_batch


def test_atomic_writes_round_trip_and_leave_no_temporary_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "农夫山泉\n")  # parent folders are created
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "农夫山泉\n"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert not list(tmp_path.rglob(".*"))


def test_atomic_write_uses_the_umask_not_private_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        mode = stat.S_IMODE(atomic_write_text(tmp_path / "x.txt", "x").stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "keep.txt", "old")

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old" and not list(tmp_path.glob(".*"))


def test_refusing_to_overwrite_names_the_file(tmp_path):
    p = atomic_write_text(tmp_path / "once.txt", "1")
    with pytest.raises(FileExistsError, match="once.txt exists; refusing to overwrite"):
        atomic_write_text(p, "2", overwrite=False)
    assert p.read_text() == "1"


def test_equal_objects_give_equal_checkpoint_bytes(tmp_path):
    obj = {"w": torch.arange(6.0)}
    a, b = atomic_torch_save(obj, tmp_path / "a.pt"), atomic_torch_save(obj, tmp_path / "b.pt")
    assert a.read_bytes() == b.read_bytes()  # the archive is not named after the temporary file


def test_numbered_folders_continue_after_the_largest(tmp_path):
    assert [claim_numbered_folder(tmp_path).name for _ in range(2)] == ["0", "1"]
    (tmp_path / "7").mkdir()
    (tmp_path / "notes").mkdir()
    assert claim_numbered_folder(tmp_path).name == "8"
    runs = tmp_path / "runs"
    assert claim_numbered_folder(runs, prefix="run-", width=3, first=1).name == "run-001"
    (runs / "run-041").mkdir()
    assert claim_numbered_folder(runs, prefix="run-", width=3, first=1).name == "run-042"


def _claim_within(seconds: float, *args, **kwargs) -> Path:
    """claim_numbered_folder in a thread, so a regression to an endless loop fails instead of hanging."""
    result: list[Path] = []
    worker = threading.Thread(target=lambda: result.append(claim_numbered_folder(*args, **kwargs)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"claim_numbered_folder did not return within {seconds} s"
    return result[0]


def test_a_file_with_the_next_number_is_skipped_not_retried_forever(tmp_path):
    """Issue 10: claim_folder looped forever when a plain file held the next number."""
    (tmp_path / "3").mkdir()
    (tmp_path / "4").write_text("not a folder")
    assert _claim_within(10, tmp_path).name == "5"
    assert inference_batch.claim_folder(tmp_path).name == "6"  # the motion CLI claims through the same helper
    (tmp_path / "run-002").write_text("")
    assert claim_numbered_folder(tmp_path, prefix="run-", width=3, first=1).name == "run-003"


def test_a_name_taken_meanwhile_moves_on_to_the_next_number(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):  # another run claims "0" between the scan and our mkdir
        if self.name == "0" and not self.exists():
            real_mkdir(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert claim_numbered_folder(tmp_path).name == "1"
