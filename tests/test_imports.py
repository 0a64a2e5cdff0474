"""The architecture, read from the source: no import circle (lazy imports inside functions included), the model
imports no decoding method, one model step and one mask rule (issue 19)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "course_lib"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, bool, str]]:
    """(imported course_lib module, lazy = inside a function, enclosing function name) for every import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool, str]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                found.extend((a.name, func is not None, func or "") for a in child.names if a.name.startswith("course_lib"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("course_lib"):
                for a in child.names:  # `from course_lib.decoding import speculative` imports a module
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in MODULES else child.module, func is not None, func or ""))
            visit(child, inner)

    visit(tree, None)
    return found


GRAPH = {name: {m for m, _, _ in imports_of(path) if m in MODULES and m != name}
         for name, path in MODULES.items() if name != "course_lib"}  # the top level's lazy table names every module


def test_no_import_circle_even_through_lazy_imports():
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                walk(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            walk(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_model_imports_no_decoding_method():
    gpt = imports_of(MODULES["course_lib.text.gpt"])
    eager = [m for m, lazy, _ in gpt if not lazy]
    assert not [m for m in eager if m.startswith(("course_lib.decoding", "course_lib.caches.quantize",
                                                  "course_lib.caches.static_cache", "course_lib.caches.paged_cache",
                                                  "course_lib.text.draft"))], eager
    # the one exception: GPT.generate hands over to the decode loop when it runs (no import at module load)
    assert [(m, f) for m, lazy, f in gpt if lazy] == [("course_lib.decoding.decode", "generate")]


# The floors of the package, bottom up: a folder imports only from its own floor and the floors below it
# (lazy imports included). The model's GPT.generate handing over to the loop is the one arrow up.
FLOORS = {"core": {"core"}, "caches": {"core", "caches"}, "text": {"core", "caches", "text"},
          "decoding": {"core", "caches", "text", "decoding"}}
ARROWS_UP = {("course_lib.text.gpt", "course_lib.decoding.decode")}


def test_each_floor_imports_only_from_the_floors_below():
    up = []
    for name, deps in GRAPH.items():
        folder = name.split(".")[1] if name.count(".") >= 2 else None
        for dep in deps:
            target = dep.split(".")[1] if dep.count(".") >= 1 else dep
            if folder in FLOORS and target not in FLOORS[folder] and (name, dep) not in ARROWS_UP:
                up.append(f"{name} -> {dep}")
    assert up == [], "imports pointing up a floor:\n" + "\n".join(sorted(up))


def test_no_module_level_getattr_outside_the_package_top_level():
    offenders = [name for name, path in MODULES.items() if name != "course_lib"
                 and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                         for n in ast.parse(path.read_text(encoding="utf-8")).body)]
    assert offenders == []


def test_the_model_imports_without_the_tokenizer():
    code = ("import sys; sys.modules['tiktoken'] = None\n"  # importing tiktoken now raises ImportError
            "import course_lib.text.gpt as g, torch\n"
            "m = g.GPT({'vocab_size': 50, 'n_embd': 16, 'n_layer': 1, 'n_head': 2, 'block_size': 8})\n"
            "print(m(torch.zeros(1, 2, dtype=torch.long)).shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode == 0 and r.stdout.strip() == "torch.Size([1, 2, 50])", r.stderr[-1500:]


def _source(name: str) -> str:
    return MODULES[name].read_text(encoding="utf-8")


def test_one_model_step():
    """Running new tokens against a cache and reading the head happens in `caches.protocol.step_logits` only.
    (`GPT.forward` is the cache-free forward; chapter 06's lab re-implements a step on purpose; rope's
    long-context experiment applies the head at a stride of positions.)"""
    allowed = {"course_lib.caches.protocol", "course_lib.text.gpt", "course_lib.labs.graph_pitfalls",
               "course_lib.text.rope", "course_lib.decoding.speed", "course_lib.act.model", "course_lib.distributed.tp_gpt"}
    heads = {name for name in MODULES if re.search(r"\blm_head\(", _source(name))}
    assert heads <= allowed, heads - allowed
    runs = {name for name in MODULES if re.search(r"\.hidden_states\(|\._run\(", _source(name))
            and name not in ("course_lib.act.inference", "course_lib.motion.gpt", "course_lib.decoding.speculative")}
    assert runs <= {"course_lib.caches.protocol", "course_lib.text.gpt", "course_lib.labs.graph_pitfalls",
                    "course_lib.train.draft"}, runs
    for name in ("course_lib.caches.static_cache", "course_lib.caches.paged_cache", "course_lib.decoding.speculative"):
        assert "step_logits(" in _source(name), name


def test_one_mask_rule():
    """The causal comparison of slots is written once (`layers.slot_mask`); every cache masks through it."""
    layers = _source("course_lib.core.layers")
    assert len(re.findall(r"k_slot <= ", layers)) == 1
    for name in MODULES:
        src = _source(name)
        assert ".tril(" not in src and ".triu(" not in src, name
    for name, rule in (("course_lib.caches.kv_cache", "attend_mask("), ("course_lib.caches.static_cache", "slot_mask("),
                       ("course_lib.caches.paged_cache", "slot_mask(")):
        assert rule in _source(name), name
    assert "torch.arange(L, device=dev)[None, None, :] <=" not in _source("course_lib.caches.paged_cache")


def test_no_cache_is_edited_from_outside():
    """Beam search and the loop ask the cache (`select_rows`); nobody assigns its tensors or batch size."""
    pattern = re.compile(r"\bcache\.(k|v|batch_size)\s*(,|=(?!=))")
    offenders = [name for name in MODULES if pattern.search(_source(name))]
    assert offenders == []
