"""Grade handed-in notebooks with papermill: `python -m course_lib.course.grade SUBMISSIONS... --out grades.csv`.

SUBMISSIONS are notebooks or folders of notebooks, laid out as <folder>/<student>/<notebook>.ipynb
(the student is the name of the folder holding the notebook). The chapter is read from the
release metadata (course_lib.course.release) or from the file name's number.

For each notebook the grader:
1. clears its outputs and appends the course's own checks, taken from the pristine instructor
   notebook (the imports, definitions and check calls of the cells tagged `check`; not the
   placeholders, which would erase the answers) after re-running the course's imports,
   so a student who edits or deletes a check, or redefines run_check, still gets the real check;
2. runs it with papermill in a fresh kernel, in a subprocess, in a scratch working folder, with
   a per-notebook timeout (the subprocess and its kernel are killed when it runs out); a cell
   that raises does not stop the run, so the checks still see every answer the student got right;
3. reads the verdicts from the structured outputs (course_lib.course.notebook.CHECK_MIME) of the
   appended cells only, and writes one CSV row per student and notebook: status, score, each
   exercise's verdict (correct / not yet / not run), runtime, and the first error.

It isolates runs from each other and from the grader, not from the machine: student code runs
as the instructor's user (see the README's "For instructors").
"""

from __future__ import annotations

import argparse
import ast
import copy
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.core.files import atomic_write_text
from course_lib.core.paths import NOTEBOOKS, REPO_ROOT, display_path
from course_lib.course.exercises import ConventionError, check_code, checker_functions, detect, import_lines, source, tagged
from course_lib.course.notebook import CHECK_MIME, RECORD_ENV
from course_lib.course.release import META_KEY, course_notebooks, stale_tags

GRADER_TAG = "course-grader"
STATUSES = ("ok", "error", "timeout", "failed", "unknown notebook")
FIXED_COLUMNS = ["student", "notebook", "status", "score", "out_of", "runtime_s", "error"]


@dataclass
class Course:
    """The pristine notebooks: the checks to re-run and the exercise names each notebook has."""
    books: dict[str, dict]            # stem -> notebook json
    names: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Course:
        books = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in course_notebooks(folder)}
        course = cls(books)
        stale = [line for stem, nb in books.items() for line in stale_tags(nb, stem)]
        if stale:  # the grader re-runs the cells tagged `check`: stale tags would run the wrong code
            raise ConventionError("\n".join(stale) + "\n(run: python -m course_lib.course.release --tag-notebooks)")
        for stem, nb in books.items():
            _, exercises = detect(nb["cells"], stem)
            course.names[stem] = [n for ex in exercises for n in ex.names]
        return course

    def identify(self, nb: dict, path: Path) -> str | None:
        """The chapter a submission belongs to: release metadata first, then the file name's NN_ prefix."""
        meta = nb.get("metadata", {}).get(META_KEY, {})
        stem = meta.get("notebook") if isinstance(meta, dict) else None
        if stem in self.books:
            return stem
        if path.stem in self.books:
            return path.stem
        number = re.match(r"(\d\d)(?:_|$)", path.stem)
        matches = [s for s in self.books if number and s.startswith(number.group(1) + "_")]
        return matches[0] if len(matches) == 1 else None

    def grading_cells(self, stem: str) -> list[dict]:
        """Cells appended to a submission: the course's imports again, then each check with its placeholders removed."""
        nb = self.books[stem]
        imports: list[str] = []
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and not tagged(cell, "solution"):
                imports += [line for line in import_lines(source(cell)) if line not in imports]
        head = "# course grader: the course's own imports and checks, re-run after the student's cells\n"
        # a placeholder the student deleted (or whose cell crashed) counts as unanswered, not as a broken check
        placeholders = sorted({n for ex in detect(nb["cells"], stem)[1] for n in ex.placeholders})
        cells = [head + "\n".join(imports + ["from course_lib.course.notebook import check_answer, run_check",
                                             f"for _name in {placeholders!r}:", "    globals().setdefault(_name, None)"])]
        checkers: set[str] = set()
        for cell in (c for c in nb["cells"] if c["cell_type"] == "code" and tagged(c, "check")):
            checkers |= checker_functions(ast.parse(source(cell)), checkers)
            cells.append(check_code(source(cell), checkers))
        return [{"cell_type": "code", "execution_count": None, "id": f"course-grader-{k}",
                 "metadata": {"tags": [GRADER_TAG]}, "outputs": [], "source": src} for k, src in enumerate(cells)]


def prepare(submission: dict, course: Course, stem: str) -> dict:
    """The notebook the grader runs: outputs cleared, any cells posing as grader cells dropped, checks appended."""
    nb = copy.deepcopy(submission)
    cells = []
    for cell in nb.get("cells", []):
        if tagged(cell, GRADER_TAG):
            continue
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    nb["cells"] = cells + course.grading_cells(stem)
    nb.setdefault("metadata", {})["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _first_line(cell: dict) -> str:
    line = next((s for s in source(cell).splitlines() if s.strip()), "")
    return line.strip()[:60]


def read_results(nb: dict) -> tuple[dict[str, str], str, str, int | None]:
    """(verdict per exercise name, first error in a student cell, first error in a grader cell, running cell).

    The running cell is the one a killed run was in: its index, -1 for the course's checks, None if none started.
    """
    verdicts: dict[str, str] = {}
    student_error = grader_error = ""
    running = None
    cells = [c for c in nb.get("cells", []) if not tagged(c, "papermill-error-cell-tag")]  # papermill's markers
    for i, cell in enumerate(cells):
        grader = tagged(cell, GRADER_TAG)
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
            running = -1 if grader else i
        for out in cell.get("outputs", []):
            if grader and CHECK_MIME in out.get("data", {}):
                record = out["data"][CHECK_MIME]
                verdicts[str(record.get("name"))] = "correct" if record.get("ok") is True else "not yet"
            if out.get("output_type") == "error":
                text = f"{out.get('ename')}: {str(out.get('evalue', '')).splitlines()[0] if out.get('evalue') else ''}"
                if grader and not grader_error:
                    grader_error = f"a course check could not run ({text})"
                elif not grader and not student_error:
                    student_error = f"cell {i} ({_first_line(cell)}): {text}"
    return verdicts, student_error, grader_error, running


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the worker and its kernel (jupyter starts kernels in their own session, so killpg would miss it)."""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing or the worker already gone
        children = []
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    proc.kill()
    proc.wait()


def grade_one(path: Path, student: str, course: Course, timeout: float) -> dict:
    """Run one submission and return its CSV row (never raises for anything the submission does)."""
    row: dict = {"student": student, "notebook": path.stem, "status": "failed", "score": 0, "out_of": "",
                 "runtime_s": 0.0, "error": ""}
    start = time.monotonic()
    try:
        submission = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(submission, dict) or not isinstance(submission.get("cells"), list) \
                or not all(isinstance(c, dict) and isinstance(c.get("metadata", {}), dict) for c in submission["cells"]):
            raise ValueError("no list of cells")
        if not isinstance(submission.get("metadata", {}), dict):
            raise ValueError("its metadata is not a mapping")
    except (OSError, ValueError) as exc:
        row["error"] = f"not a readable notebook ({exc})"
        return row
    stem = course.identify(submission, path)
    if stem is None:
        row.update(status="unknown notebook", error=f"{path.name} matches no course notebook (name it like the release's file)")
        return row
    names = course.names[stem]
    row.update(notebook=stem, out_of=len(names))
    scratch = Path(tempfile.mkdtemp(prefix="course-grade-"))
    try:
        src, dst = scratch / "submission.ipynb", scratch / "executed.ipynb"
        src.write_text(json.dumps(prepare(submission, course, stem)), encoding="utf-8")
        env = dict(os.environ, **{RECORD_ENV: "1", "MPLBACKEND": "Agg",
                                  "PYTHONPATH": os.pathsep.join([str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))})
        proc = subprocess.Popen([sys.executable, "-m", "course_lib.course.grade", "--worker", str(src), str(dst), "--timeout", str(timeout)],
                                cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        timed_out = False
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            timed_out, err = True, ""
        try:  # papermill saves after every cell; a kill can leave that file half written
            executed = json.loads(dst.read_text(encoding="utf-8")) if dst.exists() else {}
        except (OSError, ValueError):
            executed = {}
        verdicts, student_error, grader_error, running = read_results(executed)
        for name in names:
            row[name_column(stem, name)] = verdicts.get(name, "not run")
        row["score"] = sum(verdicts.get(n) == "correct" for n in names)
        if timed_out:
            cells = [c for c in executed.get("cells", []) if not tagged(c, "papermill-error-cell-tag")]
            where = (" before any cell finished (kernel start included)" if running is None
                     else " while running the course's checks" if running == -1
                     else f" while running cell {running} ({_first_line(cells[running])})")
            row.update(status="timeout", error=f"stopped after {timeout:g} s{where}: a cell that loops or runs too long")
        elif proc.returncode != 0:
            last = (err or "").strip().splitlines()[-1:] or ["no message"]
            row.update(status="failed", error=f"the run stopped: {last[0][:200]}")
        elif student_error or grader_error:
            row.update(status="error", error="; ".join(e for e in (student_error, grader_error) if e))
        else:
            row["status"] = "ok"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row["runtime_s"] = round(time.monotonic() - start, 1)
    return row


def name_column(stem: str, name: str) -> str:
    return f"{stem[:2]}: {name}"


def find_submissions(paths: list[Path]) -> list[tuple[Path, str]]:
    """(notebook, student) pairs; the student is the folder that holds the notebook."""
    found = []
    for p in paths:
        books = [p] if p.is_file() else sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        found += [(b, b.resolve().parent.name) for b in books]
    return sorted(set(found), key=lambda t: (t[1], t[0].name))


def write_csv(rows: list[dict], course: Course, out: Path) -> Path:
    graded = sorted({r["notebook"] for r in rows if r["notebook"] in course.names})
    columns = FIXED_COLUMNS + [name_column(s, n) for s in graded for n in course.names[s]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(out, buf.getvalue())


def _worker(src: str, dst: str, timeout: float) -> int:
    """Inside the subprocess: execute with papermill in a fresh kernel, keep going past cell errors."""
    import papermill as pm

    try:
        pm.execute_notebook(src, dst, kernel_name="python3", progress_bar=False, cwd=os.getcwd(),
                            allow_errors=True, execution_timeout=timeout, start_timeout=min(60.0, timeout))
    except pm.PapermillExecutionError:
        pass  # the executed notebook holds the error outputs; the parent reads them
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m course_lib.course.grade", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("submissions", nargs="*", type=Path, help="handed-in notebooks or folders of them")
    ap.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV file to write (default: grades.csv)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per notebook, kernel start included (default: 300)")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the pristine instructor notebooks (default: notebooks/)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(*args.worker, timeout=args.timeout)
    if not args.submissions:
        ap.error("give the handed-in notebooks or folders, e.g. python -m course_lib.course.grade handins/ --out grades.csv")
    missing = [p for p in args.submissions if not p.exists()]
    if missing:
        ap.error(f"submission not found: {missing[0]}")
    if args.timeout <= 0:
        ap.error(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.out.is_dir():
        ap.error(f"--out {args.out} is a folder; give a file name such as grades.csv")
    subs = find_submissions(args.submissions)
    if not subs:
        ap.error(f"no .ipynb files under {', '.join(map(str, args.submissions))}")
    try:
        course = Course.load(args.notebooks)
    except ConventionError as exc:
        print(f"the course notebooks break the exercise convention:\n{exc}", file=sys.stderr)
        return 1
    if not course.books:
        ap.error(f"no course notebooks (NN_*.ipynb) in {display_path(args.notebooks)}")

    from tqdm.auto import tqdm

    rows = [grade_one(path, student, course, args.timeout)
            for path, student in tqdm(subs, desc="grading", unit="notebook", disable=args.no_progress, file=sys.stderr)]
    write_csv(rows, course, args.out)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    print(f"graded {len(rows)} notebooks of {len({r['student'] for r in rows})} students -> {display_path(args.out)} "
          f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
