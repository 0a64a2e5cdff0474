"""Every notebook declares its parameters and checks them (issue 20, "Parameters are data").

Read from the committed notebooks, no kernel started: each has one code cell tagged `parameters`;
every name it assigns is checked by a `check_param("name", ...)` call later in the notebook; and
the notebook calls `check_no_unknown_params()`, so `papermill -p sede 3` stops instead of running
silently with the defaults.

NOTE for the merge: on the branch that added this test, notebooks 01, 02b, 03 and 05 did not yet
call `check_no_unknown_params()`; their owners add the call. These cases fail until then, on purpose
(no xfail: a notebook that accepts unknown parameters is the bug this test exists to catch).
"""

from __future__ import annotations

import ast
import json

import pytest

from course_lib.core.paths import NOTEBOOKS

NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))


def code_cells(path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def parameters_cell(path) -> dict:
    tagged = [c for c in code_cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} code cells tagged 'parameters' (exactly one is needed)"
    return tagged[0]


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and ((isinstance(n.func, ast.Name) and n.func.id == name)
                 or (isinstance(n.func, ast.Attribute) and n.func.attr == name))]


def rest_of_notebook(path) -> ast.Module:
    """Every code cell but the parameters cell, parsed (IPython magics and shell lines dropped)."""
    params = parameters_cell(path)
    lines = []
    for c in code_cells(path):
        if c is not params:
            lines += [ln for ln in source(c).splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def test_every_notebook_is_found():
    assert len(NOTEBOOK_PATHS) >= 10


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_parameters_cell_is_tagged_and_only_assigns_literals(path):
    tree = ast.parse(source(parameters_cell(path)))
    names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]
    assert names, f"{path.name}: the parameters cell declares nothing"
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: the parameters cell holds a {type(node).__name__}, not only assignments"
        ast.literal_eval(node.value)  # papermill's -p values replace these: they must be plain literals


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_every_parameter_is_checked(path):
    tree = ast.parse(source(parameters_cell(path)))
    declared = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    checked = {c.args[0].value for c in calls(rest_of_notebook(path), "check_param")
               if c.args and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)}
    unchecked = sorted(declared - checked)
    assert not unchecked, f"{path.name}: parameter(s) {unchecked} are never passed to check_param"


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_unknown_parameters_are_refused(path):
    """Fails for 01, 02b, 03 and 05 until their owners add the call (see the module docstring)."""
    assert calls(rest_of_notebook(path), "check_no_unknown_params"), (
        f"{path.name} never calls check_no_unknown_params(): `papermill -p sede 3` would run silently with the defaults")
