"""A static check over every notebook's code cells: the two ways a notebook breaks on a GPU only.

1. A tensor made on the CPU meets the model: `torch.tensor(...)`, `torch.arange(...)`, ... passed
   to a model (or to a method of it, or to a function given the model) must say `device=` or be
   moved with `.to(...)`; so must a name that was last bound to such a tensor.
2. A device tensor reaches matplotlib: the arguments of `plt.*`, `ax.*` / `axes[i].*` and the
   `course_lib.text.plots` functions must not use a name bound to device data (model outputs, tensors
   made with `device=`, `.to(dev)`, and names computed from those) unless converted on the way
   (`.cpu()`, `.tolist()`, `.item()`, `.numpy()`, `float()`, `int()`, ...).

The check reads the source (no execution), so it is a heuristic with an allow-list: each entry
names the notebook, the code it excuses and why it is safe. A failure names notebook, cell, line.
"""

from __future__ import annotations

import ast
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
FACTORIES = {"tensor", "zeros", "ones", "full", "arange", "randn", "rand", "randint", "empty", "linspace",
             "as_tensor", "from_numpy", "eye"}
MODEL_MAKERS = {"load_gpt", "GPT", "load_reasoner", "ACTReasoner", "MotionGPT", "load_trans", "load_vqvae", "VQVAE",
                "load_text_encoder", "TextEncoder", "load_pipeline", "load_draft", "load_classifier", "ActionClassifier",
                "Engine", "MotionPipeline", "ACTLossHead", "compile", "DataParallel"}  # wrappers: their inputs meet the model too
BUILT_ON_CPU = {"GPT", "ACTReasoner", "MotionGPT", "VQVAE", "TextEncoder", "ActionClassifier"}  # constructors
RUN_METHODS = {"generate", "infer", "prefill", "decode_step", "sample", "encode", "decode_codes", "forward", "loss"}
TAKES_CPU_MODELS = {"load_weights", "load_state_dict", "print", "len", "isinstance", "type", "id", "count_parameters"}
KEEPS_MODEL = {"to", "cuda", "eval", "train", "float", "half", "bfloat16", "requires_grad_"}  # model methods returning it
CPU_HELPERS = {"pad_batch"}  # course_lib helpers that build tensors on the CPU unless given device=
TO_HOST = {"cpu", "tolist", "item", "numpy"}  # method calls that bring data to the host
# course_lib.text.plots functions that move what they get to the host themselves (.cpu(), .tolist(), float() inside).
PLOTS_THAT_CONVERT = {"plot_temperature_sweep", "plot_attention_masks", "plot_next_token_distribution"}
PLOT_METHODS = {"plot", "bar", "barh", "scatter", "imshow", "hist", "step", "fill_between", "errorbar", "matshow",
                "pcolormesh", "contour", "contourf", "stairs", "axhline", "axvline", "text", "annotate", "set_xticks",
                "set_yticks", "set_xticklabels", "set_yticklabels", "heatmap", "stem", "pie", "violinplot", "boxplot"}

# (notebook, code excerpt) -> why it is safe on a GPU.
ALLOW: dict[tuple[str, str], str] = {}


@dataclass
class Finding:
    notebook: str
    cell: int
    line: int
    code: str
    why: str

    def __str__(self) -> str:
        return f"{self.notebook} cell {self.cell} line {self.line}: {self.why}: {self.code}"


def _call_name(func: ast.expr) -> str:
    """'torch.arange' -> 'arange', 'model.generate' -> 'generate', 'f' -> 'f'."""
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_torch_factory(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch")


def cpu_factory(node: ast.AST) -> ast.Call | None:
    """The torch factory call that makes `node` a CPU tensor (no device=, never moved), if there is one.

    Follows what keeps the tensor where it is: indexing, arithmetic, and methods like .float() or
    .expand(); a `.to(...)` anywhere on the way moves it, so it is fine.
    """
    if _is_torch_factory(node) or (isinstance(node, ast.Call) and _call_name(node.func) in CPU_HELPERS):
        return None if any(k.arg == "device" for k in node.keywords) else node
    if isinstance(node, ast.Subscript):
        return cpu_factory(node.value)
    if isinstance(node, ast.BinOp):
        return cpu_factory(node.left) or cpu_factory(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in ("to", "cuda") or node.func.attr in TO_HOST:
            return None
        return cpu_factory(node.func.value)
    return None


@dataclass
class NotebookState:
    models: set[str] = field(default_factory=set)
    cpu_names: dict[str, ast.Call] = field(default_factory=dict)  # name -> the factory that made it on the CPU
    device_names: set[str] = field(default_factory=set)
    plot_functions: set[str] = field(default_factory=set)
    cpu_models: set[str] = field(default_factory=set)  # built with GPT(...) etc. and never moved with .to(...)
    local_functions: set[str] = field(default_factory=set)  # defined with `def` in the notebook

    def is_model(self, node: ast.AST) -> bool:
        """model, or model.eval() / model.train() / model.to(dev): the model itself."""
        while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in KEEPS_MODEL:
            node = node.func.value
        return isinstance(node, ast.Name) and node.id in self.models

    def calls_model(self, node: ast.Call) -> bool:
        """model(x), model.generate(x) or f(model, x); not model.part.helper(x) (e.g. a host-side normaliser)."""
        f = node.func.value if isinstance(node.func, ast.Attribute) else node.func
        if isinstance(f, ast.Name) and f.id in self.models:
            return True
        return any(isinstance(a, ast.Name) and a.id in self.models for a in node.args)

    def on_device(self, node: ast.AST) -> bool:
        """Does evaluating `node` give device data (not converted to host data on the way)?

        The model and its methods return device data; torch functions and tensor methods keep it
        where it is; a plain function call (a course_lib helper, `range`, `len`) is trusted to return
        what it documents, host data, since each helper is unit-tested on the `meta` device; a function
        defined in the notebook returns device data when it is given device data or the model.
        """
        if isinstance(node, ast.Call):
            name = _call_name(node.func)
            if name in TO_HOST:
                return False
            if name == "to" and any(isinstance(a, ast.Name) and a.id in ("dev", "device") for a in node.args):
                return True
            if _is_torch_factory(node):
                return any(k.arg == "device" for k in node.keywords)
            f = node.func.value if isinstance(node.func, ast.Attribute) else node.func
            if isinstance(f, ast.Name) and f.id in self.models:
                return True  # model(x), model.generate(x)
            if isinstance(node.func, ast.Name) and node.func.id in self.local_functions:
                return any(self.on_device(a) or self.is_model(a) for a in [*node.args, *(k.value for k in node.keywords)])
            if isinstance(node.func, ast.Name):
                return False  # a course_lib helper or a builtin: host data (see above)
        if isinstance(node, ast.Name):
            return node.id in self.device_names
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp)):
            return False  # a new scope: its names are not the notebook's
        return any(self.on_device(child) for child in ast.iter_child_nodes(node))

    def bind(self, target: ast.AST, value: ast.AST, device: bool | None = None) -> None:
        """target = value: forget what target's names meant, record what they mean now."""
        device = self.on_device(value) if device is None else device
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self.bind(element, value, device)
            return
        if isinstance(target, ast.Starred):
            self.bind(target.value, value, device)
            return
        if isinstance(target, (ast.Subscript, ast.Attribute)):  # losses[name] = ...: the container now holds it
            base = target
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name) and device:
                self.device_names.add(base.id)
            return
        if not isinstance(target, ast.Name):
            return
        name = target.id
        before, cpu_before = set(self.models), set(self.cpu_models)
        self.cpu_names.pop(name, None)
        self.models.discard(name)
        self.cpu_models.discard(name)
        self.device_names.discard(name)
        if (factory := cpu_factory(value)) is not None:
            self.cpu_names[name] = factory
        calls = [n for n in ast.walk(value) if isinstance(n, ast.Call)] if isinstance(value, ast.Call) else []
        root = value
        while (isinstance(root, ast.Call) and isinstance(root.func, ast.Attribute)
               and root.func.attr in KEEPS_MODEL):  # net.eval().to(dev) is still the model net
            root = root.func.value
        was_model = isinstance(root, ast.Name) and root.id in before
        if was_model or any(_call_name(n.func) in MODEL_MAKERS for n in calls):
            self.models.add(name)
            moved = any(_call_name(n.func) in ("to", "cuda") for n in calls)
            if not moved and (any(_call_name(n.func) in BUILT_ON_CPU for n in calls)
                              or (was_model and root.id in cpu_before)):
                self.cpu_models.add(name)
        elif device:
            self.device_names.add(name)


def _is_plot_call(node: ast.Call, state: NotebookState) -> str | None:
    f = node.func
    if isinstance(f, ast.Name) and f.id in state.plot_functions and f.id not in PLOTS_THAT_CONVERT:
        return f.id
    if isinstance(f, ast.Attribute):
        base = f.value.value if isinstance(f.value, ast.Subscript) else f.value
        if isinstance(base, ast.Name) and base.id == "plt":
            return f"plt.{f.attr}"
        if isinstance(base, ast.Name) and base.id.startswith("ax") and f.attr in PLOT_METHODS:
            return f"{base.id}.{f.attr}"
        if isinstance(base, ast.Name) and base.id == "plots" and f.attr not in PLOTS_THAT_CONVERT:
            return f"plots.{f.attr}"
    return None


class Checker:
    """Walks one notebook's code cells in order, statement by statement, keeping NotebookState."""

    def __init__(self, path: Path) -> None:
        self.path, self.state, self.found = path, NotebookState(), []
        self.cell, self.source = 0, ""

    def report(self, node: ast.AST, why: str) -> None:
        code = ast.get_source_segment(self.source, node) or ast.unparse(node)
        if not any(nb_name == self.path.name and excerpt in code for nb_name, excerpt in ALLOW):
            self.found.append(Finding(self.path.name, self.cell, node.lineno, code.splitlines()[0][:100], why))

    def check_expr(self, expr: ast.AST) -> None:
        state = self.state
        for node in ast.walk(expr):
            if isinstance(node, ast.BinOp):
                self.check_mix(node, node.left, node.right)
            if not isinstance(node, ast.Call):
                continue
            base = node.func.value if isinstance(node.func, ast.Attribute) else node.func
            if (isinstance(base, ast.Name) and base.id in state.cpu_models
                    and (base is node.func or node.func.attr in RUN_METHODS)):
                self.report(node, f"{base.id!r} was built on the CPU and never moved, but runs here (add .to(dev))")
            for arg in node.args if _call_name(node.func) not in TAKES_CPU_MODELS else []:
                held = arg.func.value if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) else arg
                if isinstance(held, ast.Name) and held.id in state.cpu_models:
                    self.report(arg, f"{held.id!r} was built on the CPU and never moved, but is handed to "
                                     f"{_call_name(node.func)}() (add .to(dev))")
            if state.calls_model(node):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    for part in ast.walk(arg) if isinstance(arg, (ast.List, ast.Tuple)) else [arg]:
                        if cpu_factory(part) is not None:
                            self.report(part, "a CPU tensor meets the model (add device=dev or .to(dev))")
                        elif isinstance(part, ast.Name) and part.id in state.cpu_names:
                            self.report(part, f"{part.id!r} was made on the CPU (line {state.cpu_names[part.id].lineno} "
                                              "of its cell) and meets the model")
            if (plot := _is_plot_call(node, state)) is not None:
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if state.on_device(arg):
                        self.report(arg, f"{plot} gets device data (add .cpu() or .tolist())")

    def check_mix(self, node: ast.AST, left: ast.AST, right: ast.AST) -> None:
        """A CPU tensor in arithmetic with device data (0-dim CPU tensors would pass; the notebooks make none)."""
        for cpu_side, dev_side in ((left, right), (right, left)):
            on_cpu = cpu_factory(cpu_side) is not None or (isinstance(cpu_side, ast.Name) and cpu_side.id in self.state.cpu_names)
            if on_cpu and self.state.on_device(dev_side):
                self.report(node, "a CPU tensor is combined with device data (make it with device=dev)")
                return

    def visit(self, body: list[ast.stmt]) -> None:
        """Statements in order, blocks included, so a name means what it was last bound to."""
        state = self.state
        for stmt in body:
            if isinstance(stmt, ast.For):
                self.check_expr(stmt.iter)
                state.bind(stmt.target, stmt.iter)
                self.visit(stmt.body + stmt.orelse)
            elif isinstance(stmt, (ast.While, ast.If)):
                self.check_expr(stmt.test)
                self.visit(stmt.body + stmt.orelse)
            elif isinstance(stmt, ast.With):
                for item in stmt.items:
                    self.check_expr(item.context_expr)
                    if item.optional_vars is not None:
                        state.bind(item.optional_vars, item.context_expr)
                self.visit(stmt.body)
            elif isinstance(stmt, ast.Try):
                self.visit(stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse + stmt.finalbody)
            elif isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                saved = copy.deepcopy(state)  # a function's locals are not the notebook's names
                self.visit(stmt.body)
                self.state = state = saved
                state.local_functions.add(stmt.name)
            elif isinstance(stmt, ast.AugAssign):  # x += y: x keeps its device
                self.check_expr(stmt.value)
                self.check_mix(stmt, stmt.target, stmt.value)
            else:
                self.check_expr(stmt)
                if isinstance(stmt, ast.Assign):
                    for target in stmt.targets:
                        state.bind(target, stmt.value)
                elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    state.bind(stmt.target, stmt.value)

    def run(self) -> list[Finding]:
        nb = json.loads(self.path.read_text(encoding="utf-8"))
        for index, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            self.cell = index
            self.source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line  # IPython magics: blank
                                    for line in "".join(cell["source"]).splitlines())
            tree = ast.parse(self.source)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("plots"):
                    self.state.plot_functions |= {a.asname or a.name for a in node.names}
            self.visit(tree.body)
        return self.found


def check_notebook(path: Path) -> list[Finding]:
    """Every finding of both checks in one notebook, in cell order."""
    return Checker(path).run()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_tensors_meet_the_model_on_its_device_and_plots_get_host_data(path):
    findings = check_notebook(path)
    assert not findings, "\n".join(map(str, findings))


def test_the_check_sees_both_mistakes(tmp_path):
    cells = [
        "model = load_gpt(device=dev)\nfrom course_lib.text.plots import plot_rate_sweep\nimport matplotlib.pyplot as plt",
        "x = torch.tensor([[1, 2]])\nout = model.generate(x, 5)\nlogits = model(torch.arange(3)[None])\n"
        "ids, mask = pad_batch(enc, ['a'], 8)\nengine = Engine(model)\nengine.infer(ids, position_ids=torch.arange(1))",
        "ok = model(torch.tensor([[1]], device=dev))\nalso = model(torch.tensor([[1]]).to(dev))\nprobs = logits.softmax(-1)",
        "cpu_model = GPT(h_params)\ncpu_model.load_state_dict(sd)\ncpu_model(ok)\nplt.plot(probs[0])\nplt.plot(probs[0].cpu())\nfig, ax = plt.subplots()\nax.bar(range(3), probs.tolist())\n"
        "plot_rate_sweep(probs, 'x', [])",
    ]
    nb = {"cells": [{"cell_type": "code", "source": c} for c in cells]}
    path = tmp_path / "99_demo.ipynb"
    path.write_text(json.dumps(nb))
    got = [(f.cell, f.line, f.why.split(" ")[0]) for f in check_notebook(path)]
    assert got == [(1, 2, "'x'"), (1, 3, "a"), (1, 6, "'ids'"), (1, 6, "a"), (3, 3, "'cpu_model'"), (3, 4, "plt.plot"), (3, 8, "plot_rate_sweep")], got


def test_the_check_finds_the_crashes_issue_15_listed(tmp_path):
    """Cut-down copies of the cells that crashed on a GPU before they were fixed (git history of 01, 03, 04)."""
    cells = [
        "model = load_gpt(device=dev)\nx = torch.tensor([enc.encode(prompt)], device=dev)",
        "def greedy(m):\n    return m.generate(x, 8, temperature=0)[0].tolist()\n\n"
        "def next_token_probs(m, runs):\n    return torch.stack([m(x)[0, -1].softmax(-1) for _ in range(runs)])",
        "fresh = GPT(h_params)\nload_weights(fresh, sd)\nprint(greedy(fresh.eval()))",  # 01 cell 28
        "silent = GPT(h_params).eval()\nsilent.load_state_dict(sd, strict=False)\nprint(greedy(silent))",  # 01 cell 30
        "p_train = next_token_probs(model.train(), 5)\nfig, ax = plt.subplots()\nax.scatter([0] * 5, p_train[:, 3])",  # 01 cell 36
        "ids, mask = pad_batch(enc, prompts, model.block_size)\nout = model.generate(ids, 4, attention_mask=mask)",  # 03 cell 32
        "carry = model.initial_carry(batch)\nrestarts = torch.zeros(3, dtype=torch.long)\n"
        "for _ in range(8):\n    restarts += carry.halted.long()",  # 04
    ]
    path = tmp_path / "98_issue.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": c} for c in cells]}))
    got = [(f.cell, f.line) for f in check_notebook(path)]
    assert got == [(2, 3), (3, 3), (4, 3), (5, 2), (5, 2), (6, 4)], got
