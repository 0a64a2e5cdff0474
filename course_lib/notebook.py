"""Small helpers every notebook uses: checking papermill parameters and checking exercises.

Instructors pass parameters with papermill (`-p temperature 1.3`); a typo or an out-of-range
value should stop the notebook at the parameters cell with a message that names the fix,
not fail twenty cells later with a shape error.

Exercise verdicts are printed for the student. Under the grader (`python -m course_lib.grade`,
which sets RECORD_ENV in the kernel's environment) each verdict is also published as a display
output of type CHECK_MIME, so the grader reads data, not printed text. It is off otherwise:
strict nbval compares every output's MIME keys, and an extra output in a fresh run would fail
every committed notebook.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

CHECK_MIME = "application/vnd.inside-inference.check+json"
RECORD_ENV = "INSIDE_INFERENCE_RECORD_CHECKS"


class ParameterError(ValueError):
    """A notebook parameter (papermill -p NAME VALUE) is invalid."""


def check_param(name: str, value: Any, *, kind: type | tuple[type, ...] | None = None,
                low: float | None = None, high: float | None = None, choices: Sequence | None = None) -> Any:
    """Validate one parameter; raise ParameterError saying what is allowed. Returns the value."""
    if kind is not None and (not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind))):
        names = " or ".join(t.__name__ for t in _as_tuple(kind))
        raise ParameterError(f"parameter {name!r} must be {names}, got {value!r} ({type(value).__name__}); "
                             f"e.g. papermill ... -p {name} <value>")
    if choices is not None and value not in choices:
        raise ParameterError(f"parameter {name!r} must be one of {list(choices)}, got {value!r}")
    if low is not None and value < low:
        raise ParameterError(f"parameter {name!r} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ParameterError(f"parameter {name!r} must be <= {high}, got {value!r}")
    return value


def _as_tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


def show_params(**params: Any) -> None:
    """Print the parameters this run uses (papermill-injected values show up here)."""
    print("Parameters: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))


def check_answer(name: str, ok: bool, why_right: str, why_wrong: str) -> bool:
    """Print a verdict for an exercise; the notebook continues either way."""
    message = why_right if ok else why_wrong
    print(f"{name}: {'✅ correct' if ok else '❌ not yet'} — {message}")
    if os.environ.get(RECORD_ENV) == "1":
        _publish({"name": str(name), "ok": bool(ok), "verdict": "correct" if ok else "not yet", "message": str(message)})
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


def run_check(name: str, fn: Callable[[], tuple[bool, str, str]]) -> bool:
    """Run a checker returning (ok, why_right, why_wrong); an exception counts as 'not yet'."""
    try:
        ok, right, wrong = fn()
    except Exception as exc:  # a student's half-written answer should not crash the notebook
        return check_answer(name, False, "", f"your code raised {type(exc).__name__}: {exc}")
    return check_answer(name, ok, right, wrong)
