"""A student release of the course: every notebook without its solutions. `python -m course_lib.course.release --out DIR`.

For instructors (`make release` writes build/student/). Each copy:
- drops the cells tagged `solution` (a markdown cell tagged `solution` loses only its
  <details><summary>Solution</summary> block and keeps the rest of its prose);
- clears the outputs of the cells tagged `exercise` and `check` (the instructor copy shows the
  stub's "not yet"); every other output stays, so the notebook reads well before it is run;
- starts with a header cell naming the release, and records the release and the chapter in the
  notebook metadata (the grader uses it to find the course's own checks).

Where it writes: only to a folder outside the repository or under build/ (never notebooks/ or
anywhere else in the source tree), and only to a new folder, an empty one, or one it made before
(it holds the marker file `.course-release`; a re-release replaces that folder). The copies are
built in a temporary sibling folder and renamed into place, so a full disk, a read-only folder or
Ctrl-C leaves the previous release (or nothing) and never half a release: one line, exit 2 (130
for Ctrl-C).

The tags come from the exercise convention in course_lib/course/exercises.py. `--tag-notebooks` derives
them and writes them into the notebooks (metadata only: outputs and nbval are untouched); it is
idempotent and stops with a list of every cell that breaks the convention. The release refuses
notebooks whose stored tags differ from the derived ones, so a stale tag cannot leak a solution.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course_lib.core.files import atomic_write_text
from course_lib.core.paths import NOTEBOOKS, REPO_ROOT, display_path
from course_lib.course.exercises import DETAILS_SOLUTION, ConventionError, apply_tags, detect, source, tagged

META_KEY = "inside_inference"
MARKER = ".course-release"  # in every folder the release made; only such a folder (or an empty one) is replaced


class ReleaseError(ValueError):
    """The release cannot write where it was asked to (one line naming the path)."""


def course_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The chapters, in course order (02b after 02), exactly as run_course finds them."""
    from course_lib.course.run_course import notebooks
    return notebooks(folder)


def read_nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_nb(path: Path, nb: dict) -> None:
    """Write like Jupyter does (nbformat: indent 1, sorted keys), so re-tagging leaves a minimal diff."""
    import nbformat

    atomic_write_text(path, nbformat.writes(nbformat.from_dict(nb)) + "\n")


def tag_notebooks(paths: list[Path]) -> list[Path]:
    """Derive and store the exercise/check/solution tags; returns the notebooks that changed.

    Raises ConventionError listing the problems of every notebook (nothing is written then).
    """
    books, problems = [], []
    for path in paths:
        nb = read_nb(path)
        try:
            changed = apply_tags(nb, path.name)
        except ConventionError as exc:
            problems.append(str(exc))
            continue
        books.append((path, nb, changed))
    if problems:
        raise ConventionError("\n".join(problems))
    for path, nb, changed in books:
        if changed:
            write_nb(path, nb)
    return [path for path, _, changed in books if changed]


def stale_tags(nb: dict, label: str) -> list[str]:
    """Cells whose stored exercise tags differ from the convention's (empty list = up to date)."""
    want, _ = detect(nb["cells"], label)
    out = []
    for i, cell in enumerate(nb["cells"]):
        have = [t for t in ("exercise", "check", "solution") if tagged(cell, t)]
        if have != [t for t in ("exercise", "check", "solution") if t in want.get(i, [])]:
            out.append(f"{label}: cell {i} is tagged {have}, the convention says {want.get(i, [])}")
    return out


def release_id() -> str:
    """The commit the release is cut from (with -dirty for uncommitted changes), or 'unversioned'."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "unversioned"
    except (OSError, subprocess.SubprocessError):
        return "unversioned"


def header_cell(stem: str, release: str) -> dict:
    text = (f"> **Student release `{release}`** of *Inside Inference*, chapter `{stem}`.\n"
            "> The solutions are removed from this copy, and the outputs of the exercise cells are cleared.\n"
            "> Run the notebook top to bottom, replace the placeholders (`None`, `raise NotImplementedError`)\n"
            "> in the exercise cells, and re-run each check until it says ✅. Hand in this file under the same name.")
    return {"cell_type": "markdown", "id": "release-header", "metadata": {"tags": ["release-header"]}, "source": text}


def student_copy(nb: dict, stem: str, release: str) -> dict:
    """The student version of one notebook (see the module docstring). Raises ConventionError on stale tags."""
    stale = stale_tags(nb, stem)
    if stale:
        raise ConventionError("\n".join(stale) + "\n(run: python -m course_lib.course.release --tag-notebooks)")
    out = copy.deepcopy(nb)
    cells = []
    for cell in out["cells"]:
        if tagged(cell, "solution"):
            if cell["cell_type"] != "markdown" or not DETAILS_SOLUTION.search(source(cell)):
                continue
            rest = re.sub(r"\n{3,}", "\n\n", DETAILS_SOLUTION.sub("", source(cell))).strip("\n")
            if not rest.strip():
                continue
            cell["source"] = rest
            cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if t != "solution"]  # only prose is left
            if not cell["metadata"]["tags"]:
                del cell["metadata"]["tags"]
        if cell["cell_type"] == "code" and (tagged(cell, "exercise") or tagged(cell, "check")):
            cell["outputs"] = []
            cell["execution_count"] = None
        cells.append(cell)
    out["cells"] = [header_cell(stem, release)] + cells
    out.setdefault("metadata", {})[META_KEY] = {"release": release, "notebook": stem}
    return out


def release_target(out: Path, sources: list[Path]) -> Path:
    """The folder the release may replace, resolved; ReleaseError (one line) where it may not write."""
    try:
        target = Path(os.path.abspath(out)).resolve()
        exists = target.exists()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ReleaseError(f"--out {out}: cannot resolve it ({exc}); pass another folder") from None
    repo = REPO_ROOT.resolve()
    if target.is_relative_to(repo) and not target.is_relative_to(repo / "build"):
        raise ReleaseError(f"--out {display_path(target)} is inside the course's source tree; the release writes only "
                           "under build/ or outside the repository (e.g. --out build/student)")
    for src in sources:
        if src.resolve().is_relative_to(target):
            raise ReleaseError(f"--out {display_path(target)} holds the source notebook {display_path(src)}; "
                               "the release would replace it; pass another folder")
    if exists:
        if not target.is_dir():
            raise ReleaseError(f"--out {display_path(target)} is a file, not a folder; pass a new or empty folder")
        names = [p.name for p in target.iterdir()]
        if names and MARKER not in names:
            raise ReleaseError(f"--out {display_path(target)} already holds files the release did not write (no {MARKER} "
                               "in it); pass a new or empty folder")
    return target


def _write_file(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_release(target: Path, copies: list[tuple[Path, dict]], release: str) -> None:
    """Write every copy into a temporary sibling of `target`, then rename it into place (all or nothing)."""
    import nbformat

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    old = None
    try:
        for path, nb in copies:
            _write_file(tmp / path.name, nbformat.writes(nbformat.from_dict(nb)) + "\n")
        _write_file(tmp / MARKER, json.dumps({"release": release, "notebooks": [p.name for p, _ in copies],
                                              "written_by": "python -m course_lib.course.release"}, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; a release is meant to be shared
        if target.exists() and any(target.iterdir()):  # our own earlier release: swap it out, then delete it
            old = target.parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(target, old)
        elif target.exists():
            os.rmdir(target)
        os.rename(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.rename(old, target)  # put the previous release back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.course.release", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to process (default: every notebooks/NN_*.ipynb)")
    ap.add_argument("--out", type=Path, help="folder for the student copies (make release uses build/student): new, empty, "
                    f"or an earlier release (holding {MARKER}); outside the repository or under build/")
    ap.add_argument("--name", help="release name shown in each header (default: git describe of this checkout)")
    ap.add_argument("--tag-notebooks", action="store_true",
                    help="derive the exercise/check/solution tags and write them into the notebooks (in place)")
    ap.add_argument("--check-tags", action="store_true", help="exit 1 if any notebook's stored tags are stale")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    modes = sum([args.out is not None, args.tag_notebooks, args.check_tags])
    if modes != 1:
        ap.error("give exactly one of --out DIR, --tag-notebooks or --check-tags")
    paths = args.notebooks or course_notebooks()
    missing = [p for p in paths if not p.is_file()]
    if missing:
        ap.error(f"notebook not found: {missing[0]}")
    if not paths:
        ap.error(f"no notebooks found in {display_path(NOTEBOOKS)}")
    try:
        if args.tag_notebooks:
            changed = tag_notebooks(paths)
            print(f"tagged {len(paths)} notebooks; {len(changed)} changed" +
                  "".join(f"\n  {display_path(p)}" for p in changed))
            return 0
        if args.check_tags:
            stale = [line for p in paths for line in stale_tags(read_nb(p), p.name)]
            print("\n".join(stale) if stale else f"tags up to date in {len(paths)} notebooks")
            return 1 if stale else 0
        target = release_target(args.out, paths)
        release = args.name or release_id()
        copies = [(p, student_copy(read_nb(p), p.stem, release)) for p in paths]  # all checked before writing
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 2
    except ConventionError as exc:
        print(f"exercise convention broken (see course_lib/course/exercises.py):\n{exc}", file=sys.stderr)
        return 1
    try:
        write_release(target, copies, release)
    except KeyboardInterrupt:
        print(f"release interrupted: nothing written to {display_path(target)} (an earlier release there is unchanged)",
              file=sys.stderr)
        return 130
    except OSError as exc:
        where = display_path(exc.filename) if exc.filename else display_path(target)
        print(f"release: cannot write {where}: {exc.strerror or exc}; nothing written to {display_path(target)} "
              "(an earlier release there is unchanged)", file=sys.stderr)
        return 2
    print(f"student release {release!r}: {len(copies)} notebooks in {display_path(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
