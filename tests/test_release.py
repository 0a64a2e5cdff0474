"""The exercise convention and the student release: tags derived from code, no solution in any release."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest
from instructor_fixtures import EXERCISES, EXPECTED_TAGS, SECRET, STEM, tiny_notebook

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
