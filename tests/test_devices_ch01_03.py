"""Device fixes of chapters 01 and 03 (issue 15), checked without a GPU.

The `meta` device stands in for CUDA: meta tensors carry shapes but no data, and mixing a meta
tensor with a CPU tensor fails just as CUDA/CPU mixing does. A static check over the notebooks'
code cells catches what the library cannot: tensors built in a cell and fed to the model.
"""

from __future__ import annotations

import ast
import json

import pytest

from course_lib.core.paths import NOTEBOOKS
from course_lib.decoding.batching import pad_batch
from course_lib.decoding.speed import batch_curve, step_costs
from course_lib.text.tokenizer import get_encoding

FACTORIES = {"tensor", "zeros", "ones", "full", "arange", "randint", "randn", "rand", "empty"}


def test_pad_batch_creates_tensors_on_the_requested_device(make_gpt):
    enc = get_encoding()
    model = make_gpt(vocab_size=100277, dropout=0.0).to("meta")
    ids, mask = pad_batch(enc, ["怡宝", "Alpine Spring"], 32, device="meta")
    assert ids.device.type == mask.device.type == "meta"
    assert model(ids, attention_mask=mask).shape[:2] == ids.shape  # meta model, meta inputs: runs
    cpu_ids, cpu_mask = pad_batch(enc, ["怡宝", "Alpine Spring"], 32)  # the default stays on the CPU
    with pytest.raises((RuntimeError, NotImplementedError)):           # and mixing is caught, as on a GPU
        model(cpu_ids, attention_mask=cpu_mask)


def test_speed_measurements_stay_on_the_model_device(make_gpt):
    model = make_gpt(dropout=0.0).to("meta")
    assert set(step_costs(model, 6, batch=2, repeats=1)) >= {"cached", "0-layer step"}
    assert batch_curve(model, [1, 2], 5, repeats=1)[1]["batch"] == 2


# ------------------------------------------------------------------ static checks over the notebooks
def code_cells(prefix: str) -> list[tuple[int, ast.Module, str]]:
    nb = next(NOTEBOOKS.glob(f"{prefix}_*.ipynb"))
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    out = []
    for i, c in enumerate(cells):
        if c["cell_type"] == "code":
            src = "".join(c["source"])
            out.append((i, ast.parse("\n".join(line for line in src.splitlines() if not line.startswith(("%", "!")))), src))
    return out


def parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def moved_or_placed(call: ast.Call, up: dict[ast.AST, ast.AST]) -> bool:
    """The call has device=..., or its result is the receiver of a .to(...) chain."""
    if any(k.arg == "device" for k in call.keywords):
        return True
    node = call
    while isinstance(up.get(node), ast.Attribute):
        attr = up[node]
        if attr.attr == "to":
            return True
        node = up.get(attr)  # the call of that attribute (e.g. .eval()), keep climbing the chain
        if not isinstance(node, ast.Call):
            return False
    return False


def callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


@pytest.mark.parametrize("prefix", ["01", "03"])
def test_notebook_tensors_meeting_the_model_are_on_dev(prefix):
    problems = []
    for i, tree, _src in code_cells(prefix):
        up = parents(tree)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        touches_model = bool(names & {"model", "dev", "fresh", "silent", "student_model"})
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = callee(call)
            is_torch = isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) \
                and call.func.value.id == "torch"
            if name == "GPT" and not moved_or_placed(call, up):
                problems.append(f"cell {i}: GPT(...) built without .to(dev)")
            if name == "pad_batch" and not moved_or_placed(call, up):
                problems.append(f"cell {i}: pad_batch(...) without device=")
            if name == "DataParallel" and any(isinstance(a, ast.Name) and a.id == "model" for a in call.args):
                problems.append(f"cell {i}: nn.DataParallel(model) moves the notebook's model to cuda:0 in place")
            if touches_model and is_torch and name in FACTORIES and not moved_or_placed(call, up):
                problems.append(f"cell {i}: torch.{name}(...) in a cell that uses the model, without device=/.to()")
    assert not problems, "\n".join(problems)
