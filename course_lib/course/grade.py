"""Grade handed-in notebooks: `python -m course_lib.course.grade HANDINS... --out grades.csv`.

HANDINS are notebooks or folders of notebooks, laid out as <folder>/<student>/<notebook>.ipynb
(the student is the name of the folder holding the notebook). The chapter is read from the
release metadata (course_lib.course.release) or from the file name's number.

How a hand-in is judged (two kernels, so the hand-in's code never gives its own verdict):
1. The hand-in runs in its own kernel, in a fresh copy of the course made for it alone
   (course_lib/, assets/, checkpoints/, benchmarks/ copied into a private temporary folder, the
   hand-in in its notebooks/), with its own HOME and TMPDIR and PYTHONPATH pointing at that copy:
   a hand-in that edits course_lib/course/notebook.py edits its own copy. The course's checks are
   appended and called there only to record what the answers do; the last cell saves each answer
   as plain data (course_lib.course.answers: numbers, text, lists, tuples, dicts, tensors; calls of
   an answer that is a function, with their results). A cell that raises does not stop the run.
   When the run ends or times out, its whole process group is killed, and so is every process it
   left behind (on Linux the grader adopts orphans as a child subreaper and kills them).
2. A second kernel runs the course's own notebook once per chapter, started before any hand-in
   of that chapter, then, for each hand-in, loads the saved answers and runs the course's checks
   on them. The expected values come from this kernel's state (its `enc`, its model), never from
   the hand-in's; an answer that is not plain data (an object whose `__eq__` always says True)
   cannot be compared and is an error; check records printed or published by a hand-in are ignored.

Each exercise gets one verdict: right, wrong, blank (its placeholder left as is: `None`, or the
function stub unchanged), or error (the answer's code raised, it is not plain data, or the run
never reached the checks). The grades are written after every hand-in (temporary file, fsync,
rename): Ctrl-C (exit 130) or a crash keeps every finished row. Outputs: --out (one row per
student and notebook: status, score, out_of, each exercise's verdict, runtime, first error, note)
and <out>_totals.csv beside it (each student's total over the chapters handed in). A student who
hands in one chapter twice gets a warning and a "duplicate" note; the totals count the better one.

What is NOT isolated: this is not a security sandbox. Hand-ins run as the instructor's user, with
the network and the whole file system that user can reach; a hand-in that looks for the grader's
files by absolute path (the course, other hand-ins, the grades) can read or change them, and one
that attacks the checking kernel's process can disturb it. Hand-ins are read (and fingerprinted)
before any runs, and a hand-in that changes on disk before its turn gets a failed row. Grade
untrusted work inside a container or a throwaway account.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib.core.checks import check_float
from course_lib.core.files import check_output_folder
from course_lib.core.paths import NOTEBOOKS, REPO_ROOT, display_path
from course_lib.course.exercises import CheckPlan, ConventionError, check_plan, detect, import_lines, last_binding, source, tagged
from course_lib.course.notebook import CHECK_MIME, RECORD_ENV
from course_lib.course.release import META_KEY, course_notebooks, stale_tags

GRADER_TAG = "course-grader"
STATUSES = ("ok", "error", "timeout", "failed", "unknown notebook")
VERDICTS = ("right", "wrong", "blank", "error")
FIXED_COLUMNS = ["student", "notebook", "file", "status", "score", "out_of", "runtime_s", "error", "note"]
TOTAL_COLUMNS = ["student", "score", "out_of", "notebooks", "missing", "note"]
COURSE_PARTS = ("course_lib", "assets", "checkpoints", "benchmarks")  # what a hand-in's copy of the course holds
MAX_HANDIN_BYTES = 200 * 2**20
MAX_ANSWERS_BYTES = 256 * 2**20


@dataclass
class Course:
    """The pristine notebooks: the exercise names and the check plan of each."""
    folder: Path
    books: dict[str, dict]            # stem -> notebook json
    names: dict[str, list[str]] = field(default_factory=dict)
    plans: dict[str, CheckPlan] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Course:
        books = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in course_notebooks(folder)}
        course = cls(folder, books)
        stale = [line for stem, nb in books.items() for line in stale_tags(nb, stem)]
        if stale:  # the grader re-runs the cells tagged `check`: stale tags would run the wrong code
            raise ConventionError("\n".join(stale) + "\n(run: python -m course_lib.course.release --tag-notebooks)")
        for stem, nb in books.items():
            _, exercises = detect(nb["cells"], stem)
            course.names[stem] = [n for ex in exercises for n in ex.names]
            course.plans[stem] = check_plan(nb["cells"], stem)
        return course

    def identify(self, nb: dict | None, path: Path) -> str | None:
        """The chapter a hand-in belongs to: release metadata first, then the file name's NN_ prefix."""
        meta = (nb or {}).get("metadata", {}).get(META_KEY, {}) if isinstance(nb, dict) else {}
        stem = meta.get("notebook") if isinstance(meta, dict) else None
        if isinstance(stem, str) and stem in self.books:
            return stem
        if path.stem in self.books:
            return path.stem
        number = re.match(r"(\d\d[a-z]?)(?:_|$)", path.stem)
        matches = [s for s in self.books if number and s.split("_")[0] == number.group(1)]
        return matches[0] if len(matches) == 1 else None

    def imports(self, stem: str) -> list[str]:
        lines: list[str] = []
        for cell in self.books[stem]["cells"]:
            if cell["cell_type"] == "code" and not tagged(cell, "solution"):
                lines += [line for line in import_lines(source(cell)) if line not in lines]
        return lines

    def handin_cells(self, stem: str, answers_path: str) -> list[dict]:
        """Cells appended to a hand-in: the course's imports, the checks (to record calls), then save the answers."""
        plan = self.plans[stem]
        setup = "\n".join(["# course grader: record the answers as plain data (course_lib.course.answers)",
                           *self.imports(stem),
                           "from course_lib.course.answers import dump_answers, record_answers",
                           "from course_lib.course.notebook import check_answer, run_check",
                           f"for _name in {plan.answers!r}:", "    globals().setdefault(_name, None)",
                           f"record_answers(globals(), {plan.answers!r})"])
        checks = "\n".join(_guarded(code, "pass") for code, _ in plan.steps)
        save = f"dump_answers(globals(), {plan.answers!r}, {answers_path!r})"
        return [_grader_cell(k, src) for k, src in enumerate([setup, checks or "pass", save])]

    def judge_code(self, stem: str, answers_path: str) -> str:
        """The cell the checking kernel runs for one hand-in: load its answers, run the course's checks."""
        plan = self.plans[stem]
        lines = ["from course_lib.course.answers import check_failed as _grader_failed, load_answers as _grader_load",
                 *self.imports(stem), "from course_lib.course.notebook import check_answer, run_check",
                 f"_grader_load(globals(), {answers_path!r}, {plan.answers!r})"]
        lines += [_guarded(code, f"_grader_failed(_grader_exc, {names or []!r})") for code, names in plan.steps]
        return "\n".join(lines)


def _guarded(code: str, handler: str) -> str:
    body = "\n".join("    " + line for line in code.splitlines())
    return f"try:\n{body}\nexcept Exception as _grader_exc:\n    {handler}"


def _grader_cell(k: int, src: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": f"course-grader-{k}",
            "metadata": {"tags": [GRADER_TAG]}, "outputs": [], "source": src}


def prepare(handin: dict, course: Course, stem: str, answers_path: str) -> dict:
    """The notebook a hand-in runs: outputs cleared, cells posing as grader cells dropped, grader cells appended."""
    nb = copy.deepcopy(handin)
    cells = []
    for cell in nb.get("cells", []):
        if tagged(cell, GRADER_TAG):
            continue
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    nb["cells"] = cells + course.handin_cells(stem, answers_path)
    nb.setdefault("metadata", {})["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb["metadata"].pop("papermill", None)
    return nb


# ---------------------------------------------------------------------------- reading hand-ins
def notebook_problem(nb: object) -> str | None:
    """Why this JSON is not a notebook the grader can run (None if it is)."""
    if not isinstance(nb, dict):
        return "the top level is not a mapping"
    if not isinstance(nb.get("cells"), list):
        return "no list of cells"
    if not isinstance(nb.get("metadata", {}), dict):
        return "its metadata is not a mapping"
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            return f"cell {i} is not a code, markdown or raw cell"
        src = cell.get("source", "")
        if not (isinstance(src, str) or (isinstance(src, list) and all(isinstance(s, str) for s in src))):
            return f"cell {i}'s source is not text"
        meta = cell.get("metadata", {})
        if not isinstance(meta, dict) or not isinstance(meta.get("tags", []), list) \
                or not all(isinstance(t, str) for t in meta.get("tags", [])):
            return f"cell {i}'s metadata is malformed"
    return None


def read_handin(path: Path) -> tuple[dict | None, str | None, str | None]:
    """(notebook, why it cannot be graded, sha256 of its bytes); never raises."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file", None
        if st.st_size > MAX_HANDIN_BYTES:
            return None, f"too large ({st.st_size:,} bytes; the limit is {MAX_HANDIN_BYTES:,})", None
        with open(path, "rb") as f:
            data = f.read(MAX_HANDIN_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read it ({exc.strerror or exc})", None
    digest = hashlib.sha256(data).hexdigest()
    try:
        nb = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not a readable notebook (not UTF-8 text)", digest
    except (ValueError, RecursionError) as exc:
        return None, f"not a readable notebook (not JSON: {str(exc)[:80]})", digest
    problem = notebook_problem(nb)
    if problem:
        return None, f"not a readable notebook ({problem})", digest
    return nb, None, digest


@dataclass
class Handin:
    path: Path
    student: str
    label: str                 # the file as the CSV shows it (relative to the hand-ins folder)
    stem: str | None = None    # the chapter
    digest: str | None = None
    error: str | None = None   # why it cannot be graded (read at the start)
    note: str = ""


def find_handins(paths: list[Path]) -> tuple[list[Handin], list[str]]:
    """Every .ipynb under the given files and folders (symlinked folders are not followed), and warnings."""
    found: dict[str, Handin] = {}
    warnings: list[str] = []
    for root in paths:
        if not os.path.isdir(root):
            path = Path(root)
            found.setdefault(os.path.abspath(path), Handin(path, Path(os.path.abspath(path)).parent.name, path.name))
            continue

        def onerror(exc: OSError, root: Path = root) -> None:
            warnings.append(f"warning: cannot list {display_path(exc.filename or root)} ({exc.strerror}); "
                            "hand-ins in it are not graded")

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
            folder = Path(dirpath)
            student = Path(os.path.abspath(folder)).name
            odd = [d for d in dirnames if d.endswith(".ipynb")]  # a folder named like a notebook: a failed row
            dirnames[:] = sorted(d for d in dirnames if d != ".ipynb_checkpoints" and d not in odd)
            for name in sorted(filenames + odd):
                if name.endswith(".ipynb"):
                    path = folder / name
                    found.setdefault(os.path.abspath(path), Handin(path, student, os.path.relpath(path, root)))
    return sorted(found.values(), key=lambda h: (h.student, h.label)), warnings


def flag_duplicates(handins: list[Handin]) -> list[str]:
    groups: dict[tuple[str, str], list[Handin]] = {}
    for h in handins:
        if h.stem is not None:
            groups.setdefault((h.student, h.stem), []).append(h)
    warnings = []
    for (student, stem), group in groups.items():
        if len(group) > 1:
            files = ", ".join(h.label for h in group)
            warnings.append(f"warning: {student} handed in {stem} {len(group)} times ({files}): each is graded and "
                            "marked duplicate; the totals count the better one")
            for h in group:
                h.note = "duplicate: " + ", ".join(o.label for o in group if o is not h)
    return warnings


# ---------------------------------------------------------------------------- processes
def _become_subreaper() -> None:
    """Linux: orphans of a hand-in (a detached, double-forked child) become the grader's children, so it can kill them."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop(proc: subprocess.Popen, keep: set[int]) -> None:
    """Kill the worker's process group and every process started since (jupyter starts kernels in their own session)."""
    import psutil

    for _ in range(20):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        new = [p for p in psutil.Process().children(recursive=True) if p.pid not in keep]
        if not new:
            break
        for p in new:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(new, timeout=2)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def _private_env(home: Path, tmp: Path, pythonpath: str, record: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != RECORD_ENV and not k.startswith(("JUPYTER_", "IPYTHON"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), TMP=str(tmp), TEMP=str(tmp), PYTHONPATH=pythonpath,
               MPLBACKEND="Agg", IPYTHONDIR=str(home / ".ipython"), MPLCONFIGDIR=str(home / ".matplotlib"),
               XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"), PYTHONNOUSERSITE="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    if record:
        env[RECORD_ENV] = "1"
    for d in (home / ".matplotlib", tmp):
        d.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):  # matplotlib's font list: copied, not rebuilt for every hand-in
        import matplotlib

        for f in Path(matplotlib.get_cachedir()).glob("fontlist-*.json"):
            shutil.copy(f, home / ".matplotlib" / f.name)
    return env


def copy_course(root: Path) -> None:
    """A fresh copy of what a notebook needs, for one hand-in alone."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for part in COURSE_PARTS:
        if (REPO_ROOT / part).is_dir():
            shutil.copytree(REPO_ROOT / part, root / part, ignore=ignore, symlinks=True)
    for part in ("notebooks", "runs"):
        (root / part).mkdir(parents=True, exist_ok=True)


class Judge:
    """The checking kernel of one chapter: the course's notebook, then the checks on each hand-in's saved answers."""

    def __init__(self, course: Course, stem: str, timeout: float) -> None:
        self.course, self.stem, self.timeout = course, stem, timeout
        self.dir = Path(tempfile.mkdtemp(prefix="course-judge-"))
        self.broken: str | None = None
        self.client = None
        self.count = 0
        self._stack = contextlib.ExitStack()

    def start(self) -> Judge:
        import nbformat
        from nbclient import NotebookClient

        work = self.dir / "notebooks"
        work.mkdir()
        for part in COURSE_PARTS:
            if (REPO_ROOT / part).exists():
                (self.dir / part).symlink_to(REPO_ROOT / part)
        nb = nbformat.reads(json.dumps(self.course.books[self.stem]), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        env = _private_env(self.dir / "home", self.dir / "tmp",
                           os.pathsep.join([str(REPO_ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
                           record=True)
        self.client = NotebookClient(nb, timeout=int(self.timeout), startup_timeout=int(min(120, self.timeout)),
                                     kernel_name="python3", allow_errors=False, resources={"metadata": {"path": str(work)}})
        try:
            # stderr: the kernel's "running over TCP" warning would interleave with the progress bar
            self._stack.enter_context(self.client.setup_kernel(env=env, stderr=subprocess.DEVNULL))
            for i, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    self.client.execute_cell(cell, i)
        except Exception as exc:
            self.broken = f"the course notebook {self.stem} did not run in the grader's checking kernel ({_one_line(exc)})"
            self.close()
        return self

    def judge(self, answers: Path) -> dict[str, dict] | str:
        """The first verdict record per exercise, or why there is none."""
        import nbformat

        if self.broken:
            return self.broken
        self.count += 1
        path = self.dir / f"answers-{self.count}.json"
        shutil.copy(answers, path)
        cell = nbformat.v4.new_code_cell(self.course.judge_code(self.stem, str(path)))
        self.client.nb.cells.append(cell)
        try:
            self.client.execute_cell(cell, len(self.client.nb.cells) - 1)
        except Exception as exc:
            self.broken = f"the checking kernel stopped ({_one_line(exc)})"
            self.close()
            return self.broken
        finally:
            path.unlink(missing_ok=True)
        records: dict[str, dict] = {}
        for out in cell.outputs:
            record = out.get("data", {}).get(CHECK_MIME)
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                records.setdefault(record["name"], record)
        return records

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = [t for t in text if t.strip()][-1:] or [""]
    return f"{type(exc).__name__}: {last[0][:200]}"


# ---------------------------------------------------------------------------- one hand-in
def _first_line(cell: dict) -> str:
    line = next((s for s in source(cell).splitlines() if s.strip()), "")
    return line.strip()[:60]


def read_results(nb: dict) -> tuple[str, str, int | None]:
    """(first error in a hand-in cell, first error in a grader cell, running cell).

    The running cell is the one a killed run was in: its index, -1 for the grader's cells, None if none started.
    """
    student_error = grader_error = ""
    running = None
    cells = [c for c in nb.get("cells", []) if not tagged(c, "papermill-error-cell-tag")]  # papermill's markers
    for i, cell in enumerate(cells):
        grader = tagged(cell, GRADER_TAG)
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
            running = -1 if grader else i
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                text = f"{out.get('ename')}: {str(out.get('evalue', '')).splitlines()[0] if out.get('evalue') else ''}"
                if grader and not grader_error:
                    grader_error = f"the grader could not save the answers ({text})"
                elif not grader and not student_error:
                    student_error = f"cell {i} ({_first_line(cell)}): {text}"
    return student_error, grader_error, running


def blank_answers(plan: CheckPlan, nb: dict, saved: dict) -> set[str]:
    """Answers left as the release has them: a function whose definition is the course's stub, or a value still None."""
    blank = set()
    for name in plan.answers:
        if name in plan.stubs:
            node = last_binding(nb["cells"], name)
            if node is None or ast.dump(node) == plan.stubs[name]:
                blank.add(name)
        elif saved.get(name) in (None, {"value": None}):
            blank.add(name)
    return blank


def verdicts(plan: CheckPlan, names: list[str], records: dict[str, dict], blank: set[str]) -> dict[str, tuple[str, str]]:
    """(verdict, why) per exercise from the checking kernel's records."""
    out = {}
    for name in names:
        rec = records.get(name)
        answers = plan.per_exercise.get(name, [])
        if rec is not None and rec.get("ok") is True:
            out[name] = ("right", "")
        elif (answers and all(a in blank for a in answers)) or (rec or {}).get("raised") == "AnswerNotImplemented":
            out[name] = ("blank", "")
        elif rec is None:
            out[name] = ("error", "the check gave no verdict")
        elif rec.get("raised"):
            out[name] = ("error", str(rec.get("message", ""))[:200])
        else:
            out[name] = ("wrong", "")
    return out


def grade_one(h: Handin, course: Course, judge: Judge | None, timeout: float) -> dict:
    """Run one hand-in and return its CSV row (never raises for anything the hand-in does)."""
    row: dict = {"student": h.student, "notebook": h.stem or Path(h.label).stem, "file": h.label, "status": "failed",
                 "score": 0, "out_of": len(course.names.get(h.stem, [])), "runtime_s": 0.0, "error": "", "note": h.note}
    start = time.monotonic()
    if h.stem is None:
        row.update(status="unknown notebook", error=h.error or f"{Path(h.label).name} matches no course notebook "
                   "(name it like the release's file)")
        return row
    names = course.names[h.stem]
    for name in names:
        row[name_column(h.stem, name)] = "error"
    if h.error:
        row["error"] = h.error
        return row
    nb, error, digest = read_handin(h.path)
    if error or digest != h.digest:
        row["error"] = error or "the file changed on disk after the grading started (another run may have written it)"
        return row
    plan = course.plans[h.stem]
    scratch = Path(tempfile.mkdtemp(prefix="course-grade-"))
    try:
        row.update(_run_handin(h, nb, course, judge, timeout, scratch, plan, names))
    except Exception as exc:  # the grader's own trouble (disk full while copying the course): one failed row
        row.update(status="failed", error=f"the grader could not run it: {_one_line(exc)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row["runtime_s"] = round(time.monotonic() - start, 1)
    return row


def _run_handin(h: Handin, nb: dict, course: Course, judge: Judge | None, timeout: float, scratch: Path,
                plan: CheckPlan, names: list[str]) -> dict:
    root, answers = scratch / "course", scratch / "answers.json"
    copy_course(root)
    src, dst = root / "notebooks" / f"{h.stem}.ipynb", scratch / "executed.ipynb"
    src.write_text(json.dumps(prepare(nb, course, h.stem, str(answers))), encoding="utf-8")
    env = _private_env(scratch / "home", scratch / "tmp", str(root), record=False)
    keep = _descendants()
    # The worker's output goes to a file, not a pipe: a child the hand-in leaves behind inherits it,
    # and waiting for a pipe to close would wait for that child.
    with open(scratch / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "course_lib.course.grade", "--worker", str(src), str(dst),
                                 "--timeout", repr(timeout)], cwd=root / "notebooks", env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _stop(proc, keep)  # also after a clean finish: nothing the hand-in started outlives its run
    err = (scratch / "worker.log").read_bytes()[-4000:].decode("utf-8", "replace")
    try:  # papermill saves after every cell; a kill can leave that file half written
        executed = json.loads(dst.read_text(encoding="utf-8")) if dst.exists() else {}
    except (OSError, ValueError):
        executed = {}
    student_error, grader_error, running = read_results(executed if isinstance(executed, dict) else {})
    row: dict = {}
    records: dict[str, dict] | str = {}
    saved, why_unsaved = _read_answers(answers)
    if judge is None:
        saved, why_unsaved = None, "no checking kernel"
    if saved is not None and judge is not None:
        records = judge.judge(answers)
        if isinstance(records, str):
            row["status"], why_unsaved, saved = "failed", records, None
    if saved is not None:
        graded = verdicts(plan, names, records, blank_answers(plan, nb, saved))
        for name, (verdict, _) in graded.items():
            row[name_column(h.stem, name)] = verdict
        row["score"] = sum(v == "right" for v, _ in graded.values())
        check_errors = [f"{n}: {why}" for n, (v, why) in graded.items() if v == "error" and why]
    else:
        check_errors = []
    if timed_out:
        cells = [c for c in executed.get("cells", []) if not tagged(c, "papermill-error-cell-tag")] if isinstance(executed, dict) else []
        where = (" before any cell finished (kernel start included)" if running is None or running >= len(cells)
                 else " while running the grader's cells" if running == -1
                 else f" while running cell {running} ({_first_line(cells[running])})")
        row.update(status="timeout", error=f"stopped after {timeout:g} s{where}: a cell that loops or runs too long")
    elif proc.returncode != 0:
        last = (err or "").strip().splitlines()[-1:] or ["no message"]
        row.update(status="failed", error=f"the run stopped: {last[0][:200]}")
    elif row.get("status") == "failed":
        row["error"] = why_unsaved
    elif student_error or grader_error or saved is None:
        row.update(status="error", error="; ".join(e for e in (student_error, grader_error or (why_unsaved if saved is None else "")) if e))
    else:
        row.update(status="ok", error="; ".join(check_errors[:2]))
    return row


def _read_answers(path: Path) -> tuple[dict | None, str]:
    try:
        if path.stat().st_size > MAX_ANSWERS_BYTES:
            return None, f"the saved answers are too large (over {MAX_ANSWERS_BYTES // 2**20} MB)"
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "the run never reached the grader's cells, so no answer was saved"
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"the saved answers are unreadable ({_one_line(exc)})"
    if not isinstance(data, dict):
        return None, "the saved answers are not a mapping"
    return data, ""


def name_column(stem: str, name: str) -> str:
    return f"{stem.split('_')[0]}: {name}"


# ---------------------------------------------------------------------------- the grades files
class SheetError(OSError):
    """Writing the grades failed (one line names the file)."""


def _write_durably(path: Path, text: str) -> None:
    """Temporary file in the same folder, flushed and fsynced, renamed over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def totals_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_totals.csv")


class Sheet:
    """Every row graded so far, written to --out and the totals file after each hand-in."""

    def __init__(self, out: Path, course: Course, handins: list[Handin]) -> None:
        self.out, self.totals, self.course, self.rows = out, totals_path(out), course, []
        order = list(course.books)
        self.chapters = sorted({h.stem for h in handins if h.stem}, key=order.index)
        self.students = sorted({h.student for h in handins})

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        columns = FIXED_COLUMNS + [name_column(s, n) for s in self.chapters for n in self.course.names[s]]
        rows = sorted(self.rows, key=lambda r: (r["student"], r["notebook"], r["file"]))
        tot_columns = TOTAL_COLUMNS + [f"{s.split('_')[0]} score" for s in self.chapters]
        for path, cols, data in ((self.out, columns, rows), (self.totals, tot_columns, self.total_rows())):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(data)
            try:
                _write_durably(path, buf.getvalue())
            except OSError as exc:
                raise SheetError(exc.errno, f"cannot write {display_path(path)}: {exc.strerror or exc}") from exc

    def total_rows(self) -> list[dict]:
        out = []
        for student in self.students:
            mine = [r for r in self.rows if r["student"] == student]
            row = {"student": student, "score": 0, "out_of": 0, "notebooks": 0}
            missing, notes = [], []
            for stem in self.chapters:
                rows = [r for r in mine if r["notebook"] == stem]
                best = max((int(r["score"]) for r in rows), default=0)
                row["score"] += best
                row["out_of"] += len(self.course.names[stem])
                row[f"{stem.split('_')[0]} score"] = best
                row["notebooks"] += bool(rows)
                if not rows:
                    missing.append(stem.split("_")[0])
                if len(rows) > 1:
                    notes.append(f"{stem.split('_')[0]} handed in {len(rows)} times (the better one counts)")
            row["missing"], row["note"] = " ".join(missing), "; ".join(notes)
            out.append(row)
        return out


def out_problem(out: Path, handins: list[Path], notebooks: Path) -> str | None:
    """Why --out (or the totals file beside it) must not be written, or None."""
    for path in (out, totals_path(out)):
        try:
            target = Path(os.path.abspath(path)).resolve()
        except (OSError, RuntimeError) as exc:
            return f"--out {path}: cannot resolve it ({exc})"
        if target.is_dir():
            return f"--out {display_path(target)} is a folder; give a file name such as grades.csv"
        for h in handins:
            h_res = Path(os.path.abspath(h)).resolve()
            if target == h_res or (h_res.is_dir() and target.is_relative_to(h_res)):
                return f"--out {display_path(target)} is inside the hand-ins ({display_path(h_res)}); write the grades elsewhere"
        for part in {notebooks.resolve(), NOTEBOOKS.resolve(), (REPO_ROOT / "course_lib").resolve()}:
            if target.is_relative_to(part):
                return f"--out {display_path(target)} is inside the course ({display_path(part)}); write the grades elsewhere"
        if target.suffix == ".ipynb":
            return f"--out {display_path(target)} is a notebook; give a .csv file name"
        if target.exists():
            if not target.is_file():
                return f"--out {display_path(target)} is not a regular file"
            try:
                with open(target, encoding="utf-8") as f:
                    head = f.read(64)
            except (OSError, UnicodeDecodeError):
                head = ""
            if target.suffix.lower() != ".csv" or not head.startswith("student,"):
                return (f"--out {display_path(target)} exists and is not a grades CSV written by this grader; "
                        "refusing to replace it (give a new file name)")
    try:
        check_output_folder(Path(os.path.abspath(out)).parent, "--out")
    except ValueError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------- command line
def _worker(src: str, dst: str, timeout: float) -> int:
    """Inside the hand-in's process group: execute with papermill in a fresh kernel, keep going past cell errors."""
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
    ap.add_argument("--out", type=Path, default=Path("grades.csv"),
                    help="CSV file to write (default: grades.csv; the totals go to <name>_totals.csv beside it); "
                         "a new file, or a grades CSV this grader wrote; never inside the hand-ins or the course")
    ap.add_argument("--timeout", default="300", help="seconds per hand-in, kernel start included (default: 300)")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the pristine instructor notebooks (default: notebooks/)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        timeout = check_float("--timeout", float(args.timeout) if _is_number(args.timeout) else args.timeout,
                              low=0, low_open=True)
    except ValueError as exc:
        ap.error(f"{exc} (seconds per hand-in, e.g. --timeout 300)")
    if args.worker:
        return _worker(*args.worker, timeout=timeout)
    if not args.submissions:
        ap.error("give the handed-in notebooks or folders, e.g. python -m course_lib.course.grade handins/ --out grades.csv")
    missing = [p for p in args.submissions if not os.path.exists(p)]
    if missing:
        ap.error(f"submission not found: {missing[0]}")
    try:
        course = Course.load(args.notebooks)
    except ConventionError as exc:
        print(f"the course notebooks break the exercise convention:\n{exc}", file=sys.stderr)
        return 1
    if not course.books:
        ap.error(f"no course notebooks (NN_*.ipynb) in {display_path(args.notebooks)}")
    problem = out_problem(args.out, args.submissions, args.notebooks)
    if problem:
        ap.error(problem)
    handins, warnings = find_handins(args.submissions)
    if not handins:
        ap.error(f"no .ipynb files under {', '.join(map(str, args.submissions))}")
    for h in handins:  # read (and fingerprint) every hand-in before any of them runs
        nb, h.error, h.digest = read_handin(h.path)
        h.stem = course.identify(nb, h.path)
    warnings += flag_duplicates(handins)
    for line in warnings:
        print(line, file=sys.stderr)
    return _grade_all(handins, course, args, timeout)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _grade_all(handins: list[Handin], course: Course, args: argparse.Namespace, timeout: float) -> int:
    from tqdm.auto import tqdm

    sheet = Sheet(args.out, course, handins)
    order = list(course.books)
    queue = sorted(handins, key=lambda h: (-1 if h.stem is None else order.index(h.stem), h.student, h.label))
    _become_subreaper()
    judge: Judge | None = None
    try:
        sheet.write()  # an unwritable --out stops here, before anything runs
        bar = tqdm(queue, desc="grading", unit="notebook", disable=args.no_progress, file=sys.stderr)
        for h in bar:
            if judge is not None and (judge.stem != h.stem or (judge.broken and judge.count)):
                judge.close()  # next chapter, or the checking kernel died on the last hand-in: a fresh one
                judge = None
            if judge is None and h.stem is not None and h.error is None:
                judge = Judge(course, h.stem, timeout)
                judge.start()
            sheet.add(grade_one(h, course, judge, timeout))
    except KeyboardInterrupt:
        print(f"grading interrupted: {len(sheet.rows)} of {len(handins)} hand-ins graded, their rows are in "
              f"{display_path(args.out)} (run again to grade them all)", file=sys.stderr)
        return 130
    except SheetError as exc:
        print(f"{exc.strerror}; {len(sheet.rows)} hand-ins were graded before it failed", file=sys.stderr)
        return 2
    finally:
        if judge is not None:
            judge.close()
    counts = {s: sum(r["status"] == s for r in sheet.rows) for s in STATUSES}
    print(f"graded {len(sheet.rows)} notebooks of {len(sheet.students)} students -> {display_path(args.out)} and "
          f"{display_path(sheet.totals)} ({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
