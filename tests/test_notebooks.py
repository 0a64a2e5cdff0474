"""Notebook structure and papermill parameters (strict nbval itself runs in `make test`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from course_lib.core.paths import NOTEBOOKS, REPO_ROOT
from course_lib.course.run_course import declared_parameters, notebooks, resolve_params

BOOKS = notebooks()
CASES = REPO_ROOT / "tests" / "papermill"


def load(nb):
    return json.loads(nb.read_text(encoding="utf-8"))


def outputs_text(nb_json) -> str:
    parts = []
    for cell in nb_json["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            for key in ("text/plain", "text/markdown", "text/html"):
                parts.append("".join(out.get("data", {}).get(key, "")))
            if out.get("output_type") == "error":
                parts.append(f"{out['ename']}: {out['evalue']}")
    return "\n".join(parts)


def test_there_are_notebooks():
    assert [b.name[:2] for b in BOOKS][:2] == ["00", "01"]
    ids = [b.stem.split("_")[0] for b in BOOKS]
    assert ids == sorted(ids) and ("02b" not in ids or ids.index("02b") == ids.index("02") + 1)


@pytest.mark.parametrize("nb", BOOKS, ids=lambda p: p.stem)
def test_notebook_conventions(nb):
    cells = load(nb)["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = declared_parameters(nb)
    assert "device" in params and "seed" in params
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and i > 0 and i not in tagged:
            assert cells[i - 1]["cell_type"] == "markdown" or "".join(cells[i - 1]["source"]).strip().startswith("#"), \
                f"code cell {i} has no prose before it"
    assert any("exercise" in "".join(c["source"]).lower() for c in cells if c["cell_type"] == "markdown")
    assert nb.stat().st_size < 3_000_000


@pytest.mark.parametrize("nb", BOOKS, ids=lambda p: p.stem)
def test_papermill_parameters_take_effect(nb, tmp_path):
    """Run the notebook headless with non-default parameters; its outputs must show their effect."""
    pm = pytest.importorskip("papermill")
    case_file = CASES / f"{nb.stem.split('_')[0]}.json"  # 02.json, 02b.json, ...
    assert case_file.exists(), f"add {case_file.relative_to(REPO_ROOT)} with parameters and expected outputs"
    case = json.loads(case_file.read_text(encoding="utf-8"))
    resolve_params({nb.stem: case["parameters"]}, BOOKS)  # every parameter is declared by the notebook
    out = tmp_path / nb.name
    pm.execute_notebook(str(nb), str(out), parameters=case["parameters"], cwd=str(NOTEBOOKS),
                        kernel_name="python3", progress_bar=False)
    text = outputs_text(load(out))
    for expected in case["expect"]:
        assert expected in text, f"{nb.name} with {case['parameters']}: {expected!r} not in outputs"


def test_bad_parameter_stops_with_clear_message(tmp_path):
    pm = pytest.importorskip("papermill")
    nb = next(b for b in BOOKS if b.name.startswith("01"))
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(tmp_path / "bad.ipynb"), parameters={"device": "gpu0"},
                            cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    assert "ParameterError" in str(err.value) and "'device' must be one of" in str(err.value)


def test_run_course_rejects_unknown_notebook_and_parameter(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("99_nope:\n  seed: 1\n")
    r = subprocess.run([sys.executable, "-m", "course_lib.course.run_course", "--params", str(bad), "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown notebook '99_nope'" in r.stderr
    bad.write_text("00:\n  temprature: 1\n")
    r = subprocess.run([sys.executable, "-m", "course_lib.course.run_course", "--params", str(bad), "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "has no parameter(s) ['temprature']" in r.stderr
    assert list(tmp_path.iterdir()) == [bad]  # nothing ran, nothing written
