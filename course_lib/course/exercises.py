"""The exercise convention: which notebook cells are stubs, checks and solutions, found from the code.

Instructor tools (the student release, the grader) need to know which cells hold a solution and
which hold the course's own check. Rather than tagging by hand, the tags are *derived* from a
convention every notebook already follows, so re-running the tagger after a notebook changes is
one command (`python -m course_lib.course.release --tag-notebooks`) and gives the same tags every time:

- **exercise** (the stub): a code cell with a placeholder the student replaces, either
  `name = None` (also `a, b = None, None`) or a function whose body only raises
  `NotImplementedError` or returns `None` (or a tuple of `None`s).
- **check**: a code cell that calls `run_check("Name", ...)` or `check_answer("Name", ...)`
  (directly or through a function it defines) and uses a placeholder name. The exercise name is
  a string literal. A cell can be both exercise and check (stub and check together).
- **solution**: a code cell after a check that calls a check without using any placeholder
  (it passes the solution in); the short prose cell right before it ("A solution, checked the
  same way:") goes with it when it mentions a solution or answer and has no heading. A markdown
  cell with a `<details><summary>Solution</summary> ... </details>` block (or `Answer`) is also a
  solution; the release cuts the block and keeps the rest of that cell.

An exercise block runs from a stub cell to the next stub cell; each block needs a check for
every placeholder and at least one solution (a details block in the prose right before the stub
counts). Anything else is an error naming the notebook and the cell.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

TAGS = ("exercise", "check", "solution")
CHECK_FUNCS = frozenset({"run_check", "check_answer"})
# <details><summary>Solution</summary> ... </details> (or "Answer"); hints in details blocks stay.
DETAILS_SOLUTION = re.compile(r"<details>\s*<summary>[^<]*\b(?:solution|answer)s?\b[^<]*</summary>.*?</details>\n?",
                              re.IGNORECASE | re.DOTALL)


class ConventionError(ValueError):
    """A notebook's exercises do not follow the convention; the message lists every problem."""


def source(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _parse(cell: dict) -> ast.Module | None:
    try:
        return ast.parse(source(cell))
    except SyntaxError:  # IPython magics or a student's half-written cell: not part of the convention
        return None


def _is_none(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    return isinstance(node, ast.Tuple) and bool(node.elts) and all(_is_none(e) for e in node.elts)


def _stub_names(stmt: ast.stmt) -> list[str]:
    """Names a top-level statement leaves as placeholders ([] if it is not a stub)."""
    if isinstance(stmt, ast.Assign) and _is_none(stmt.value):
        names = []
        for target in stmt.targets:
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            if not all(isinstance(e, ast.Name) for e in elts):
                return []
            names += [e.id for e in elts]
        return names
    if isinstance(stmt, ast.FunctionDef):
        body = [s for s in stmt.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        body = [s for s in body if not isinstance(s, ast.Pass)]
        if len(body) == 1:
            only = body[0]
            if isinstance(only, ast.Raise) and only.exc is not None:
                exc = only.exc.func if isinstance(only.exc, ast.Call) else only.exc
                if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                    return [stmt.name]
            if isinstance(only, ast.Return) and (only.value is None or _is_none(only.value)):
                return [stmt.name]
        elif not body:
            return [stmt.name]
    return []


def _raises_not_implemented(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.FunctionDef) and any(
        isinstance(n, ast.Name) and n.id == "NotImplementedError" for s in stmt.body if isinstance(s, ast.Raise)
        for n in ast.walk(s))


def stub_statements(tree: ast.Module) -> list[tuple[ast.stmt, list[str]]]:
    return [(s, names) for s in tree.body if (names := _stub_names(s))]


def _called_names(node: ast.AST) -> set[str]:
    return {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def checker_functions(tree: ast.Module, known: set[str]) -> set[str]:
    """Functions defined in this cell that call a check (directly or through another checker)."""
    found: set[str] = set()
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    changed = True
    while changed:
        changed = False
        for d in defs:
            if d.name not in found and _called_names(d) & (CHECK_FUNCS | known | found):
                found.add(d.name)
                changed = True
    return found


def exercise_names(tree: ast.Module) -> list[str | None]:
    """The first argument of every run_check/check_answer call: the exercise's name (None if not a literal)."""
    names = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in CHECK_FUNCS:
            arg = n.args[0] if n.args else None
            names.append(arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None)
    return names


def _calls_check_at_top(tree: ast.Module, checkers: set[str]) -> bool:
    """True if a top-level statement (not a def) calls a check when the cell runs."""
    return any(_called_names(s) & (CHECK_FUNCS | checkers)
               for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.ClassDef)))


def _loaded_names(tree: ast.Module) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _is_solution_intro(cell: dict) -> bool:
    text = source(cell)
    return (cell.get("cell_type") == "markdown" and not re.search(r"^\s*#", text, re.MULTILINE)
            and re.search(r"\b(solution|answer)s?\b", text, re.IGNORECASE) is not None
            and not DETAILS_SOLUTION.search(text))


@dataclass
class Exercise:
    """One exercise block: its stub cell(s), check cell(s), solution cell(s) and exercise names."""
    stub_cells: list[int] = field(default_factory=list)
    check_cells: list[int] = field(default_factory=list)
    solution_cells: list[int] = field(default_factory=list)
    placeholders: dict[str, int] = field(default_factory=dict)  # name -> stub cell index
    checked: set[str] = field(default_factory=set)
    names: list[str] = field(default_factory=list)


def detect(cells: list[dict], label: str = "notebook") -> tuple[dict[int, list[str]], list[Exercise]]:
    """Derive the tags of every cell. Returns ({cell index: tags}, exercises); raises ConventionError."""
    tags: dict[int, list[str]] = {}
    problems: list[str] = []
    exercises: list[Exercise] = []
    checkers: set[str] = set()
    trees = [(_parse(c) if c.get("cell_type") == "code" else None) for c in cells]

    def add(i: int, tag: str) -> None:
        if tag not in tags.setdefault(i, []):
            tags[i].append(tag)

    # Placeholders count only when some check uses them (`cache = None` in a demo cell is no exercise).
    all_check_names: set[str] = set()
    for tree in trees:
        if tree is not None:
            local = checker_functions(tree, checkers)
            checkers |= local
            if _calls_check_at_top(tree, checkers):
                all_check_names |= _loaded_names(tree)
    checkers = set()

    current: Exercise | None = None
    for i, (cell, tree) in enumerate(zip(cells, trees, strict=True)):
        if cell.get("cell_type") == "markdown" and DETAILS_SOLUTION.search(source(cell)):
            add(i, "solution")
            # prose right before a stub belongs to the next block; otherwise to the current one
            nxt = next((j for j in range(i + 1, len(cells)) if cells[j].get("cell_type") == "code"), None)
            if nxt is not None and trees[nxt] is not None and _block_stubs(trees[nxt], all_check_names):
                continue  # counted when the stub cell opens its block
            if current is not None:
                current.solution_cells.append(i)
            continue
        if tree is None:
            continue
        checkers |= checker_functions(tree, checkers)
        stubs = _block_stubs(tree, all_check_names)
        for stmt, names in stub_statements(tree):
            if _raises_not_implemented(stmt) and names[0] not in all_check_names:
                problems.append(f"{label}: cell {i}: placeholder function {names[0]!r} is used by no check "
                                f"(call run_check/check_answer on it in a check cell)")
        calls_check = _calls_check_at_top(tree, checkers)
        used = _loaded_names(tree)
        if stubs:
            current = Exercise()
            exercises.append(current)
            add(i, "exercise")
            current.stub_cells.append(i)
            current.placeholders.update({n: i for n in stubs})
            prev = i - 1
            if prev >= 0 and "solution" in tags.get(prev, []) and cells[prev].get("cell_type") == "markdown":
                current.solution_cells.append(prev)  # a details block in the prose that asks the question
        if not calls_check:
            continue
        pending = set(current.placeholders) if current else set()
        if stubs or (used & pending):
            add(i, "check")
            current.check_cells.append(i)
            current.checked |= used & pending
            for name in exercise_names(tree):
                if name is None:
                    problems.append(f"{label}: cell {i}: a check's exercise name is not a string literal "
                                    f"(write run_check(\"Exercise 1\", ...))")
                elif name not in current.names:
                    current.names.append(name)
        elif current is not None and current.check_cells:
            add(i, "solution")
            current.solution_cells.append(i)
            if i > 0 and _is_solution_intro(cells[i - 1]):
                add(i - 1, "solution")
        else:
            problems.append(f"{label}: cell {i}: calls a check but no exercise stub comes before it "
                            f"(add a stub cell with `answer = None` or a function raising NotImplementedError)")

    for ex in exercises:
        where = f"{label}: exercise at cell {ex.stub_cells[0]}"
        missing = sorted(set(ex.placeholders) - ex.checked)
        if missing:
            problems.append(f"{where}: placeholder(s) {missing} used by no check cell")
        if not ex.check_cells:
            problems.append(f"{where}: no check cell (run_check/check_answer on the placeholders)")
        if not ex.solution_cells:
            problems.append(f"{where}: no solution (a code cell calling the check with the answer, or a "
                            f"<details><summary>Solution</summary> block)")
    names = [n for ex in exercises for n in ex.names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"{label}: exercise name(s) {dupes} used by more than one exercise")
    if problems:
        raise ConventionError("\n".join(problems))
    return tags, exercises


def _block_stubs(tree: ast.Module, checked_names: set[str]) -> list[str]:
    return [n for _, names in stub_statements(tree) for n in names if n in checked_names]


def apply_tags(nb: dict, label: str = "notebook") -> bool:
    """Set the exercise/check/solution tags of every cell from the convention. Returns True if anything changed.

    Other tags (parameters, nbval ones) are kept; running it twice changes nothing the second time.
    """
    new, _ = detect(nb["cells"], label)
    changed = False
    for i, cell in enumerate(nb["cells"]):
        meta = cell.setdefault("metadata", {})
        old = list(meta.get("tags", []))
        tags = [t for t in old if t not in TAGS] + [t for t in TAGS if t in new.get(i, [])]
        if tags != old:
            changed = True
            if tags:
                meta["tags"] = tags
            else:
                meta.pop("tags", None)
    return changed


def tagged(cell: dict, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def check_code(code: str, checkers: set[str] = frozenset()) -> str:
    """What the grader re-runs of a check cell: its imports, definitions and check calls.

    Placeholders are left out (they would erase the student's answers), and so is other setup
    (it already ran in the student's copy of the cell, and may not be safe to run twice, e.g. a
    file saved with overwrite=False). `checkers` are check functions defined in earlier cells.
    """
    tree = ast.parse(code)
    known = checker_functions(tree, set(checkers)) | set(checkers)
    lines = code.splitlines(keepends=True)
    keep: list[str] = []
    for stmt in tree.body:
        if _stub_names(stmt):
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)) or _called_names(stmt) & (CHECK_FUNCS | known):
            start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            keep.append("".join(lines[start - 1:stmt.end_lineno]))
    return "\n\n".join(part.rstrip("\n") for part in keep) + "\n"


def import_lines(code: str) -> list[str]:
    """The top-level import statements of a cell, as source text."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [ast.get_source_segment(code, s) for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]


@dataclass
class CheckPlan:
    """What the grader needs to judge a hand-in of one notebook (see course_lib.course.grade).

    answers: the names the course's checks read from the exercise cells (placeholders, and functions
    defined there); per_exercise: which of them each exercise's check reads; steps: the check cells'
    code in order, each (code, exercise names) with names None for imports and definitions and the
    exercises a check-calling statement judges otherwise; stubs: the course's own definition
    (ast.dump) of every answer that is a function, to tell a placeholder left as is.
    """
    answers: list[str]
    per_exercise: dict[str, list[str]]
    steps: list[tuple[str, list[str] | None]]
    stubs: dict[str, str]


def _segment(lines: list[str], stmt: ast.stmt) -> str:
    start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
    return "".join(lines[start - 1:stmt.end_lineno]).rstrip("\n")


def check_plan(cells: list[dict], label: str = "notebook") -> CheckPlan:
    """Split a course notebook's checks into what the grader re-runs, and find what each exercise reads."""
    tags, exercises = detect(cells, label)
    defs: dict[str, ast.stmt] = {}
    steps: list[tuple[str, list[str] | None]] = []
    calls: list[ast.stmt] = []
    checkers: set[str] = set()
    for i in sorted(i for i, t in tags.items() if "check" in t):
        code = check_code(source(cells[i]), checkers)
        tree = ast.parse(code)
        checkers |= checker_functions(tree, checkers)
        lines = code.splitlines(keepends=True)
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                defs[stmt.name] = stmt
            if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
                steps.append((_segment(lines, stmt), None))
            else:
                calls.append(stmt)
                steps.append((_segment(lines, stmt), []))
    stubs: dict[str, str] = {}
    candidates = {n for ex in exercises for n in ex.placeholders}
    for i in sorted(i for i, t in tags.items() if "exercise" in t):
        for stmt in ast.parse(source(cells[i])).body:
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) and stmt.name not in defs:
                candidates.add(stmt.name)
                stubs[stmt.name] = ast.dump(stmt)

    def reach(node: ast.AST, seen: set[str]) -> tuple[set[str], list[str]]:
        loaded, names = _loaded_names(node), [n for n in exercise_names(node) if n is not None]
        for ref in sorted(loaded & set(defs) - seen):
            seen.add(ref)
            more_loaded, more_names = reach(defs[ref], seen)
            loaded |= more_loaded
            names += [n for n in more_names if n not in names]
        return loaded, names

    per_exercise: dict[str, list[str]] = {}
    answers: list[str] = []
    k = 0
    for j, (code, names) in enumerate(steps):
        if names is None:
            continue
        loaded, ex_names = reach(calls[k], set())
        k += 1
        steps[j] = (code, ex_names)
        used = sorted(loaded & candidates)
        answers += [n for n in used if n not in answers]
        for name in ex_names:
            per_exercise.setdefault(name, [])
            per_exercise[name] += [n for n in used if n not in per_exercise[name]]
    return CheckPlan(answers, per_exercise, steps, {n: d for n, d in stubs.items() if n in answers})


def last_binding(cells: list[dict], name: str) -> ast.stmt | None:
    """The last top-level statement of any code cell that binds `name` (a def, a class or an assignment)."""
    found = None
    for cell in cells:
        tree = _parse(cell) if cell.get("cell_type") == "code" else None
        for stmt in tree.body if tree is not None else []:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == name:
                found = stmt
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                    found = stmt
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name.split(".")[0]) == name for a in stmt.names):
                found = stmt
    return found
