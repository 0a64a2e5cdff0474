"""Small helpers every notebook uses: checking papermill parameters and checking exercises.

Instructors pass parameters with papermill (`-p temperature 1.3`); a typo or an out-of-range
value should stop the notebook at the parameters cell with a message that names the fix,
not fail twenty cells later with a shape error.

Exercise verdicts are printed for the student. In the grader's checking kernel (which sets
RECORD_ENV; see `python -m course_lib.course.grade`) each verdict is also published as a display
output of type CHECK_MIME, so the grader reads data, not printed text; a check whose code raised
says which exception in the record ("raised"). It is off otherwise: strict nbval compares every
output's MIME keys, and an extra output in a fresh run would fail every committed notebook.
The grader never trusts these records from a hand-in's own kernel (course_lib.course.answers).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from course_lib.core.checks import check_float, check_int
from course_lib.core.paths import REPO_ROOT, display_path

# papermill's --help-notebook parser skips any line of a parameters cell with more than one "=":
# write `top_k = 0  # 0 turns it off`, not `# 0 = off`, or the parameter disappears from the help.
INJECTED_HEADER = "# Parameters"  # papermill's first line of the cell it injects (tagged injected-parameters)
_CONTAINERS = (list, tuple, dict)
CHECK_MIME = "application/vnd.inside-inference.check+json"
RECORD_ENV = "INSIDE_INFERENCE_RECORD_CHECKS"


class ParameterError(ValueError):
    """A notebook parameter (papermill -p NAME VALUE) is invalid."""


# An int parameter with an open end is bounded by ±INT_PARAM_MAX: a seed or a count beyond it is a
# typo, and NumPy's seeds stop at 2**32 - 1 (a seed of 10**30 would pass `low=0`, then crash far away).
INT_PARAM_MAX = 2**32 - 1


def check_param(name: str, value: Any, *, kind: type | tuple[type, ...] | None = None,
                low: float | None = None, high: float | None = None, choices: Sequence | None = None,
                nonempty: bool = False, file: bool = False) -> Any:
    """Validate one parameter; raise ParameterError saying what is allowed. Returns the value.

    An int is accepted where a float is meant (`-p threshold 1`). Floats must be finite (NaN passes
    every `<`/`>` comparison as False, so a range check alone lets it through). An int-only
    parameter without `high` (or `low`) is bounded by INT_PARAM_MAX (or -INT_PARAM_MAX).
    nonempty=True refuses "", blank strings and empty lists; file=True requires an existing file
    (relative paths are from the repo root).
    """
    kinds = _as_tuple(kind) if kind is not None else ()
    if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
        kinds = (*kinds, int)  # papermill -p reads "1" as an int; 1 is a fine float
    if kind is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        names = " or ".join(t.__name__ for t in _as_tuple(kind))
        if isinstance(value, str) and any(t in _CONTAINERS for t in kinds):  # -p passes text: lists need YAML
            raise ParameterError(f"parameter {name!r} must be {names}, got the string {value!r}: papermill -p passes text; "
                                 f"pass lists with -y, e.g. papermill ... -y '{name}: [1, 2]'")
        raise ParameterError(f"parameter {name!r} must be {names}, got {value!r} ({type(value).__name__}); "
                             f"e.g. papermill ... -p {name} <value>")
    if nonempty and isinstance(value, str) and not value.strip():
        raise ParameterError(f"parameter {name!r} is empty; give it a value, e.g. papermill ... -p {name} <text>")
    if nonempty and isinstance(value, (list, tuple, dict)) and not value:
        raise ParameterError(f"parameter {name!r} is an empty {type(value).__name__}; give at least one value, "
                             f"e.g. papermill ... -y '{name}: [<value>]'")
    if file and not resolve_path(value).is_file():
        raise ParameterError(f"parameter {name!r}: file not found: {display_path(resolve_path(value))}; "
                             f"pass an existing file, e.g. papermill ... -p {name} <path>")
    if choices is not None and value not in choices:
        raise ParameterError(f"parameter {name!r} must be one of {list(choices)}, got {value!r}")
    _check_number(name, value, low, high, int_only=bool(kinds) and float not in kinds)
    return value


def _check_number(name: str, value: Any, low: float | None, high: float | None, int_only: bool) -> None:
    """Range checks: finite floats (core.checks.check_float), low/high, and INT_PARAM_MAX for int-only parameters."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    try:
        if isinstance(value, float):
            check_float(repr(name), value)  # NaN and infinities: every comparison below would let NaN through
    except ValueError as exc:
        raise ParameterError(f"parameter {exc}; e.g. papermill ... -p {name} <value>") from None
    if low is not None and value < low:
        raise ParameterError(f"parameter {name!r} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ParameterError(f"parameter {name!r} must be <= {high}, got {value!r}")
    if int_only and isinstance(value, int) and (low is None or high is None):  # an open end: bound it
        try:
            check_int(repr(name), value, low=-INT_PARAM_MAX if low is None else low, high=INT_PARAM_MAX if high is None else high)
        except ValueError as exc:
            raise ParameterError(f"parameter {exc}; e.g. papermill ... -p {name} <value>") from None


def _as_tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


def resolve_path(value: str | Path) -> Path:
    """A path parameter as the notebooks read it: absolute, or relative to the repository root."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def _assigned(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def check_no_unknown_params(history: Sequence[str] | None = None) -> None:
    """ParameterError if papermill injected a name the parameters cell does not declare (`-p sede 3`).

    papermill only warns "Passed unknown parameter" and runs with the defaults. Its injected cell
    (first line "# Parameters") runs right after the cell tagged `parameters`, so the kernel's input
    history holds both: compare their names. Outside papermill there is no injected cell: no-op.
    """
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        ip = get_ipython()
        history = ip.user_ns.get("In", []) if ip is not None else []
    for k in range(len(history) - 1, 0, -1):
        if history[k].lstrip().startswith(INJECTED_HEADER):
            declared, injected = _assigned(history[k - 1]), _assigned(history[k])
            unknown = sorted(injected - declared)
            if unknown:
                raise ParameterError(f"unknown parameter(s) {unknown}: this notebook declares {', '.join(sorted(declared))}; "
                                     "check the spelling in papermill -p NAME VALUE")
            return


def show_params(**params: Any) -> None:
    """Print the parameters this run uses (papermill-injected values show up here)."""
    print("Parameters: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))


def check_answer(name: str, ok: bool, why_right: str, why_wrong: str) -> bool:
    """Print a verdict for an exercise; the notebook continues either way."""
    return _verdict(name, ok, why_right, why_wrong)


def _verdict(name: str, ok: bool, why_right: str, why_wrong: str, raised: str | None = None) -> bool:
    message = why_right if ok else why_wrong
    print(f"{name}: {'✅ correct' if ok else '❌ not yet'} — {message}")
    if os.environ.get(RECORD_ENV) == "1":
        record = {"name": str(name), "ok": bool(ok), "verdict": "correct" if ok else "not yet", "message": str(message)}
        _publish(record if raised is None else {**record, "raised": raised})
    return ok


def _publish(record: dict) -> None:
    """Publish one verdict as a display output of type CHECK_MIME (only inside an IPython kernel)."""
    try:
        from IPython import get_ipython
        from IPython.display import publish_display_data
    except ImportError:
        return
    if get_ipython() is not None:
        publish_display_data({CHECK_MIME: record}, metadata={CHECK_MIME: {"kind": "verdict"}})


class AnswerRaised(Exception):
    """The hand-in's code raised this exception when a check called it (in the hand-in's kernel); the
    grader replays it (course_lib.course.answers), so a check reports the hand-in's error, not its own."""


class AnswerNotImplemented(AnswerRaised):
    """The hand-in's function still raises NotImplementedError: the placeholder is left as is."""


def run_check(name: str, fn: Callable[[], tuple[bool, str, str]]) -> bool:
    """Run a checker returning (ok, why_right, why_wrong); an exception counts as 'not yet'."""
    try:
        ok, right, wrong = fn()
    except Exception as exc:  # a student's half-written answer should not crash the notebook
        # AnswerRaised: replayed by the grader, the hand-in's own exception (course_lib.course.answers)
        what = str(exc) if isinstance(exc, AnswerRaised) else f"{type(exc).__name__}: {exc}"
        return _verdict(name, False, "", f"your code raised {what}", raised=type(exc).__name__)
    return _verdict(name, ok, right, wrong)
