"""One way to time things, used by every timing in the notebooks and the benchmarks.

Rules a reviewer checks (chapter 03, `benchmarks/`):
- warm up first: the first call pays for allocation, kernel selection, lazy initialisation;
- synchronise the device before reading the clock: CUDA and MPS run asynchronously, so without
  `torch.cuda.synchronize()` the clock measures how fast work was *queued*, not done;
- report the median of several runs: one slow run (another process, a page fault) must not
  decide the number;
- time the variants you compare *interleaved*, in one call (`compare`): round 1 runs A, B, C,
  round 2 runs B, C, A, ... When A is timed for a second and then B for a second, a change in the
  machine's load between the two seconds shows up as a difference between A and B. Interleaved,
  the load hits every variant alike, and the per-round ratios show how much the run can be trusted;
- let the numbers speak: `Comparison.verdict()` writes the sentence from the measured medians,
  so no text written in advance can contradict what this run measured. `Comparison.report()`
  prints it beside the saved reference run (`assets/bench/*.json`) and the command that
  re-measures it.
Timings are never asserted in tests: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from course_lib.core.checks import check_int
from course_lib.core.files import atomic_write_text
from course_lib.core.paths import ASSETS, display_path

__all__ = ["sync", "Timing", "time_fn", "Comparison", "compare", "compare_reported", "Reference", "load_reference",
           "save_reference", "BENCH"]

BENCH = ASSETS / "bench"  # saved reference runs, one JSON per benchmark


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
            warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Call fn() `warmup` times untimed, then `repeats` times timed (device synchronised before
    each clock read); `.seconds` is the median. For ONE thing; to compare variants use `compare`."""
    repeats, warmup = check_int("repeats", repeats, low=1), check_int("warmup", warmup, low=0)
    for _ in range(warmup):
        fn()
    sync(device)
    times, result = [], None
    for _ in range(repeats):
        t0 = clock()
        result = fn()
        sync(device)
        times.append(clock() - t0)
    return Timing(times, result)


def _fmt_ratio(r: float) -> str:
    return f"{r:.2f}×" if r < 10 else f"{r:.1f}×"


def _fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{1e3 * s:.3f} ms"
    return f"{1e6 * s:.1f} µs"


@dataclass
class Comparison:
    """Variants timed in interleaved rounds: `times[name][r]` is round r's seconds per call.

    Speed is relative to `baseline`: `speed(name)` = baseline median / name median, so 2.0 means
    twice as fast and 0.5 half as fast. `round_speeds(name)` pairs the two variants round by round
    (both ran within moments of each other), which is what `verdict` uses to say whether the
    rounds agree on the direction."""

    times: dict[str, list[float]]
    baseline: str
    unit: str = "call"
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    order: list[str] = field(default_factory=list, repr=False)  # every timed call, in call order

    def __post_init__(self) -> None:
        if self.baseline not in self.times:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants {list(self.times)}")

    @property
    def names(self) -> list[str]:
        return list(self.times)

    @property
    def rounds(self) -> int:
        return len(self.times[self.baseline])

    def median(self, name: str) -> float:
        """Median seconds per call of one variant."""
        return statistics.median(self.times[name])

    def ms(self, name: str) -> float:
        return 1000 * self.median(name)

    def spread(self, name: str) -> tuple[float, float]:
        """(fastest, slowest) round in seconds: how much this run moved."""
        return min(self.times[name]), max(self.times[name])

    def speed(self, name: str) -> float:
        """How many times as fast as the baseline (medians): > 1 faster, < 1 slower."""
        return self.median(self.baseline) / self.median(name)

    def round_speeds(self, name: str) -> list[float]:
        """The speed ratio of each round on its own (baseline seconds / this variant's seconds)."""
        return [b / t for b, t in zip(self.times[self.baseline], self.times[name], strict=True)]

    def verdict(self, name: str | None = None) -> str:
        """The sentence(s) this run supports, computed from its own numbers, one per variant."""
        names = [name] if name is not None else [n for n in self.names if n != self.baseline]
        lines = []
        for n in names:
            r = self.speed(n)
            rs = self.round_speeds(n)
            word = "faster than" if r > 1 else ("slower than" if r < 1 else "the same speed as")
            line = (f"{n} ran {_fmt_ratio(r)} the speed of {self.baseline} on this run "
                    f"({word} it; median of {self.rounds} interleaved rounds")
            if self.rounds > 1 and min(rs) < 1 < max(rs):
                line += (f"; the rounds disagree on the direction, {_fmt_ratio(min(rs))} to "
                         f"{_fmt_ratio(max(rs))}, so this run does not separate them")
            lines.append(line + ")")
        return "\n".join(lines)

    def table(self) -> str:
        """One line per variant: median, spread of the rounds, speed vs the baseline."""
        width = max(len(n) for n in self.names)
        head = f"{'variant':<{width}}  {'median per ' + self.unit:>16}  {'rounds (min - max)':>24}  vs {self.baseline}"
        rows = [head]
        for n in self.names:
            lo, hi = self.spread(n)
            rows.append(f"{n:<{width}}  {_fmt_seconds(self.median(n)):>16}  "
                        f"{_fmt_seconds(lo) + ' - ' + _fmt_seconds(hi):>24}  {_fmt_ratio(self.speed(n))}")
        return "\n".join(rows)

    def report(self, reference: Reference | str | Path | None = None) -> str:
        """The table and the verdict of this run, then (when given) the saved reference run's
        verdict and the command that re-measures it."""
        parts = [self.table(), "", self.verdict()]
        if reference is not None:
            ref = reference if isinstance(reference, Reference) else load_reference(reference)
            parts += ["", ref.describe()]
        return "\n".join(parts)

    def show(self, reference: Reference | str | Path | None = None) -> None:
        print(self.report(reference))

    def to_dict(self, **meta: Any) -> dict:
        """The saved form (`save_reference` writes it; `load_reference` reads it back)."""
        return {**meta, "baseline": self.baseline, "rounds": self.rounds, "unit": self.unit,
                "rows": [{"variant": n, "median_s": round(self.median(n), 9),
                          "times_s": [round(t, 9) for t in self.times[n]],
                          "speed_vs_baseline": round(self.speed(n), 4)} for n in self.names]}


def _check_variants(variants: Any) -> list[str]:
    if not isinstance(variants, Mapping) or len(variants) < 2:
        raise ValueError("variants must be a dict of at least two {name: zero-argument callable}; "
                         f"got {variants!r:.80}")
    for n, fn in variants.items():
        if not callable(fn):
            raise ValueError(f"variant {n!r} must be a zero-argument callable, got {fn!r:.80}")
    return list(variants)


def _check_baseline(baseline: str | None, names: list[str]) -> str:
    baseline = names[0] if baseline is None else baseline
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {names}")
    return baseline


def compare(variants: Mapping[str, Callable[[], Any]], *, rounds: int = 7, warmup: int = 1,
            baseline: str | None = None, device: str | torch.device | None = "cpu", number: int = 1,
            unit: str = "call", clock: Callable[[], float] = time.perf_counter) -> Comparison:
    """Time every variant in `rounds` interleaved rounds and return a `Comparison`.

    Warm-up: `warmup` untimed rounds first (same interleaving). Round r calls the variants in the
    order rotated by r (A B C, B C A, C A B, ...), so no variant always runs first or right after
    the same neighbour. Each timing is `number` back-to-back calls with the device synchronised
    before both clock reads, divided by `number` (raise `number` for calls far below a
    millisecond). `baseline` defaults to the first variant. `clock` is injectable for tests."""
    names = _check_variants(variants)
    rounds = check_int("rounds", rounds, low=1)
    warmup = check_int("warmup", warmup, low=0)
    number = check_int("number", number, low=1)
    baseline = _check_baseline(baseline, names)
    results: dict[str, Any] = {}

    def measure(n: str) -> float:
        fn = variants[n]
        sync(device)
        t0 = clock()
        for _ in range(number):
            results[n] = fn()
        sync(device)
        return (clock() - t0) / number

    times, order = _interleaved_rounds(variants, names, rounds, warmup, measure)
    return Comparison(times, baseline, unit=unit, results=results, order=order)


def _round_order(names: list[str], r: int) -> list[str]:
    """Round r's call order: the variants rotated by r (A B C, B C A, C A B, ...)."""
    return names[r % len(names):] + names[:r % len(names)]


def _interleaved_rounds(variants: Mapping[str, Callable[[], Any]], names: list[str], rounds: int, warmup: int,
                        measure: Callable[[str], float]) -> tuple[dict[str, list[float]], list[str]]:
    """`warmup` untimed rounds, then `rounds` timed ones, each in its rotated order; measure(name) -> the
    seconds of one timing. Returns every variant's times and the order the timings were taken in."""
    for r in range(warmup):
        for n in _round_order(names, r):
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    order: list[str] = []
    for r in range(rounds):
        for n in _round_order(names, r):
            times[n].append(measure(n))
            order.append(n)
    return times, order


def compare_reported(variants: Mapping[str, Callable[[], float]], *, rounds: int = 5, warmup: int = 0,
                     baseline: str | None = None, unit: str = "step") -> Comparison:
    """Like `compare`, for variants that time themselves: each call returns the seconds *it* measured
    (e.g. the median step time a subprocess reports, whose start-up must not count). The rounds are
    interleaved and rotated exactly as in `compare`; each call's return value is its round's time."""
    names = _check_variants(variants)
    rounds = check_int("rounds", rounds, low=1)
    warmup = check_int("warmup", warmup, low=0)
    baseline = _check_baseline(baseline, names)

    def measure(n: str) -> float:
        seconds = variants[n]()
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 \
                or seconds == float("inf"):
            raise ValueError(f"variant {n!r} must return the positive, finite seconds it measured; got {seconds!r}")
        return float(seconds)

    times, order = _interleaved_rounds(variants, names, rounds, warmup, measure)
    return Comparison(times, baseline, unit=unit, order=order)


@dataclass
class Reference:
    """A saved benchmark run: seconds per unit for each variant, and how to re-measure it."""

    seconds: dict[str, float]
    baseline: str
    command: str
    source: str
    about: str = ""

    def speed(self, name: str) -> float:
        return self.seconds[self.baseline] / self.seconds[name]

    def verdict(self) -> str:
        return "\n".join(f"{n} ran {_fmt_ratio(self.speed(n))} the speed of {self.baseline}"
                         for n in self.seconds if n != self.baseline)

    def describe(self) -> str:
        about = f" ({self.about})" if self.about else ""
        return (f"Saved reference run, {self.source}{about}:\n{self.verdict()}\n"
                f"Re-measure it with: {self.command}")


def _bench_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = BENCH / p
    if not p.exists():
        raise FileNotFoundError(f"no saved reference run at {display_path(p)}: run the benchmark that "
                                "writes it (benchmarks/README.md lists them) or pass the right file name")
    return p


def load_reference(path: str | Path, *, value_key: str = "median_s", name_key: str = "variant",
                   rows_key: str = "rows", where: Mapping[str, Any] | None = None,
                   variants: list[str] | None = None, baseline: str | None = None,
                   higher_is_faster: bool = False, about_keys: tuple[str, ...] = ("torch", "threads")
                   ) -> Reference:
    """Read a saved run from `assets/bench/` (a bare file name is looked up there).

    Rows are `data[rows_key]`, each naming its variant in `name_key` and its number in `value_key`
    (seconds, or a rate such as tokens/s with `higher_is_faster=True`); `where` keeps only rows
    whose fields equal the given values (e.g. {"batch": 1}); `variants` picks and orders them;
    `baseline` defaults to the first. The command is `data["command"]` (or `data["meta"]["command"]`)."""
    p = _bench_path(path)
    data = json.loads(p.read_text(encoding="utf-8"))
    meta = {**data.get("meta", {}), **{k: v for k, v in data.items() if not isinstance(v, (list, dict))}}
    rows = [r for r in data.get(rows_key, []) if all(r.get(k) == v for k, v in (where or {}).items())]
    values = {}
    for r in rows:
        if name_key in r and isinstance(r.get(value_key), (int, float)) and r[value_key] > 0:
            values[r[name_key]] = 1.0 / r[value_key] if higher_is_faster else float(r[value_key])
    if variants is not None:
        missing = [v for v in variants if v not in values]
        if missing:
            raise ValueError(f"{display_path(p)} has no {value_key!r} for {missing}; it has {list(values)}")
        values = {v: values[v] for v in variants}
    if len(values) < 2:
        raise ValueError(f"{display_path(p)}: fewer than two variants with {value_key!r} in {rows_key!r}")
    baseline = baseline or next(iter(values))
    if baseline not in values:
        raise ValueError(f"baseline {baseline!r} is not in {display_path(p)}: it has {list(values)}")
    if "command" not in meta:
        raise ValueError(f"{display_path(p)} does not say which command re-measures it (no 'command')")
    about = ", ".join(f"{k} {meta[k]}" for k in about_keys if k in meta)
    return Reference(values, baseline, str(meta["command"]), display_path(p), about)


def save_reference(comparison: Comparison, path: str | Path, *, command: str, **meta: Any) -> Path:
    """Write a `Comparison` as a reference run (atomically; refuses to overwrite an earlier run)."""
    info = {"command": command, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **meta}
    text = json.dumps(comparison.to_dict(**info), indent=1, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text, overwrite=False)
