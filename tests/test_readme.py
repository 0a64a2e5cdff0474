"""The README works as written: every command in its bash blocks (and in MAINTAINERS.md) runs from the repo root.

Each command is checked by what it is, from a fresh clone's point of view (nothing activated):
- `make ...` runs as `make -n ...` (the target exists and expands; nothing is built or started);
- a course tool with `--help` or `--list` runs as written and must exit 0;
- any other course tool (it would compute or write) runs with `--help` instead, and every `--flag`
  the README gives it must appear in that help, so a renamed flag fails here;
- commands that install, start servers, run the whole test suite or change your files are skipped,
  each with its reason (pytest -rs prints them).
Also: no bare `python`/`pytest`/`torchrun`, every link resolves inside the repository, the chapter
table links every notebook with a run time, and nothing points outside the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.core.paths import NOTEBOOKS, REPO_ROOT
from course_lib.course.run_course import notebooks

DOCS = ["README.md", "MAINTAINERS.md"]
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
SKIP = {  # first word(s) -> why it is not run here
    "python3 -m venv": "creates .venv (what every make target does first)",
    ".venv/bin/pip": "installs packages",
    ".venv/bin/jupyter": "starts JupyterLab or re-executes a notebook",
    ".venv/bin/pytest": "runs (part of) the test suite, which is running now",
    ".venv/bin/ruff": "runs in make test",
    ".venv/bin/python -m pytest": "runs (part of) the test suite, which is running now",
    "git": "changes your working tree",
    "ssh": "needs a remote machine",
}
BARE = {"python", "pytest", "torchrun", "jupyter", "papermill", "pip", "ruff"}


def bash_commands(doc: str) -> list[tuple[str, str]]:
    """(where, command) for every command line of every ```bash block; `a && b` is two commands."""
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    out = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        first_line = text[: block.start()].count("\n") + 2
        lines = block.group(1).replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append((f"{doc}:{first_line + i}", shlex.join(words[:cut])))
                words = words[cut + 1:]
    return out


COMMANDS = [c for doc in DOCS for c in bash_commands(doc)]


def run(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    # a clean environment for make: under `make test` the outer make's MAKEFLAGS/MAKELEVEL would make the
    # inner one print "Entering directory" lines around what it echoes
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"}}
    env.update({"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def tool_and_flags(words: list[str]) -> tuple[list[str], list[str]]:
    """(the command that prints the tool's help, the --flags the README passes it)."""
    if words[0].endswith("torchrun"):
        m = words.index("-m")
        words = [str(VENV_PYTHON), "-m", *words[m + 1:]]  # the module's own parser; torchrun's flags are torchrun's
    cut = 3 if words[1] == "-m" else 2
    flags = [w.split("=")[0] for w in words[cut:] if w.startswith("--")]
    return words[:cut], flags


def test_readme_commands_were_found():
    assert len(COMMANDS) > 20
    assert {where.split(":")[0] for where, _ in COMMANDS} == set(DOCS)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_readme_command(where, command):
    words = shlex.split(command)
    assert words[0] not in BARE, f"{where}: `{command}` needs a bare {words[0]}; write .venv/bin/{words[0]} or a make target"
    for prefix, why in SKIP.items():
        if command.startswith(prefix):
            pytest.skip(f"{where}: {why}: {command}")
    if words[0] == "make":
        r = run(["make", "-n", *words[1:]])
        assert r.returncode == 0, f"{where}: make -n {shlex.join(words[1:])}\n{r.stderr}"
        return
    assert words[0].startswith(".venv/bin/"), f"{where}: add a rule to tests/test_readme.py for `{command}`"
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv here: run `make test`, which creates it")
    words[0] = str(REPO_ROOT / words[0])
    if "--help" in words or "--list" in words:
        r = run(words)
        assert r.returncode == 0 and r.stdout.strip(), f"{where}: `{command}` exit {r.returncode}\n{r.stderr[-2000:]}"
        return
    tool, flags = tool_and_flags(words)
    r = run([*tool, "--help"])
    assert r.returncode == 0, f"{where}: `{shlex.join(tool)} --help` exit {r.returncode}\n{r.stderr[-2000:]}"
    unknown = [f for f in flags if f not in r.stdout]
    assert not unknown, f"{where}: `{command}` passes {unknown}, which `--help` does not list"


def test_no_command_uses_a_bare_interpreter_anywhere_in_the_docs():
    for doc in DOCS:
        for where, command in bash_commands(doc):
            assert shlex.split(command)[0] not in BARE, f"{where}: {command}"


# ------------------------------------------------------------------------------ links and the chapter table
def links(doc: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8"))


@pytest.mark.parametrize("doc", ["README.md", "MAINTAINERS.md", "notebooks/SOURCES.md", "benchmarks/README.md"])
def test_every_link_resolves_inside_the_repository(doc):
    path = REPO_ROOT / doc
    for link in links(path):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.is_relative_to(REPO_ROOT) and file.exists(), f"{doc}: link {link} does not resolve in the repository"
        if anchor and file.suffix == ".md":
            text = file.read_text(encoding="utf-8")
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}
            assert f'id="{anchor}"' in text or anchor in slugs, f"{doc}: anchor #{anchor} not in {target or doc}"


def test_sources_page_has_an_anchor_for_each_seed():
    text = (NOTEBOOKS / "SOURCES.md").read_text(encoding="utf-8")
    for n in range(5):
        assert f'<a id="seed-00{n}"></a>' in text


def test_chapter_table_links_every_notebook_with_a_run_time():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| \w+ \| \[[^]]+\]\(notebooks/([^)]+\.ipynb)\) \|.*\| (\d+) \|$", readme, re.M)}
    assert sorted(rows) == sorted(p.name for p in notebooks()), "every notebook needs a row with a link and a run time"
    slow = {name: s for name, s in rows.items() if int(s) > 60}
    assert not slow, f"the course's rule is at most 60 s per notebook on 2 idle cores: {slow}"


def test_nothing_points_outside_the_repository():
    """No tracked file has a relative path that climbs out of the repository, or a path on the machine
    the course was built on (a clone has neither)."""
    files = run(["git", "ls-files"]).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    bad = []
    for name in files:
        path = REPO_ROOT / name
        if path.suffix not in (".py", ".md", ".ipynb", ".cfg", ".toml", ".txt", ".json", ".yaml", "") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for rel in re.findall(r"(?<![\w./])((?:\.\./)+[\w.-]+)", text):
            if not (path.parent / rel).resolve().is_relative_to(REPO_ROOT):
                bad.append(f"{name}: {rel}")
        bad += [f"{name}: {m}" for m in re.findall(r"(?<![\w.])/work/[\w.-]+", text)]
    assert not bad, bad


# ------------------------------------------------------------------------------ make targets
def make_n(*args: str) -> str:
    r = run(["make", "-n", *args])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def expand(line: str) -> list[str]:
    """A make -n line as the shell would run it (the $(...) that picks the encryption flag evaluated)."""
    r = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], cwd=REPO_ROOT, capture_output=True, text=True)
    return r.stdout.split()


def test_make_lab_adds_allow_root_only_for_root_and_passes_lab_args():
    if not VENV_PYTHON.exists():
        pytest.skip("no .venv here: run `make test`, which creates it")
    encrypt = ["--KernelManager.transport_encryption=auto"]  # pyzmq's wheels have Curve
    lab = [".venv/bin/jupyter", "lab"]
    assert expand(make_n("lab", "USER_ID=0")) == [*lab, "--allow-root", *encrypt, "notebooks/"]
    assert expand(make_n("lab", "USER_ID=1000", "LAB_ARGS=--port 8890 --no-browser")) == \
        [*lab, *encrypt, "--port", "8890", "--no-browser", "notebooks/"]
    assert ("--allow-root" in expand(make_n("lab"))) == (os.geteuid() == 0)


def test_make_lab_student_releases_into_build_student_and_opens_it():
    out = run(["make", "-n", "lab-student", "USER_ID=1000"]).stdout
    assert "course_lib.course.release --out build/student" in out
    assert out.strip().splitlines()[-1].startswith(".venv/bin/jupyter lab  $(")
    assert out.strip().splitlines()[-1].endswith(" build/student/")


def test_make_course_passes_only_params_and_extra_args():
    line = make_n("course", "ONLY=02 05", "PARAMS=p.yaml", "COURSE_ARGS=-p seed 3")
    assert line.split() == [".venv/bin/python", "-m", "course_lib.course.run_course", "--out", "build", "--only", "02", "05",
                            "--params", "p.yaml", "-p", "seed", "3"]
    assert make_n("course").split() == [".venv/bin/python", "-m", "course_lib.course.run_course", "--out", "build"]


def test_make_wheelhouse_and_test_gpu_never_install_torch_from_the_network():
    wheel = run(["make", "-n", "wheelhouse"]).stdout
    assert "grep -v '^torch==' requirements.txt > wheelhouse/requirements.txt" in wheel
    assert "pip download --dest wheelhouse" in wheel
    gpu = run(["make", "-n", "test-gpu", "PYTHON=/opt/cuda-python"]).stdout
    assert "/opt/cuda-python -m venv --system-site-packages build/venv-gpu" in gpu
    assert "--no-index --find-links wheelhouse" in gpu and "tests/gpu_run.py" in gpu
    assert "wheelhouse/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_make_test_gpu_without_cuda_is_one_line_and_exit_0():
    r = run(["make", "test-gpu", f"PYTHON={sys.executable}"])
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: make test-gpu would really run")
    assert r.returncode == 0 and r.stdout.strip().count("\n") == 0 and "make test-gpu skipped" in r.stdout, r.stdout + r.stderr


def test_gpu_report_renders_device_tests_and_decode_rows():
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import torch
    from gpu_run import junit_counts, missing_features, render

    assert missing_features(torch) == []  # the pinned torch has every feature the course needs
    assert junit_counts(Path("/nonexistent.xml"))["failed"] == 1
    text = render({"when": "now", "device": "NVIDIA X", "cuda": "12.8", "torch": "2.13.0", "python": "3.11", "commit": "abc"},
                  {"passed": 900, "failed": 0, "skipped": 3}, {"passed": 13, "failed": 0, "skipped": 0},
                  [{"method": "course cached loop", "batch": 1, "tokens_per_s": 250.0, "ms_per_token_step": 4.0},
                   {"method": "course cached loop", "batch": 16, "tokens_per_s": 3000.0, "ms_per_token_step": 5.3},
                   {"method": "HF generate", "batch": 1, "tokens_per_s": 1.0, "ms_per_token_step": 1.0}])
    assert "**NVIDIA X**" in text and "| unit tests, COURSE_TEST_DEVICE=cuda | 900 | 0 | 3 |" in text
    assert "| course cached loop (03) | 16 | 3000.0 | 5.30 |" in text and "HF generate" not in text


def test_ci_runs_make_test():
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
