"""Every timing a notebook shows goes through `course_lib.core.timing` (issue 21).

A notebook may time one thing with `time_fn`, and compares variants only with `compare`, which
interleaves them in one call and writes the verdict from the run's own numbers. This test reads the
code cells of every notebook (no execution) and fails on:
- a clock read by hand: `time.perf_counter`, `time.time`, `time.monotonic`, `time.process_time`
  (and their `_ns` forms), the `timeit` module, `datetime.now()` used as a stopwatch;
- the IPython timing magics `%timeit`, `%%timeit`, `%time`, `%%time`;
- `time_fn` used to compare: called more than once in a cell, or inside a loop or comprehension
  (variants timed one after another, so load changes between them decide the direction).
The failure message lists every offending notebook, cell index and line.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

CLOCKS = {"perf_counter", "perf_counter_ns", "time", "time_ns", "monotonic", "monotonic_ns",
          "process_time", "process_time_ns"}
MAGIC = re.compile(r"^\s*%{1,2}(timeit|time)\b", re.M)
LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _code(source: str) -> str:
    """Cell source with IPython magics and shell escapes blanked out, so `ast` can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _callee(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        base = f.value.id if isinstance(f.value, ast.Name) else "?"
        return f"{base}.{f.attr}"
    return ""


def cell_problems(source: str) -> list[str]:
    """What is wrong with the timing code of one cell (an empty list when nothing is)."""
    problems = [f"line {source[:m.start()].count(chr(10)) + 1}: IPython %{m.group(1)} magic (use course_lib.core.timing)"
                for m in MAGIC.finditer(source)]
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return problems
    clock_names = set()  # names bound by `from time import perf_counter [as pc]`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {"time", "timeit"}:
            for a in node.names:
                if node.module == "timeit" or a.name in CLOCKS:
                    clock_names.add(a.asname or a.name)
                    problems.append(f"line {node.lineno}: `from {node.module} import {a.name}` (use course_lib.core.timing)")
        if isinstance(node, ast.Import) and any(a.name == "timeit" for a in node.names):
            problems.append(f"line {node.lineno}: `import timeit` (use course_lib.core.timing)")
    loop_calls: set[int] = set()
    for loop in (n for n in ast.walk(tree) if isinstance(n, LOOPS)):
        loop_calls |= {id(c) for c in ast.walk(loop) if isinstance(c, ast.Call)}
    time_fn_calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _callee(node)
        if (name.startswith("time.") and name[5:] in CLOCKS) or name in clock_names \
                or name.startswith("timeit.") or name in {"datetime.now", "datetime.utcnow"}:
            problems.append(f"line {node.lineno}: `{name}()` reads a clock by hand (use course_lib.core.timing)")
        if name.split(".")[-1] == "time_fn":
            time_fn_calls.append(node)
    if len(time_fn_calls) > 1 or any(id(c) in loop_calls for c in time_fn_calls):
        lines = ", ".join(str(n) for n in sorted({c.lineno for c in time_fn_calls}))
        problems.append(f"line {lines}: time_fn compares variants one after another "
                        "(use course_lib.core.timing.compare: interleaved rounds, verdict from the numbers)")
    return sorted(problems, key=lambda p: int(re.match(r"line (\d+)", p).group(1)))


def notebook_problems(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        out += [f"{path.name} cell {i}, {p}" for p in cell_problems(source)]
    return out


# --- the rule itself, on snippets (so a broken detector cannot make the notebook test pass) ---

@pytest.mark.parametrize("source", [
    "import time\nt0 = time.perf_counter()\nf()\nprint(time.perf_counter() - t0)",
    "from time import perf_counter as pc\nt = pc()",
    "import time\nstart = time.time()",
    "%timeit f()",
    "%%time\nf()",
    "import timeit\ntimeit.timeit(f, number=3)",
    "a = time_fn(f)\nb = time_fn(g)",
    "ms = {k: time_fn(fn).ms for k, fn in variants.items()}",
    "for fn in (f, g):\n    print(timing.time_fn(fn).ms)",
])
def test_the_rule_flags_hand_made_timing(source):
    assert cell_problems(source), source


@pytest.mark.parametrize("source", [
    "from course_lib.core.timing import compare\nc = compare({'a': f, 'b': g}, rounds=7)\nc.show('x.json')",
    "t = time_fn(step)\nprint(t.ms)",
    "x = torch.arange(3)\ntime_left = 3  # not a clock",
    "def f():\n    return model.time_embedding(x)",
])
def test_the_rule_lets_the_timing_module_through(source):
    assert cell_problems(source) == []


def test_every_notebook_times_through_course_lib_timing():
    problems = [p for nb in sorted(NOTEBOOKS.glob("*.ipynb")) for p in notebook_problems(nb)]
    assert not problems, ("timing code that does not go through course_lib.core.timing "
                          "(compare for variants, time_fn for one thing):\n  " + "\n  ".join(problems))
