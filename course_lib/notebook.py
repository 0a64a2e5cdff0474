"""Small helpers every notebook uses: checking papermill parameters and checking exercises.

Instructors pass parameters with papermill (`-p temperature 1.3`); a typo or an out-of-range
value should stop the notebook at the parameters cell with a message that names the fix,
not fail twenty cells later with a shape error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


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
    print(f"{name}: {'✅ correct' if ok else '❌ not yet'} — {why_right if ok else why_wrong}")
    return ok


def run_check(name: str, fn: Callable[[], tuple[bool, str, str]]) -> bool:
    """Run a checker returning (ok, why_right, why_wrong); an exception counts as 'not yet'."""
    try:
        ok, right, wrong = fn()
    except Exception as exc:  # a student's half-written answer should not crash the notebook
        return check_answer(name, False, "", f"your code raised {type(exc).__name__}: {exc}")
    return check_answer(name, ok, right, wrong)
