"""One way to time things, used by every timing in the notebooks and the benchmarks.

Three rules a reviewer checks (chapter 03, `benchmarks/`):
- warm up first: the first call pays for allocation, kernel selection, lazy initialisation;
- synchronise the device before reading the clock: CUDA and MPS run asynchronously, so without
  `torch.cuda.synchronize()` the clock measures how fast work was *queued*, not done;
- report the median of several runs: one slow run (another process, a page fault) must not
  decide the number.
Timings are never asserted in tests: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from course_lib.core.checks import check_int


def sync(device: str | torch.device | None = None) -> None:
    """Wait until all queued work on `device` is finished (a no-op on the CPU, which runs eagerly)."""
    dtype = torch.device(device).type if device is not None else "cpu"
    if dtype == "cuda":
        torch.cuda.synchronize()
    elif dtype == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    """The result of `time_fn`: every timed run in seconds, and what the last run returned."""

    times: list[float]
    result: Any = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.times)

    @property
    def ms(self) -> float:
        """Median milliseconds per call."""
        return 1000 * self.seconds


def time_fn(fn: Callable[[], Any], device: str | torch.device | None = "cpu", repeats: int = 5,
            warmup: int = 1) -> Timing:
    """Call fn() `warmup` times untimed, then `repeats` times timed (device synchronised before
    each clock read); `.seconds` is the median."""
    repeats, warmup = check_int("repeats", repeats, low=1), check_int("warmup", warmup, low=0)
    for _ in range(warmup):
        fn()
    sync(device)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(times, result)
