"""The grader: verdicts from the course's own kernel, hand-ins isolated, and a clear row for every kind of hand-in.

The tiny fixture notebook keeps this fast; notebook 00 proves the same on a real chapter (its
release runs clean and grades "blank", a solved copy grades "right", a fake `enc` grades nothing
right). Every release running clean costs a full course run, so that test is opt-in:
COURSE_GRADE_ALL=1. Fast hostile-input cases (arguments, --out, unreadable files, Ctrl-C) are in
tests/test_bad_input.py.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from pathlib import Path

import psutil
import pytest
from instructor_fixtures import STEM, tiny_notebook

from course_lib.core.paths import NOTEBOOKS
from course_lib.course import notebook as nbhelpers
from course_lib.course.exercises import apply_tags, source
from course_lib.course.grade import main
from course_lib.course.notebook import CHECK_MIME, RECORD_ENV, check_answer, run_check
from course_lib.course.release import course_notebooks, read_nb, student_copy, write_nb

EX = [f"90: Exercise {k}" for k in (1, 2, 3)]


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
    assert published[0]["raised"] == "ZeroDivisionError"
    assert published[1] == {"name": "Ey", "ok": True, "verdict": "correct", "message": "right"}
    assert capsys.readouterr().out.splitlines()[-1] == "Ey: ✅ correct — right"  # the printed text is unchanged


def edit(nb: dict, marker: str, change) -> dict:
    nb = copy.deepcopy(nb)
    cell = next(c for c in nb["cells"] if marker in source(c))
    cell["source"] = change(source(cell))
    return nb


def grade(tmp_path, handins: dict[str, dict], course_dir, timeout: float, name: str = STEM) -> dict[str, dict]:
    """Grade hand-ins keyed "student" (or "student/file.ipynb"); rows keyed the same way."""
    for key, nb in handins.items():
        student, _, fname = key.partition("/")
        path = tmp_path / "handins" / student / (fname or f"{name}.ipynb")
        if isinstance(nb, str):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(nb)
        else:
            write_nb(path, nb)
    out = tmp_path / "grades.csv"
    assert main([str(tmp_path / "handins"), "--notebooks", str(course_dir), "--timeout", str(timeout),
                 "--out", str(out), "--no-progress"]) == 0
    with out.open(newline="", encoding="utf-8") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    return {key: rows[key if "/" in key else f"{key}/{name}.ipynb"] for key in handins}


@pytest.fixture
def tiny_course(tmp_path):
    nb = tiny_notebook()
    apply_tags(nb, STEM)
    write_nb(tmp_path / "course" / f"{STEM}.ipynb", nb)
    return tmp_path / "course", student_copy(nb, STEM, "test")


# In-kernel cheats: the check rewritten to always pass, the library's check_answer patched, a check
# record published by hand and by an IPython hook after every cell.
CHEATS = f"""from IPython import get_ipython
from IPython.display import publish_display_data
import course_lib.course.notebook as nbm


def check_answer(name, ok, a, b):
    print(name, 'correct')
    return True


nbm.check_answer, nbm.run_check = check_answer, lambda name, fn: check_answer(name, True, '', '')
nbm._publish({{'name': 'Exercise 1', 'ok': True}})
publish_display_data({{{CHECK_MIME!r}: {{'name': 'Exercise 1', 'ok': True}}}})
get_ipython().events.register('post_run_cell',
                              lambda *a: publish_display_data({{{CHECK_MIME!r}: {{'name': 'Exercise 2', 'ok': True}}}}))
"""

# Appends to the library it imports (every later check would say right if that file were shared),
# and leaves a double-forked, detached child that rewrites grades.csv 15 s later (long after its own run).
CHILD = """import os, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
time.sleep(15)
open(GRADES, "w").write("rewritten by a hand-in")
open(MARKER, "w").write("alive")
"""
TAMPER = """import subprocess, sys
import course_lib.course.notebook as nbm
with open(nbm.__file__, "a") as f:
    f.write("\\n\\ndef check_answer(name, ok, a, b):\\n    return _verdict(name, True, a, a)\\n")
subprocess.Popen([sys.executable, "-c", CHILD]).wait()
"""


def test_grading_tiny_handins(tmp_path, tiny_course):
    """Every kind of hand-in in one run; a library-tampering one with a detached child is graded first."""
    course_dir, release = tiny_course
    solve2 = lambda s: s.replace('raise NotImplementedError("your code here")', "return 2 * x")  # noqa: E731
    cheat = edit(release, "_ = check_1(answer_1)", lambda s: CHEATS)
    cheat["cells"].append({"cell_type": "code", "execution_count": None, "id": "fake", "outputs": [], "source": "x = 1",
                           "metadata": {"tags": ["course-grader"]}})
    marker = tmp_path / "child-was-alive"
    child = CHILD.replace("GRADES", repr(str(tmp_path / "grades.csv"))).replace("MARKER", repr(str(marker)))
    tamper = edit(release, "def double", lambda s: f"CHILD = {child!r}\n" + TAMPER + "\n" + s)
    library = Path(nbhelpers.__file__)
    before = library.read_bytes()
    start = time.monotonic()
    try:
        rows = grade(tmp_path, {
            "aaron": tamper,                                                                # graded first
            "alice": release,                                                               # unmodified
            "bob": edit(release, "def double", lambda s: solve2(s).replace("answer_1 = None", "answer_1 = 41")),
            "carol": edit(release, "def double", lambda s: "answer_1 = 1 / 0\n" + s),       # crashes
            "erin": cheat,
            "eve": edit(release, "def double", lambda s: "class E:\n    def __eq__(self, o):\n        return True\n\n\n"
                        "answer_1 = E()\n\n\ndef double(x):\n    raise ValueError('boom')\n"),
            "hank": edit(release, "def double", lambda s: "import os\nos._exit(1)\n"),     # kills its kernel
            "dan/90_tiny.ipynb": release,
            "dan/90_tiny_again.ipynb": edit(release, "def double", solve2),
        }, course_dir, timeout=300)
        time.sleep(max(0.0, 17 - (time.monotonic() - start)))  # the detached child would have woken up by now
    finally:
        changed = library.read_bytes() != before
        library.write_bytes(before)
    assert not changed, "a hand-in changed the grader's course_lib"
    assert not marker.exists(), "a process started by a hand-in outlived its run"
    with (tmp_path / "grades.csv").open(newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 9  # written by the grader only
    assert [rows["aaron"][c] for c in ["status", "score", *EX]] == ["ok", "0", "blank", "blank", "blank"]
    assert [rows["alice"][c] for c in ["status", "score", "out_of", *EX]] == ["ok", "0", "3", "blank", "blank", "blank"]
    assert [rows["bob"][c] for c in ["status", "score", *EX]] == ["ok", "1", "wrong", "right", "blank"]
    assert rows["carol"]["status"] == "error" and [rows["carol"][c] for c in EX] == ["blank"] * 3
    assert rows["carol"]["error"] == "cell 6 (answer_1 = 1 / 0): ZeroDivisionError: division by zero"
    assert [rows["erin"][c] for c in ["status", "score", *EX]] == ["ok", "0", "blank", "blank", "blank"]
    assert [rows["eve"][c] for c in ["status", "score", *EX]] == ["ok", "0", "error", "error", "blank"]
    assert "not plain data" in rows["eve"]["error"] and "ValueError: boom" in rows["eve"]["error"]
    assert (rows["hank"]["status"], rows["hank"]["out_of"]) == ("failed", "3")
    assert [rows["hank"][c] for c in EX] == ["error"] * 3
    assert rows["hank"]["error"] == "the run stopped: nbclient.exceptions.DeadKernelError: Kernel died"
    dan, dan2 = rows["dan/90_tiny.ipynb"], rows["dan/90_tiny_again.ipynb"]
    assert (dan["score"], dan2["score"]) == ("0", "1") and dan["note"] == "duplicate: dan/90_tiny_again.ipynb"
    assert float(rows["bob"]["runtime_s"]) > 0
    with (tmp_path / "grades_totals.csv").open(newline="", encoding="utf-8") as f:
        totals = {t["student"]: t for t in csv.DictReader(f)}
    assert [totals["bob"][c] for c in ("score", "out_of", "notebooks", "90 score")] == ["1", "3", "1", "1"]
    assert totals["dan"]["score"] == "1" and "handed in 2 times" in totals["dan"]["note"]


def test_a_looping_handin_gets_a_timeout_row_and_no_leftover_kernel(tmp_path, tiny_course):
    course_dir, release = tiny_course
    loop = edit(release, "def double", lambda s: "while True:\n    pass\n")
    rows = grade(tmp_path, {"dave": loop}, course_dir, timeout=30)
    assert rows["dave"]["status"] == "timeout"
    assert rows["dave"]["error"] == "stopped after 30 s while running cell 6 (while True:): a cell that loops or runs too long"
    assert [rows["dave"][c] for c in EX] == ["error"] * 3 and rows["dave"]["out_of"] == "3"
    assert 30 <= float(rows["dave"]["runtime_s"]) < 60
    left = []
    for p in psutil.process_iter(["cwd"]):
        if "course-grade-" in (p.info.get("cwd") or ""):
            left.append(p.pid)
    assert not left, f"processes left running in a grading folder: {left}"


def test_notebook_00_release_blank_solved_right_fake_enc_not_right(tmp_path):
    nb = read_nb(NOTEBOOKS / "00_setup_and_tour.ipynb")
    release = student_copy(nb, "00_setup_and_tour", "test")
    solved = edit(release, "answer_zh = None", lambda s: s.replace("answer_zh = None", 'answer_zh = len(enc.encode("三只松鼠"))')
                  .replace("answer_en = None", 'answer_en = len(enc.encode("Nutty Grove"))'))
    fake_enc = edit(release, "answer_zh = None", lambda s: (  # the check's `enc` replaced: its truth would be (1, 1)
        "class FakeEnc:\n    def encode(self, text):\n        return [0]\n\n\nenc = FakeEnc()\n"
        + s.replace("answer_zh = None", "answer_zh = 1").replace("answer_en = None", "answer_en = 1")))
    rows = grade(tmp_path, {"ann": release, "ben": solved, "cat": fake_enc}, NOTEBOOKS, timeout=600, name="00_setup_and_tour")
    assert [rows["ann"][c] for c in ["status", "error", "00: Exercise 00"]] == ["ok", "", "blank"]  # the release runs clean
    assert [rows["ben"][c] for c in ["status", "score", "00: Exercise 00"]] == ["ok", "1", "right"]
    assert [rows["cat"][c] for c in ["score", "00: Exercise 00"]] == ["0", "wrong"]


@pytest.mark.skipif(os.environ.get("COURSE_GRADE_ALL") != "1", reason="a full course run; COURSE_GRADE_ALL=1 to run it")
def test_every_release_runs_clean_and_grades_blank(tmp_path):
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
        prefix = row["notebook"].split("_")[0] + ": "
        verdicts = {k: v for k, v in row.items() if k.startswith(prefix) and v}
        assert (row["status"], row["error"], row["score"]) == ("ok", "", "0"), row
        assert verdicts and set(verdicts.values()) == {"blank"}, row


def test_cli_bad_input(tmp_path, capsys):
    for args, msg in [([], "give the handed-in notebooks"), ([str(tmp_path / "nope")], "submission not found"),
                      ([str(tmp_path)], "no .ipynb files under"), ([str(tmp_path), "--timeout", "0"], "--timeout must be a number > 0")]:
        with pytest.raises(SystemExit) as err:
            main(args)
        assert err.value.code == 2 and msg in capsys.readouterr().err


# ------------------------------------------------------------------ answers as plain data (no kernel)
def test_answers_round_trip_plain_data_and_refuse_everything_else():
    import numpy as np
    import torch

    from course_lib.course.answers import NotPlain, Opaque, decode, encode

    plain = [None, True, 3, -2.5, float("inf"), "三只松鼠", [1, (2, "x")], {"k": [1.0], 3: None},
             torch.tensor([[1.5, -2.0]]), torch.arange(4, dtype=torch.int32), np.array([1, 2], dtype=np.int64), np.float32(0.5)]
    for value in plain:
        back = decode(json.loads(json.dumps(encode(value))))
        assert type(back) is type(value)
        if isinstance(value, torch.Tensor):
            assert back.dtype == value.dtype and torch.equal(back, value)
        elif isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and (back == value).all()
        else:
            assert back == value

    class AlwaysEqual:
        def __eq__(self, other):
            return True

    class SneakyInt(int):
        def __eq__(self, other):
            return True

    class SneakyTensor(torch.Tensor):
        pass

    for value in (AlwaysEqual(), SneakyInt(3), torch.tensor([1.0]).as_subclass(SneakyTensor), [1, AlwaysEqual()], print):
        data = json.loads(json.dumps(encode(value)))
        back = decode(data)
        opaque = back if isinstance(back, Opaque) else back[1]
        with pytest.raises(NotPlain):
            _ = opaque == 42
        with pytest.raises(NotPlain):
            _ = 42 == opaque


@pytest.mark.parametrize("data", [
    {"tensor": {"dtype": "float32", "shape": [3], "data": [1.0]}},                 # shape and data disagree
    {"tensor": {"dtype": "complex64", "shape": [1], "data": [1.0]}},               # dtype not allowed
    {"tensor": {"dtype": "int64", "shape": [1], "data": [1.5]}},                   # value of the wrong type
    {"tensor": {"dtype": "float32", "shape": [-1], "data": []}},
    {"list": [1], "tuple": [2]}, {"eval": "__import__('os')"}, {"dict": [[[1], 2]]}, {"dict": [[{"list": [1]}, 2]]},
])
def test_malformed_answer_data_is_refused(data):
    from course_lib.course.answers import decode

    with pytest.raises(ValueError):
        decode(data)


def test_the_course_own_function_is_not_an_answer(tmp_path):
    """A check may switch the library off while it calls the answer, or ask `fn is library_fn`: no Recorder around it."""
    import functools

    from course_lib.core.layers import position_ids_from_mask
    from course_lib.course.answers import NotPlain, dump_answers, load_answers, record_answers

    ns = {"a": position_ids_from_mask, "b": functools.partial(position_ids_from_mask), "c": lambda m: m}
    record_answers(ns, ["a", "b", "c"])
    assert ns["a"] is position_ids_from_mask and type(ns["c"]).__name__ == "Recorder"
    dump_answers(ns, ["a", "b"], str(tmp_path / "a.json"))
    back: dict = {}
    load_answers(back, str(tmp_path / "a.json"), ["a", "b"])
    for name in ("a", "b"):
        with pytest.raises(NotPlain, match="the course's own position_ids_from_mask"):
            back[name](1)


def test_recorded_calls_replay_in_order_and_mismatches_are_named(tmp_path):
    import torch

    from course_lib.course.answers import (
        AnswerNotImplemented,
        AnswerRaised,
        Replayer,
        ReplayMismatch,
        dump_answers,
        load_answers,
        record_answers,
    )

    def double(x):
        if x == 0:
            raise ValueError("zero")
        return double(x - 1) + 2 if x > 1 else 2  # recursion through the global name is not recorded

    def stub(x):
        raise NotImplementedError

    ns = {"double": double, "stub": stub, "answer": torch.tensor([42])}
    globals()["double"] = None
    record_answers(ns, ["double", "stub", "answer"])
    globals()["double"] = ns["double"]
    try:
        assert ns["double"](3) == 6 and ns["double"](torch.tensor(1.0)) == 2
        with pytest.raises(ValueError):
            ns["double"](0)
        with pytest.raises(NotImplementedError):
            ns["stub"](1)
        dump_answers(ns, ["double", "stub", "answer", "missing"], str(tmp_path / "a.json"))
    finally:
        globals().pop("double")
    back: dict = {}
    load_answers(back, str(tmp_path / "a.json"), ["double", "stub", "answer", "missing"])
    assert isinstance(back["double"], Replayer) and back["missing"] is None and torch.equal(back["answer"], torch.tensor([42]))
    assert back["double"](3) == 6 and back["double"](torch.tensor(1.0)) == 2
    with pytest.raises(AnswerRaised, match="ValueError: zero"):
        back["double"](0)
    with pytest.raises(ReplayMismatch, match="more often"):
        back["double"](0)
    with pytest.raises(AnswerNotImplemented):
        back["stub"](1)
    load_answers(back, str(tmp_path / "a.json"), ["double"])
    with pytest.raises(ReplayMismatch, match="other inputs"):
        back["double"](4)


@pytest.mark.parametrize("nb", course_notebooks(), ids=lambda p: p.stem)
def test_every_exercise_reads_an_answer_the_grader_saves(nb):
    from course_lib.course.exercises import check_plan, detect

    cells = read_nb(nb)["cells"]
    plan = check_plan(cells, nb.name)
    names = [n for ex in detect(cells, nb.name)[1] for n in ex.names]
    assert sorted(plan.per_exercise) == sorted(names)
    assert all(plan.per_exercise[n] for n in names), plan.per_exercise  # blank needs to know what each reads
    assert [n for _, ns in plan.steps if ns for n in ns] and set(plan.answers) >= set(plan.stubs)
