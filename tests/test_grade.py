"""The grader: verdicts as data, the course's own checks re-run, and a clear row for every kind of hand-in.

The tiny fixture notebook keeps this fast; notebook 00 proves the same on a real chapter (its
release runs clean and grades "not yet", a solved copy grades "correct"). Every release running
clean costs a full course run, so that test is opt-in: COURSE_GRADE_ALL=1.
"""

from __future__ import annotations

import copy
import csv
import os

import psutil
import pytest
from instructor_fixtures import STEM, tiny_notebook

from course_lib.core.paths import NOTEBOOKS
from course_lib.course import notebook as nbhelpers
from course_lib.course.exercises import apply_tags, source
from course_lib.course.grade import main
from course_lib.course.notebook import CHECK_MIME, RECORD_ENV, check_answer, run_check
from course_lib.course.release import course_notebooks, read_nb, student_copy, write_nb


def test_verdicts_recorded_only_under_the_grader(monkeypatch, capsys):
    published = []
    monkeypatch.setattr(nbhelpers, "_publish", published.append)
    monkeypatch.delenv(RECORD_ENV, raising=False)
    run_check("Ex", lambda: (True, "right", "wrong"))
    assert published == []  # strict nbval compares MIME keys: a fresh run must print only the verdict
    monkeypatch.setenv(RECORD_ENV, "1")
    run_check("Ex", lambda: 1 / 0)
    check_answer("Ey", True, "right", "wrong")
    assert published[0]["name"] == "Ex" and published[0]["ok"] is False and "ZeroDivisionError" in published[0]["message"]
    assert published[1] == {"name": "Ey", "ok": True, "verdict": "correct", "message": "right"}
    assert capsys.readouterr().out.splitlines()[-1] == "Ey: ✅ correct — right"  # the printed text is unchanged


def edit(nb: dict, marker: str, change) -> dict:
    nb = copy.deepcopy(nb)
    cell = next(c for c in nb["cells"] if marker in source(c))
    cell["source"] = change(source(cell))
    return nb


def grade(tmp_path, handins: dict[str, dict], course_dir, timeout: float, name: str = STEM) -> dict[str, dict]:
    for student, nb in handins.items():
        path = tmp_path / "handins" / student / f"{name}.ipynb"
        if isinstance(nb, str):
            path.parent.mkdir(parents=True)
            path.write_text(nb)
        else:
            write_nb(path, nb)
    out = tmp_path / "grades.csv"
    assert main([str(tmp_path / "handins"), "--notebooks", str(course_dir), "--timeout", str(timeout),
                 "--out", str(out), "--no-progress"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


@pytest.fixture
def tiny_course(tmp_path):
    nb = tiny_notebook()
    apply_tags(nb, STEM)
    write_nb(tmp_path / "course" / f"{STEM}.ipynb", nb)
    return tmp_path / "course", student_copy(nb, STEM, "test")


def test_grading_tiny_handins(tmp_path, tiny_course):
    course_dir, release = tiny_course
    cheat = edit(release, "_ = check_1(answer_1)", lambda s: (  # the check cell rewritten to always pass
        "from IPython.display import publish_display_data\n"
        "def check_answer(name, ok, a, b):\n    print(name, 'correct')\n"
        f"publish_display_data({{{CHECK_MIME!r}: {{'name': 'Exercise 1', 'ok': True}}}})\n"))
    cheat["cells"].append({"cell_type": "code", "execution_count": None, "id": "fake", "outputs": [], "source": "x = 1",
                           "metadata": {"tags": ["course-grader"]}})
    rows = grade(tmp_path, {
        "alice": release,                                                                     # unmodified
        "bob": edit(release, "def double", lambda s: s.replace('raise NotImplementedError("your code here")', "return 2 * x")),
        "carol": edit(release, "def double", lambda s: "answer_1 = 1 / 0\n" + s),             # crashes
        "erin": cheat,
        "frank": "{not json",
        "gina": '{"cells": [1, 2], "metadata": {}}',
        "hank": edit(release, "def double", lambda s: "import os\nos._exit(1)\n"),           # kills its kernel
    }, course_dir, timeout=300)
    ex = [f"90: Exercise {k}" for k in (1, 2, 3)]
    assert [rows["alice"][c] for c in ["status", "score", "out_of", *ex]] == ["ok", "0", "3", "not yet", "not yet", "not yet"]
    assert [rows["bob"][c] for c in ["status", "score", *ex]] == ["ok", "1", "not yet", "correct", "not yet"]
    assert rows["carol"]["status"] == "error" and [rows["carol"][c] for c in ex] == ["not yet"] * 3
    assert rows["carol"]["error"] == "cell 6 (answer_1 = 1 / 0): ZeroDivisionError: division by zero"
    assert [rows["erin"][c] for c in ["status", "score", *ex]] == ["ok", "0", "not yet", "not yet", "not yet"]
    assert rows["frank"]["status"] == "failed" and "not a readable notebook" in rows["frank"]["error"]
    assert rows["gina"]["status"] == "failed" and rows["gina"]["error"] == "not a readable notebook (no list of cells)"
    assert (rows["hank"]["status"], rows["hank"]["error"]) == ("failed", "the run stopped: nbclient.exceptions.DeadKernelError: Kernel died")
    assert float(rows["bob"]["runtime_s"]) > 0


def test_a_looping_handin_gets_a_timeout_row_and_no_leftover_kernel(tmp_path, tiny_course):
    course_dir, release = tiny_course
    loop = edit(release, "def double", lambda s: "while True:\n    pass\n")
    rows = grade(tmp_path, {"dave": loop}, course_dir, timeout=30)
    assert rows["dave"]["status"] == "timeout"
    assert rows["dave"]["error"] == "stopped after 30 s while running cell 6 (while True:): a cell that loops or runs too long"
    assert [rows["dave"][f"90: Exercise {k}"] for k in (1, 2, 3)] == ["not run"] * 3
    assert 30 <= float(rows["dave"]["runtime_s"]) < 60
    left = []
    for p in psutil.process_iter(["cwd"]):
        if "course-grade-" in (p.info.get("cwd") or ""):
            left.append(p.pid)
    assert not left, f"processes left running in a grading folder: {left}"


def test_notebook_00_release_grades_not_yet_and_a_solved_copy_correct(tmp_path):
    nb = read_nb(NOTEBOOKS / "00_setup_and_tour.ipynb")
    release = student_copy(nb, "00_setup_and_tour", "test")
    solved = edit(release, "answer_zh = None", lambda s: s.replace("answer_zh = None", 'answer_zh = len(enc.encode("三只松鼠"))')
                  .replace("answer_en = None", 'answer_en = len(enc.encode("Nutty Grove"))'))
    rows = grade(tmp_path, {"ann": release, "ben": solved}, NOTEBOOKS, timeout=600, name="00_setup_and_tour")
    assert [rows["ann"][c] for c in ["status", "error", "00: Exercise 00"]] == ["ok", "", "not yet"]  # the release runs clean
    assert [rows["ben"][c] for c in ["status", "score", "00: Exercise 00"]] == ["ok", "1", "correct"]


@pytest.mark.skipif(os.environ.get("COURSE_GRADE_ALL") != "1", reason="a full course run; COURSE_GRADE_ALL=1 to run it")
def test_every_release_runs_clean_and_grades_not_yet(tmp_path):
    handins = {}
    for path in course_notebooks():
        handins[path.stem] = student_copy(read_nb(path), path.stem, "test")
    for stem, nb in handins.items():
        write_nb(tmp_path / "handins" / "release" / f"{stem}.ipynb", nb)
    out = tmp_path / "grades.csv"
    assert main([str(tmp_path / "handins"), "--timeout", "600", "--out", str(out), "--no-progress"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["notebook"] for r in rows) == sorted(handins)
    for row in rows:
        verdicts = {k: v for k, v in row.items() if k[:2] == row["notebook"][:2] and k[2:4] == ": " and v}
        assert (row["status"], row["error"], row["score"]) == ("ok", "", "0"), row
        assert verdicts and set(verdicts.values()) == {"not yet"}, row


def test_cli_bad_input(tmp_path, capsys):
    for args, msg in [([], "give the handed-in notebooks"), ([str(tmp_path / "nope")], "submission not found"),
                      ([str(tmp_path)], "no .ipynb files under"), ([str(tmp_path), "--timeout", "0"], "--timeout must be > 0")]:
        with pytest.raises(SystemExit) as err:
            main(args)
        assert err.value.code == 2 and msg in capsys.readouterr().err
