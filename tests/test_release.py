"""The exercise convention and the student release: tags derived from code, no solution in any release."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from instructor_fixtures import EXERCISES, EXPECTED_TAGS, SECRET, STEM, tiny_notebook

from course_lib.core.paths import display_path
from course_lib.course.exercises import DETAILS_SOLUTION, ConventionError, apply_tags, check_code, detect, source, tagged
from course_lib.course.release import course_notebooks, main, read_nb, stale_tags, student_copy, tag_notebooks

BOOKS = course_notebooks()


def test_tags_follow_the_convention_and_are_idempotent():
    nb = tiny_notebook()
    tags, exercises = detect(nb["cells"], STEM)
    assert tags == EXPECTED_TAGS
    assert [n for ex in exercises for n in ex.names] == EXERCISES
    assert apply_tags(nb, STEM) is True
    assert apply_tags(nb, STEM) is False  # a second run changes nothing
    assert nb["cells"][3]["metadata"]["tags"] == ["parameters"]  # other tags kept
    assert stale_tags(nb, STEM) == []


@pytest.mark.parametrize("break_it, message", [
    (lambda c: c.pop(9), "exercise at cell 5: no solution"),
    (lambda c: c[7].update(source=source(c[7]).replace("_ = check_2(double)", "")), "cell 5: placeholder function 'double' is used by no check"),
    (lambda c: c[7].update(source=source(c[7]).replace('"Exercise 1"', "NAME")), "cell 7: a check's exercise name is not a string literal"),
    (lambda c: c.insert(4, nbformat.v4.new_code_cell("_ = check_answer('early', True, '', '')")), "cell 4: calls a check but no exercise stub"),
])
def test_broken_convention_names_notebook_and_cell(break_it, message):
    nb = tiny_notebook()
    break_it(nb["cells"])
    with pytest.raises(ConventionError, match=re.escape("90_tiny: " + message)):
        detect(nb["cells"], "90_tiny")


def test_tagger_writes_nothing_when_a_notebook_breaks(tmp_path):
    good, bad = tmp_path / "00_good.ipynb", tmp_path / "01_bad.ipynb"
    nbformat.write(tiny_notebook(), good)
    broken = tiny_notebook()
    broken["cells"].pop(9)
    nbformat.write(broken, bad)
    before = good.read_bytes()
    with pytest.raises(ConventionError, match="01_bad.ipynb: exercise at cell 5"):
        tag_notebooks([good, bad])
    assert good.read_bytes() == before
    assert tag_notebooks([good]) == [good] and tag_notebooks([good]) == []


@pytest.mark.parametrize("nb", BOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_tagged_stub_check_and_solution(nb):
    """course_doctor-style: the stored tags are the convention's, and every exercise is complete."""
    data = read_nb(nb)
    assert stale_tags(data, nb.name) == [], "run: python -m course_lib.course.release --tag-notebooks"
    _, exercises = detect(data["cells"], nb.name)  # raises, naming the cell, if an exercise lacks a part
    assert exercises, f"{nb.name} has no exercise"
    for ex in exercises:
        assert ex.stub_cells and ex.check_cells and ex.solution_cells and ex.names
        assert all(tagged(data["cells"][i], "solution") for i in ex.solution_cells)


def solution_lines(nb: dict) -> set[str]:
    """Lines of solution code (code cells and ``` blocks in tagged cells) that appear nowhere else in the notebook."""
    sol, other = set(), set()
    for cell in nb["cells"]:
        text = source(cell)
        if tagged(cell, "solution") and cell["cell_type"] == "markdown" and DETAILS_SOLUTION.search(text):
            other.update(ln.strip() for ln in DETAILS_SOLUTION.sub("", text).splitlines())  # the prose around it stays
            text = "".join(m.group(0) for m in DETAILS_SOLUTION.finditer(text))
        lines = {ln.strip() for ln in text.splitlines() if len(ln.strip()) > 12 and not ln.strip().startswith(("```", "<"))}
        (sol if tagged(cell, "solution") else other).update(lines)
        if not tagged(cell, "solution"):
            for out in cell.get("outputs", []):
                other.update(ln.strip() for ln in "".join(out.get("text", "")).splitlines())
    return sol - other


@pytest.mark.parametrize("nb", BOOKS, ids=lambda p: p.stem)
def test_release_contains_no_solution(nb):
    data = read_nb(nb)
    release = student_copy(data, nb.stem, "test-release")
    text = json.dumps(release, ensure_ascii=False)
    secret = solution_lines(data)
    assert secret, "no solution code found to look for"
    leaked = [ln for ln in secret if json.dumps(ln, ensure_ascii=False)[1:-1] in text]
    assert not leaked, f"solution lines in the release of {nb.name}: {leaked[:3]}"
    assert "<summary>Solution" not in text and not any(tagged(c, "solution") for c in release["cells"])
    assert release["metadata"]["inside_inference"] == {"release": "test-release", "notebook": nb.stem}
    assert "Student release `test-release`" in source(release["cells"][0])
    for cell in release["cells"]:
        if tagged(cell, "exercise") or tagged(cell, "check"):
            assert cell["outputs"] == [] and cell["execution_count"] is None
    kept = [c for c in data["cells"] if not tagged(c, "solution") and not tagged(c, "exercise") and not tagged(c, "check")]
    assert sum(len(c.get("outputs", [])) for c in kept) == sum(
        len(c.get("outputs", [])) for c in release["cells"] if c["cell_type"] == "code")  # other outputs kept


def test_release_of_tiny_notebook(tmp_path):
    nb = tiny_notebook()
    apply_tags(nb, STEM)
    release = student_copy(nb, STEM, "r1")
    text = json.dumps(release)
    assert SECRET not in text
    sources = [source(c) for c in release["cells"]]
    assert "**Exercise 3.** Which word names this course's topic? Set `word`." in sources  # prose kept, block cut
    assert "A solution, checked the same way:" not in sources
    assert "_ = check_1(answer_1)\n_ = check_2(double)" in "\n".join(sources)


def test_release_refuses_stale_tags():
    nb = tiny_notebook()  # never tagged
    with pytest.raises(ConventionError, match="cell 9 is tagged \\[\\], the convention says \\['solution'\\]"):
        student_copy(nb, STEM, "r1")


def test_check_code_keeps_only_what_the_grader_reruns():
    code = ('import torch\nanswer = None  # yours\n\n\ndef f(x):\n    raise NotImplementedError\n\n\n'
            'save(model, "m.pt", overwrite=False)\n\n\ndef check():\n    return answer == 1, "", ""\n\n\n'
            '_ = run_check("E", check)\nok = check_1(f)\n')
    assert check_code(code, {"check_1"}) == ('import torch\n\ndef check():\n    return answer == 1, "", ""\n\n'
                                             '_ = run_check("E", check)\n\nok = check_1(f)\n')


def test_cli(tmp_path):
    nb_path = tmp_path / f"{STEM}.ipynb"
    nbformat.write(tiny_notebook(), nb_path)
    assert main([str(nb_path), "--check-tags"]) == 1
    assert main([str(nb_path), "--tag-notebooks"]) == 0
    assert main([str(nb_path), "--check-tags"]) == 0
    assert main([str(nb_path), "--out", str(tmp_path / "student"), "--name", "spring"]) == 0
    out = read_nb(tmp_path / "student" / nb_path.name)
    assert out["metadata"]["inside_inference"]["release"] == "spring"
    for args, msg in [([], "give exactly one of"), (["--out", "x", "--tag-notebooks"], "give exactly one of"),
                      (["nope.ipynb", "--out", "x"], "notebook not found: nope.ipynb")]:
        r = subprocess.run([sys.executable, "-m", "course_lib.course.release", *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr


# ------------------------------------------------------------- where the release may write (issue 20)
def _tiny_source(tmp_path):
    src = tmp_path / "course" / f"{STEM}.ipynb"
    src.parent.mkdir(parents=True)
    nb = tiny_notebook()
    apply_tags(nb, STEM)
    nbformat.write(nb, src)
    return src


def _release(src, out, capsys, *extra):
    code = main([str(src), "--out", str(out), "--name", "r", *extra])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("where", ["notebooks", "notebooks/sub", "course_lib", ".", "tests/out"])
def test_release_refuses_the_source_tree(tmp_path, capsys, where):
    from course_lib.core.paths import REPO_ROOT

    out = REPO_ROOT / where
    before = {p: p.stat().st_mtime_ns for p in (REPO_ROOT / "notebooks").glob("*.ipynb")}
    created = not out.exists()
    try:
        code, err = _release(_tiny_source(tmp_path), out, capsys)
        assert code == 2 and len(err) == 1 and "inside the course's source tree" in err[0], err
        assert not (out / f"{STEM}.ipynb").exists()
        assert {p: p.stat().st_mtime_ns for p in (REPO_ROOT / "notebooks").glob("*.ipynb")} == before
    finally:
        (out / f"{STEM}.ipynb").unlink(missing_ok=True)  # only if the refusal regressed
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def test_release_under_build_is_allowed(tmp_path, capsys):
    from course_lib.core.paths import REPO_ROOT

    out = REPO_ROOT / "build" / f"test-release-{os.getpid()}"
    try:
        code, err = _release(_tiny_source(tmp_path), out, capsys)
        assert code == 0 and (out / f"{STEM}.ipynb").is_file() and (out / ".course-release").is_file()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_release_refuses_a_folder_it_did_not_make_and_replaces_its_own(tmp_path, capsys):
    src = _tiny_source(tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, err = _release(src, foreign, capsys)
    assert code == 2 and len(err) == 1 and "already holds files the release did not write" in err[0]
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    code, err = _release(src, tmp_path / "course", capsys)  # the folder of the source notebook itself
    assert code == 2 and "holds the source notebook" in err[0] and src.is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _release(src, empty, capsys)[0] == 0
    (empty / "leftover.ipynb").write_text("{}")  # from an earlier release of a notebook no longer released
    assert main([str(src), "--out", str(empty), "--name", "second"]) == 0
    assert sorted(p.name for p in empty.iterdir()) == [".course-release", f"{STEM}.ipynb"]
    assert read_nb(empty / f"{STEM}.ipynb")["metadata"]["inside_inference"]["release"] == "second"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def _fail_on_second_write(monkeypatch, exc):
    from course_lib.course import release as rel

    real, calls = rel._write_file, []

    def write(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise exc
        real(path, text)

    monkeypatch.setattr(rel, "_write_file", write)


@pytest.mark.parametrize("exc, code, needle", [
    (OSError(28, "No space left on device", "x.ipynb"), 2, "No space left on device"),
    (KeyboardInterrupt(), 130, "release interrupted"),
])
def test_release_disk_full_or_ctrl_c_leaves_the_earlier_release(tmp_path, capsys, monkeypatch, exc, code, needle):
    src = _tiny_source(tmp_path)
    out = tmp_path / "student"
    assert _release(src, out, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fail_on_second_write(monkeypatch, exc)
    got, err = _release(src, out, capsys, "--name", "broken")
    assert got == code and len(err) == 1 and needle in err[0] and "nothing written" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("where", ["proc", "under_file"])
def test_release_unwritable_folder_is_one_line(tmp_path, capsys, where):
    src = _tiny_source(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = {"proc": Path("/proc/course_release_test"), "under_file": tmp_path / "afile" / "out"}[where]
    code, err = _release(src, out, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("release:") and "nothing written" in err[0], err
    assert display_path(out) in err[0] or str(out) in err[0]
