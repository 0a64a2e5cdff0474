"""A hand-in's answers as plain data, so the grader judges them without running the hand-in's code.

The grader (course_lib.course.grade) runs a hand-in in its own kernel, which it does not trust:
anything there can be redefined (`enc`, `check_answer`, `==`, IPython's display hooks). So the
verdicts are not read from that kernel. Instead its last cells save each *answer* (the names an
exercise asks for) as plain data with `dump_answers`, and a second kernel that ran only the
course's own notebook loads them with `load_answers` and runs the course's checks on them.

Plain data is None, bool, int, float, str, and lists, tuples and dicts of those (exact types: an
int subclass with its own `__eq__` is not an int), plus torch tensors and NumPy arrays/scalars
(saved as dtype, shape and values, rebuilt as fresh tensors). Anything else is saved as its type
name only, and in the checking kernel becomes an `Opaque` value that raises on use: an object
whose `__eq__` always returns True is an error, never a right answer.

An answer that is a function (or a model: anything callable) cannot be data. In the hand-in's
kernel it is wrapped in a `Recorder`, the course's checks call it, and every top-level call is
saved: its arguments and its result (or the exception it raised), as plain data, plus any plain
attribute the check reads (`model.training`). In the checking kernel a `Replayer` stands in for
it: the same checks make the same calls in the same order, and each returns the saved result.
A hand-in can save any results it likes, but that is only answering: the expected values are
computed in the checking kernel, from the course's own code and state.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import types
from collections.abc import Iterable
from typing import Any

from course_lib.course.notebook import AnswerNotImplemented, AnswerRaised, _publish

MAX_ITEMS = 5_000_000  # numbers in one hand-in's answers (a (1, 10, 100277) logits tensor is about 1M)
_SCALARS = (type(None), bool, int, float, str)
_TENSOR_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


class NotPlain(TypeError):
    """An answer (or a result of the answer's code) that is not plain data."""


class ReplayMismatch(Exception):
    """The checks called the answer differently here than in the hand-in's kernel."""


# ------------------------------------------------------------------------------------ encoding
class _Budget:
    def __init__(self, limit: int = MAX_ITEMS) -> None:
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise NotPlain(f"the answers hold more than {MAX_ITEMS:,} values")


def encode(value: Any, budget: _Budget | None = None) -> Any:
    """Plain data as JSON-able data; anything else as {"object": type name} (never raises but for size)."""
    budget = budget or _Budget()
    budget.take(1)
    t = type(value)
    if t in _SCALARS:
        return value
    if t is list or t is tuple:
        return {t.__name__: [encode(v, budget) for v in value]}
    if t is dict:
        return {"dict": [[encode(k, budget), encode(v, budget)] for k, v in value.items()]}
    torch = sys.modules.get("torch")
    if torch is not None and t in (torch.Tensor, torch.nn.Parameter):
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype in _TENSOR_DTYPES:
            budget.take(value.numel())
            flat = torch.Tensor.tolist(value.detach().to("cpu").reshape(-1))
            return {"tensor": {"dtype": dtype, "shape": list(value.shape), "device": value.device.type, "data": flat}}
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray and value.dtype.name in _TENSOR_DTYPES:
        budget.take(value.size)
        return {"ndarray": {"dtype": value.dtype.name, "shape": list(value.shape), "data": value.reshape(-1).tolist()}}
    if np is not None and isinstance(value, np.generic) and type(value).__module__ == "numpy" \
            and value.dtype.name in _TENSOR_DTYPES:
        return {"npscalar": {"dtype": value.dtype.name, "value": value.item()}}
    if course_code(value):
        target = getattr(value, "func", value) if t.__name__ == "partial" else value
        return {"object": f"the course's own {getattr(target, '__qualname__', t.__qualname__)} (write your own)"[:200]}
    return {"object": f"{t.__module__}.{t.__qualname__}"[:200]}


def _numbers(data: Any, dtype: str, n: int) -> list:
    if type(data) is not list or len(data) != n:
        raise ValueError("tensor data does not match its shape")
    want = (bool,) if dtype == "bool" else (int,) if "int" in dtype else (int, float)
    if not all(type(v) in want for v in data):
        raise ValueError(f"tensor values are not {dtype}")
    return data


def _shape(shape: Any) -> int:
    if type(shape) is not list or len(shape) > 16 or not all(type(d) is int and 0 <= d for d in shape):
        raise ValueError("bad tensor shape")
    return math.prod(shape)


def decode(data: Any, depth: int = 0) -> Any:
    """Rebuild plain data saved by `encode`; ValueError for anything malformed (it came from a hand-in)."""
    if depth > 100:
        raise ValueError("answers nested too deeply")
    if type(data) in _SCALARS:
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"malformed answer data ({type(data).__name__})")
    (kind, body), = data.items()
    if kind in ("list", "tuple") and type(body) is list:
        items = [decode(v, depth + 1) for v in body]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and type(body) is list and all(type(kv) is list and len(kv) == 2 for kv in body):
        out = {}
        for k, v in body:
            key = decode(k, depth + 1)
            try:
                out[key] = decode(v, depth + 1)
            except TypeError:
                raise ValueError("a dict key is not hashable") from None
        return out
    if kind == "object" and type(body) is str:
        return Opaque(body)
    if kind in ("tensor", "ndarray") and type(body) is dict and body.get("dtype") in _TENSOR_DTYPES:
        n = _shape(body.get("shape"))
        values = _numbers(body.get("data"), body["dtype"], n)
        if kind == "ndarray":
            import numpy as np

            return np.array(values, dtype=body["dtype"]).reshape(body["shape"])
        import torch

        device = body.get("device") if body.get("device") in ("cuda", "mps") else "cpu"
        if (device == "cuda" and not torch.cuda.is_available()) or (device == "mps" and not torch.backends.mps.is_available()):
            device = "cpu"
        return torch.tensor(values, dtype=getattr(torch, body["dtype"])).reshape(body["shape"]).to(device)
    if kind == "npscalar" and type(body) is dict and body.get("dtype") in _TENSOR_DTYPES:
        import numpy as np

        return np.dtype(body["dtype"]).type(_numbers([body.get("value")], body["dtype"], 1)[0])
    raise ValueError(f"malformed answer data ({kind!r})")


def _close(a: Any, b: Any) -> bool:
    """Equal encoded data, floats within 1e-5 (the two kernels may round a last bit differently)."""
    if type(a) is float or type(b) is float:
        if type(a) not in (int, float) or type(b) not in (int, float):
            return False
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------- in the hand-in's kernel
class Recorder:
    """Stands in for an answer that is code; records each top-level call and plain attribute read."""

    def __init__(self, target: Any, log: list, path: str = "", depth: list | None = None) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_depth", depth if depth is not None else [0])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._depth[0]:  # a call from inside the answer (recursion through its global name)
            return self._target(*args, **kwargs)
        event = {"kind": "call", "path": self._path, "args": encode(list(args)), "kwargs": encode(dict(kwargs))}
        self._log.append(event)
        self._depth[0] += 1
        try:
            result = self._target(*args, **kwargs)
        except Exception as exc:
            event["raised"] = {"type": type(exc).__name__, "message": str(exc)[:300]}
            raise
        finally:
            self._depth[0] -= 1
        event["result"] = encode(result)
        return result

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if self._depth[0]:
            return value
        data = encode(value)
        if type(data) is dict and "object" in data and callable(value):
            self._log.append({"kind": "attr", "path": self._path, "name": name, "value": {"recorder": True}})
            return Recorder(value, self._log, f"{self._path}.{name}", self._depth)
        self._log.append({"kind": "attr", "path": self._path, "name": name, "value": data})
        return value


def course_code(value: Any) -> bool:
    """True for a function or class of the course's own library (or a partial of one): not an answer.

    A check may switch the library off while it calls the student's function, or ask `fn is
    library_fn`; a Recorder around the library function itself would get past both.
    """
    target = getattr(value, "func", value) if type(value).__name__ == "partial" else value
    return (isinstance(target, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type))
            and str(getattr(target, "__module__", "")).split(".")[0] == "course_lib")


def record_answers(namespace: dict, names: Iterable[str]) -> None:
    """Wrap every answer that is not plain data (a function, a model) in a Recorder."""
    for name in names:
        value = namespace.get(name)
        data = encode(value)
        if type(data) is dict and "object" in data and not course_code(value):
            namespace[name] = Recorder(value, [])


def dump_answers(namespace: dict, names: Iterable[str], path: str) -> None:
    """Save every answer as plain data (JSON, written to a temporary name and renamed)."""
    budget, out = _Budget(), {}
    for name in names:
        value = namespace.get(name)
        if isinstance(value, Recorder):
            target = object.__getattribute__(value, "_target")
            out[name] = {"recorded": {"type": type(target).__qualname__, "events": value._log}}
        else:
            out[name] = {"value": encode(value, budget)}
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(out, f)
    os.replace(tmp, path)


# -------------------------------------------------------------------- in the checking kernel
class Opaque:
    """An answer that was not plain data: any use in a check raises NotPlain."""

    def __init__(self, type_name: str) -> None:
        object.__setattr__(self, "_type_name", type_name)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        what = self._type_name if self._type_name.startswith("the course's own") else f"a {self._type_name}"
        raise NotPlain(f"the answer is {what}, not plain data (a number, text, list, tuple, dict or tensor)")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _refuse
    __getitem__ = __int__ = __float__ = __index__ = __add__ = __radd__ = __sub__ = __mul__ = __call__ = _refuse
    __hash__ = None  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # protocol probes (copy, numpy, IPython's display) see a plain object
            raise AttributeError(name)
        return self._refuse()

    def __repr__(self) -> str:
        return f"<{self._type_name}: not plain data>"


class Replayer(Opaque):
    """Stands in for an answer that is code: replays the calls recorded in the hand-in's kernel."""

    def __init__(self, name: str, type_name: str, events: list, path: str = "") -> None:
        super().__init__(type_name)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_events", events)
        object.__setattr__(self, "_path", path)

    def _next(self, kind: str, what: str) -> dict:
        events = self._events
        if not events:
            raise ReplayMismatch(f"{self._name}{self._path}: the check {what} more often here than in your run "
                                 "(did your notebook change a variable the check uses?)")
        event = events.pop(0)
        if type(event) is not dict or event.get("kind") != kind or event.get("path") != self._path:
            raise ReplayMismatch(f"{self._name}{self._path}: the check {what} here, something else in your run")
        return event

    def __bool__(self) -> bool:  # `fn = fn or my_answer` works as with the function itself
        return True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        event = self._next("call", "called it")
        if not (_close(encode(list(args)), event.get("args")) and _close(encode(dict(kwargs)), event.get("kwargs"))):
            raise ReplayMismatch(f"{self._name}{self._path}: your run called it with other inputs than the course's "
                                 "check does (did your notebook change a variable the check uses?)")
        raised = event.get("raised")
        if raised is not None:
            kind = raised.get("type") if type(raised) is dict else "?"
            cls = AnswerNotImplemented if kind == "NotImplementedError" else AnswerRaised
            raise cls(f"{kind}: {raised.get('message', '') if type(raised) is dict else ''}")
        return decode(event.get("result"))

    def __getattr__(self, name: str) -> Any:
        event = self._next("attr", f"read .{name}")
        if event.get("name") != name:
            raise ReplayMismatch(f"{self._name}{self._path}: the check read .{name} here, .{event.get('name')} in your run")
        if event.get("value") == {"recorder": True}:
            return Replayer(self._name, self._type_name, self._events, f"{self._path}.{name}")
        return decode(event.get("value"))


def load_answers(namespace: dict, path: str, names: Iterable[str]) -> dict[str, Any]:
    """Set each answer in `namespace` from the saved data (None where missing); returns them."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if type(data) is not dict:
        raise ValueError("the saved answers are not a mapping")
    loaded = {}
    for name in names:
        item = data.get(name)
        if type(item) is dict and "recorded" in item and type(item["recorded"]) is dict:
            rec = item["recorded"]
            events = rec.get("events")
            loaded[name] = Replayer(name, str(rec.get("type"))[:200], list(events) if type(events) is list else [])
        elif type(item) is dict and "value" in item:
            loaded[name] = decode(item["value"])
        else:
            loaded[name] = None
    namespace.update(loaded)
    return loaded


def check_failed(exc: BaseException, names: Iterable[str]) -> None:
    """A check statement raised before it gave a verdict: publish one 'raised' record per exercise it checks."""
    for name in names:
        _publish({"name": str(name), "ok": False, "verdict": "not yet", "raised": type(exc).__name__,
                  "message": f"{type(exc).__name__}: {exc}"[:300]})
