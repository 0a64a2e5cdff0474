"""`make course`: parameters are data, every problem reported at once, and a run folder an instructor can hand out.

The end-to-end runs use tiny fixture notebooks (a kernel start each, a few seconds), not the course.
"""

from __future__ import annotations

import ast
import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from course_lib.core.paths import REPO_ROOT
from course_lib.course.params import MAX_BYTES, ParamsError, _literal, _same, as_literal, load_yaml, read_text_file, read_yaml
from course_lib.course.run_course import notebooks, resolve_params, select

CRAFTED = "x'); import os; os.system('touch {marker}'); ('"
CHROMIUM = Path("/usr/bin/chromium")


def run_module(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "course_lib.course.run_course", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


# ------------------------------------------------------------------------------ YAML as plain data
@pytest.mark.parametrize("text, needle", [
    ("seed: !!binary aGVsbG8=\n", "binary"),
    ("seed: !!python/object/apply:os.system ['touch /tmp/x']\n", "python/object/apply:os.system"),
    ("seed: !!python/name:os.system\n", "python/name:os.system"),
    ("names: !!set {a, b}\n", "set"),
    ("day: 2024-01-01\n", "quote it"),
    ("a: &x [1, 2]\nb: *x\n", "alias *x"),
    ("seed: 1\nseed: 2\n", "given twice"),
    ("? [1, 2]\n: 3\n", "a key must be a name"),
])
def test_yaml_refuses_everything_but_plain_data(text, needle):
    with pytest.raises(ParamsError) as err:
        load_yaml(text, "p.yaml")
    assert any(needle in line and line.startswith("p.yaml, line ") for line in err.value.problems), err.value.problems


def test_yaml_keeps_plain_data_and_reports_every_bad_value_with_its_line():
    data, problems = read_yaml("02:\n  temperature: 1.5\n  day: 2024-01-01\n  seeds: [1, null, true, 'x']\n"
                               "04:\n  blob: !!binary aGk=\n", "p.yaml")
    assert data == {2: {"temperature": 1.5, "seeds": [1, None, True, "x"]}, 4: {}}
    assert [p.split(":")[0] for p in problems] == ["p.yaml, line 3", "p.yaml, line 6"]


def test_an_alias_bomb_is_refused_without_expanding_it():
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    with pytest.raises(ParamsError) as err:
        load_yaml("\n".join(levels) + "\n", "bomb.yaml")  # 9**9 leaves if expanded
    assert len(err.value.problems) == 9 + 8 * 9  # every anchor and every alias, each one line


def test_yaml_refuses_deep_nesting_and_oversized_files(tmp_path):
    with pytest.raises(ParamsError, match="nested deeper"):
        load_yaml("[" * 200 + "]" * 200)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ValueError, match="at most 65,536"):
        read_text_file(big)


@pytest.mark.parametrize("value", [CRAFTED, 'a"b\\"c\n\'', "\\x00\u2028", [1, 2.5, None, True, "s", {"k": "v"}],
                                   float("nan"), float("-inf"), 10**30])
def test_values_reach_the_notebook_as_literals_equal_to_themselves(value):
    source = as_literal(value)  # what papermill will inject
    tree = ast.parse(source, mode="eval")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert all(ast.unparse(c) in ("float('nan')", "float('inf')", "float('-inf')") for c in calls), source
    assert _same(_literal(tree.body), value)


@pytest.mark.parametrize("value, needle", [(b"bytes", "bytes"), ({1: "x"}, "use text keys"), ((1, 2), "tuple"),
                                           ({"a"}, "set")])
def test_values_that_are_not_plain_data_are_refused(value, needle):
    with pytest.raises(ParamsError, match=needle):
        as_literal(value)


# ------------------------------------------------------------------------------ every problem at once
def test_resolve_params_reports_every_problem_with_did_you_mean():
    books = notebooks()
    spec = {"00": {"temprature": 1.0}, "01_checkpoints_and_eval_mod": {"seed": 1}, "02": {"temperature": b"x"},
            "04": {"seed": 1}, "04_act_halting_loops": {"seed": 2}}
    with pytest.raises(ParamsError) as err:
        resolve_params(spec, books)
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 4, text
    assert "has no parameter(s) ['temprature'] (did you mean 'temperature'?)" in text
    assert "unknown notebook '01_checkpoints_and_eval_mod' in the parameters file (did you mean '01_checkpoints_and_eval_mode'?)" in text
    assert "02_autoregressive_sampling: temperature: bytes" in text
    assert "names 04_act_halting_loops twice" in text


def test_only_accepts_numbers_and_names_and_suggests_near_misses():
    books = notebooks()
    assert [b.stem[:3] for b in select(["2", "02b", "05_rope_and_position_ids"], books)] == ["02_", "02b", "05_"]
    with pytest.raises(ParamsError, match=r"--only '05_rope_and_positon_ids' names no notebook \(did you mean '05_rope_and_position_ids'\?\)"):
        select(["05_rope_and_positon_ids"], books)


def test_cli_lists_every_problem_then_exits_2_before_anything_runs(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("00:\n  temprature: 1\n  seed: !!python/object/apply:os.system ['touch x']\n0x:\n  a: 1\n")
    r = run_module("--params", str(params), "--only", "00", "zz", "-p", "sede", "3", "--out", str(tmp_path / "build"))
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(errors) == 5, r.stderr
    for needle in ("python/object/apply:os.system", "'temprature'] (did you mean 'temperature'?)", "unknown notebook '0x'",
                   "--only 'zz'", "-p sede: no notebook run here declares 'sede' (did you mean 'seed'?)"):
        assert any(needle in e for e in errors), (needle, r.stderr)
    assert not (tmp_path / "build").exists() and not (tmp_path / "x").exists()


def test_list_shows_each_notebooks_parameters():
    r = run_module("--list")
    assert r.returncode == 0 and "00_setup_and_tour\n    device='cpu', seed=0" in r.stdout.replace('"', "'"), r.stdout


# ------------------------------------------------------------------------------ a run folder to hand out
def fixture_notebook(folder: Path, name: str, cells: list[str], params: str = "device = 'cpu'\nseed = 0\nname = 'x'") -> Path:
    """A tiny course-shaped notebook: title, a tagged parameters cell, then `cells`."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), p, *(nbformat.v4.new_code_cell(c) for c in cells)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path


FIGURE = ("import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n%matplotlib inline\n"
          "plt.plot([0, 1], [1, 0]); plt.title('a figure'); plt.show()")


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    """One run over three fixture notebooks (ok with a figure, a parameter the notebook refuses, a crafted string)."""
    root = tmp_path_factory.mktemp("course")
    books = root / "nbs"
    marker = root / "pwned"
    fixture_notebook(books, "00_figure", [FIGURE, "print('name is', repr(name))"])
    fixture_notebook(books, "01_refuses", ["if seed < 0:\n    raise ValueError(f\"'seed' must be >= 0, got {seed}\\nsecond line\")",
                                           "print('never')"])
    fixture_notebook(books, "02_echo", ["print(repr(name))"])
    params = root / "p.yaml"
    params.write_text(json.dumps({"01": {"seed": -1}, "02_echo": {"name": CRAFTED.format(marker=marker)}}))
    r = run_module("--notebooks", str(books), "--params", str(params), "--out", str(root / "build"))
    return root, r, marker


def test_a_run_writes_summaries_html_and_an_index(course_run):
    root, r, marker = course_run
    assert r.returncode == 1, r.stdout + r.stderr  # one notebook failed
    run = root / "build" / "run-001"
    rows = list(csv.DictReader((run / "summary.csv").open(encoding="utf-8")))
    assert [(x["notebook"], x["status"]) for x in rows] == [("00_figure", "ok"), ("01_refuses", "error"), ("02_echo", "ok")]
    assert list(rows[0]) == ["notebook", "status", "seconds", "parameters", "error", "commit", "dirty"]
    assert all(float(x["seconds"]) > 0 and len(x["commit"]) in (40, 7) and x["dirty"] in ("yes", "no") for x in rows)
    # the notebook's own message, one line: not papermill's traceback
    assert rows[1]["error"] == "cell 3: ValueError: 'seed' must be >= 0, got -1"
    assert json.loads(rows[1]["parameters"]) == {"seed": -1}
    assert "| 01_refuses | error |" in (run / "summary.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in run.iterdir()) == [
        "00_figure.html", "00_figure.ipynb", "01_refuses.FAILED.html", "01_refuses.FAILED.ipynb",
        "02_echo.html", "02_echo.ipynb", "index.html", "summary.csv", "summary.md"]
    index = (run / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{n}"' in index for n in ("00_figure.html", "01_refuses.FAILED.html", "02_echo.html", "summary.csv"))
    assert "Traceback" not in r.stdout + r.stderr and "without encryption" not in r.stdout + r.stderr
    assert "cell 3: ValueError: 'seed' must be >= 0, got -1" in r.stdout


def test_a_crafted_string_arrives_as_the_same_string_and_runs_nothing(course_run):
    root, _, marker = course_run
    nb = json.loads((root / "build" / "run-001" / "02_echo.ipynb").read_text(encoding="utf-8"))
    printed = "".join(nb["cells"][-1]["outputs"][0]["text"]).strip()
    assert printed == repr(CRAFTED.format(marker=marker))
    assert not marker.exists()


def test_a_second_run_gets_a_new_folder(course_run, tmp_path):
    root, _, _ = course_run
    books = tmp_path / "nbs"
    fixture_notebook(books, "00_echo", ["print(name)"])
    r = run_module("--notebooks", str(books), "--out", str(root / "build"), "--no-html", "-p", "name", "hello")
    assert r.returncode == 0, r.stderr
    run2 = root / "build" / "run-002"
    assert (root / "build" / "run-001" / "summary.csv").exists() and (run2 / "00_echo.ipynb").exists()
    assert not (run2 / "00_echo.html").exists() and '"hello"' in (run2 / "summary.csv").read_text()


def test_html_page_holds_the_figure_as_an_embedded_png(course_run):
    page = (course_run[0] / "build" / "run-001" / "00_figure.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 1  # an <img>, not the template's CSS


def chromium_image_sizes(page: Path) -> list[tuple[int, int]]:
    """Natural sizes of every <img> once Chromium has loaded the page (headless, no network)."""
    probe = page.with_name("probe_" + page.name)
    script = ("<script>window.addEventListener('load', () => { const s = [...document.images].map("
              "i => i.naturalWidth + 'x' + i.naturalHeight).join(' '); const p = document.createElement('pre');"
              " p.id = 'img-sizes'; p.textContent = 'SIZES[' + s + ']'; document.body.appendChild(p); });</script>")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                           capture_output=True, text=True, timeout=120)
    found = r.stdout.split('<pre id="img-sizes">SIZES[', 1)  # the element the script added, not its source
    assert len(found) == 2, r.stderr[-2000:]
    return [tuple(int(n) for n in s.split("x")) for s in found[1].split("]", 1)[0].split()]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: the embedded-PNG check above still ran")
def test_html_page_shows_its_figure_in_chromium(course_run):
    sizes = chromium_image_sizes(course_run[0] / "build" / "run-001" / "00_figure.html")
    assert sizes and all(w > 0 and h > 0 for w, h in sizes), sizes


# ------------------------------------------------------------------------------ kernels and Ctrl-C
def test_kernels_start_with_encryption_so_ipykernel_has_nothing_to_warn_about():
    from course_lib.course.kernels import QuietKernelManager

    async def start_and_stop() -> str:
        km = QuietKernelManager(kernel_name="python3")
        with tempfile.TemporaryFile() as err:
            await km.start_kernel(stderr=err)  # keep the kernel's own log to read it
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            kc.stop_channels()
            await km.shutdown_kernel(now=True)
            err.seek(0)
            return err.read().decode("utf-8", "replace")

    log = asyncio.run(start_and_stop())
    assert "without encryption" not in log, log


def test_ctrl_c_is_one_line_exit_130_and_keeps_finished_notebooks(tmp_path):
    books = tmp_path / "nbs"
    fixture_notebook(books, "00_quick", ["print('done')"])
    fixture_notebook(books, "01_slow", ["import time\nfor _ in range(600):\n    time.sleep(0.1)"])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "course_lib.course.run_course", "--notebooks", str(books), "--out",
                             str(tmp_path / "build"), "--no-html"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = tmp_path / "build" / "run-001"
    deadline = time.monotonic() + 120
    while not (run / ".01_slow.partial.ipynb").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert err.strip().splitlines() == ["interrupted (Ctrl-C): the notebooks finished so far are kept; "
                                        "the one that was running was removed"], err
    assert sorted(p.name for p in run.iterdir()) == ["00_quick.ipynb", "index.html", "summary.csv", "summary.md"]
    rows = list(csv.DictReader((run / "summary.csv").open()))
    assert [(x["notebook"], x["status"]) for x in rows] == [("00_quick", "ok"), ("01_slow", "interrupted")]


def test_the_course_runs_a_real_notebook(tmp_path):
    """ONLY=00 through the CLI: the shipped notebook passes and its page shows every image output it has."""
    r = run_module("--only", "00", "--out", str(tmp_path / "build"))
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "build" / "run-001"
    nb = json.loads((run / "00_setup_and_tour.ipynb").read_text(encoding="utf-8"))
    pngs = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert (run / "00_setup_and_tour.html").read_text(encoding="utf-8").count('src="data:image/png;base64,') == pngs
    assert "00_setup_and_tour,ok," in (run / "summary.csv").read_text(encoding="utf-8")
