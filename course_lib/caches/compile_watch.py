"""Watching torch.compile: how many graphs dynamo built, which guard failed each time, and the eager fallback.

`torch.compile` guards every graph on what it assumed (shapes, dtypes, Python constants such as a
position passed as an int). A call that breaks a guard recompiles; after
`torch._dynamo.config.recompile_limit` recompiles (8 by default) dynamo stops compiling that
function and runs it eagerly, with one log warning. `watch_compiles()` collects all of that in
plain data so a notebook can print it (without dynamo's log lines, which carry machine paths).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class CompileReport:
    graphs: int = 0                                        # graphs dynamo handed to the backend
    recompile_reasons: list[str] = field(default_factory=list)  # each failed guard, in the order first seen
    hit_limit: bool = False                                # later calls run eagerly (uncompiled)
    limit: int = 0

    @property
    def recompiles(self) -> int:
        return max(self.graphs - 1, 0)

    def summary(self) -> str:
        text = f"{self.graphs} graph(s), {self.recompiles} recompile(s)"
        if self.hit_limit:
            text += f"; hit recompile_limit ({self.limit}): later calls run eagerly"
        return text


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _clean(reason: str) -> str:
    """'0/3: pos == 3   # return f(...)  # file.py:13 in step' -> 'pos == 3'."""
    first = reason.strip().splitlines()[0]
    return re.sub(r"^\d+/\d+:\s*", "", first.split("#")[0]).strip()


@contextmanager
def watch_compiles() -> Iterator[CompileReport]:
    """Reset dynamo, then count graphs and recompiles of everything compiled inside the block."""
    from torch._dynamo.utils import counters, guard_failures

    torch._dynamo.reset()
    counters.clear()
    guard_failures.clear()
    report = CompileReport(limit=torch._dynamo.config.recompile_limit)
    capture = _Capture()
    logger = logging.getLogger("torch._dynamo.convert_frame")  # where the "hit recompile_limit" warning comes from
    old_propagate = logger.propagate
    logger.addHandler(capture)
    logger.propagate = False
    try:
        yield report
    finally:
        logger.removeHandler(capture)
        logger.propagate = old_propagate
        report.graphs = counters["stats"]["unique_graphs"]
        # every call re-checks each cached graph (newest first), so reasons repeat: keep each once
        report.recompile_reasons = list(dict.fromkeys(_clean(r) for reasons in guard_failures.values() for r in reasons))
        report.hit_limit = any("recompile_limit" in m for m in capture.messages)


@contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch's log warnings and stderr dumps inside the block (e.g. the partial graph `torch.export`
    prints on failure, full of machine paths); the exception itself still propagates."""
    import contextlib
    import io

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
