"""Repository-relative locations, so notebooks and papermill work from any working directory."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO_ROOT / "checkpoints"
ASSETS = REPO_ROOT / "assets"
NOTEBOOKS = REPO_ROOT / "notebooks"
MANIFEST = CHECKPOINTS / "MANIFEST.json"
# Everything a run produces goes under runs/ (gitignored), never into checkpoints/.
RUNS = REPO_ROOT / "runs"

TEXT_MODEL = CHECKPOINTS / "text_gpt.pt"


def display_path(path: str | Path) -> str:
    """A path as a student should see it: relative to the repo when inside it, never a machine path."""
    p = Path(path).resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return p.name if p.is_absolute() else str(path)
