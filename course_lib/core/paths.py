"""Repository-relative locations, so notebooks and papermill work from any working directory."""

from __future__ import annotations

import errno
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO_ROOT / "checkpoints"
ASSETS = REPO_ROOT / "assets"
NOTEBOOKS = REPO_ROOT / "notebooks"
MANIFEST = CHECKPOINTS / "MANIFEST.json"
# Everything a run produces goes under runs/ (gitignored), never into checkpoints/.
RUNS = REPO_ROOT / "runs"

TEXT_MODEL = CHECKPOINTS / "text_gpt.pt"
DRAFT_MODEL = CHECKPOINTS / "draft_gpt.pt"  # the speculative-decoding draft (chapter 08)


def display_path(path: str | Path) -> str:
    """A path as a message should show it: relative to the repo when inside it (no machine paths in
    notebook outputs), the full absolute path when outside (a bare file name would send a reader
    looking in the wrong folder: "model.pt" for /data/x/model.pt)."""
    p = Path(path).expanduser()
    try:
        return p.resolve().relative_to(REPO_ROOT).as_posix()
    except (ValueError, RuntimeError, OSError):  # outside the repo, or a symlink loop that cannot be resolved
        try:
            return Path(os.path.abspath(p)).relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return os.path.abspath(p)  # normalised, but symlinks kept as the caller wrote them


def link_problem(path: str | Path) -> str | None:
    """"a symlink loop" or "a broken link" when `path` (or a folder above it) is one, else None.

    Path.exists() answers False for both, so a message would otherwise say "not found" and send the
    reader looking for a file that is there, behind a link that goes nowhere."""
    p = Path(path).expanduser()
    try:
        p.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "a symlink loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        for q in [p, *p.parents]:
            if q.is_symlink() and not q.exists():
                return "a broken link"
    return None
