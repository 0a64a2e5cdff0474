"""A student release of the course: every notebook without its solutions. `python -m course_lib.course.release --out DIR`.

For instructors (`make release` writes build/student/). Each copy:
- drops the cells tagged `solution` (a markdown cell tagged `solution` loses only its
  <details><summary>Solution</summary> block and keeps the rest of its prose);
- clears the outputs of the cells tagged `exercise` and `check` (the instructor copy shows the
  stub's "not yet"); every other output stays, so the notebook reads well before it is run;
- starts with a header cell naming the release, and records the release and the chapter in the
  notebook metadata (the grader uses it to find the course's own checks).

The tags come from the exercise convention in course_lib/course/exercises.py. `--tag-notebooks` derives
them and writes them into the notebooks (metadata only: outputs and nbval are untouched); it is
idempotent and stops with a list of every cell that breaks the convention. The release refuses
notebooks whose stored tags differ from the derived ones, so a stale tag cannot leak a solution.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

from course_lib.core.files import atomic_write_text
from course_lib.core.paths import NOTEBOOKS, REPO_ROOT, display_path
from course_lib.course.exercises import DETAILS_SOLUTION, ConventionError, apply_tags, detect, source, tagged

META_KEY = "inside_inference"


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.course.release", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to process (default: every notebooks/NN_*.ipynb)")
    ap.add_argument("--out", type=Path, help="folder for the student copies (make release uses build/student)")
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
        release = args.name or release_id()
        copies = [(p, student_copy(read_nb(p), p.stem, release)) for p in paths]  # all checked before writing
    except ConventionError as exc:
        print(f"exercise convention broken (see course_lib/course/exercises.py):\n{exc}", file=sys.stderr)
        return 1
    for path, nb in copies:
        write_nb(args.out / path.name, nb)
    print(f"student release {release!r}: {len(copies)} notebooks in {display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
