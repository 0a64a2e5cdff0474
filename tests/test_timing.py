"""The timing helper: warm-up, repeats, median, argument checks (never a timing assertion)."""

from __future__ import annotations

import json

import pytest
import torch

from course_lib.core.timing import Comparison, Timing, compare, compare_reported, load_reference, save_reference, sync, time_fn


def test_warmup_and_repeats_are_counted_and_result_kept():
    calls = []
    t = time_fn(lambda: calls.append(1) or len(calls), device="cpu", repeats=4, warmup=2)
    assert len(calls) == 6 and len(t.times) == 4 and t.result == 6
    assert t.ms == pytest.approx(1000 * t.seconds)


def test_median_not_mean():
    assert Timing([1.0, 2.0, 100.0]).seconds == 2.0


@pytest.mark.parametrize("kw", [{"repeats": 0}, {"repeats": 1.5}, {"warmup": -1}, {"repeats": True}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        time_fn(lambda: None, **kw)


@pytest.mark.parametrize("device", ["cpu", "meta", torch.device("cpu"), None])
def test_sync_is_a_noop_off_cuda_and_mps(device):
    sync(device)  # must not touch torch.cuda / torch.mps on a CPU-only build


# --- compare: interleaved rounds, verdict from the numbers (a fake clock, never real timing) ---


class FakeClock:
    """A clock that only moves when a variant 'runs': each variant advances it by its own cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, seconds, log=None, name=None):
        def fn():
            self.now += seconds
            if log is not None:
                log.append(name)
            return name
        return fn


def test_rounds_are_interleaved_and_rotated_after_warmup():
    clock, log = FakeClock(), []
    variants = {n: clock.work(1.0, log, n) for n in ("a", "b", "c")}
    c = compare(variants, rounds=4, warmup=1, clock=clock)
    # warm-up round first (untimed), then round r starts at variant r mod 3
    assert log == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert c.order == log[3:]
    assert all(len(t) == 4 for t in c.times.values())
    assert c.results == {"a": "a", "b": "b", "c": "c"}


def test_number_divides_and_counts_calls():
    clock, log = FakeClock(), []
    c = compare({"x": clock.work(0.002, log, "x"), "y": clock.work(0.001, log, "y")},
                rounds=3, warmup=0, number=5, clock=clock)
    assert len(log) == 30
    assert c.median("x") == pytest.approx(0.002) and c.median("y") == pytest.approx(0.001)


@pytest.mark.parametrize("cost, word", [(2.0, "slower than"), (0.5, "faster than"), (1.0, "the same speed as")])
def test_verdict_direction_comes_from_the_numbers(cost, word):
    clock = FakeClock()
    c = compare({"fp32": clock.work(1.0), "int8": clock.work(cost)}, rounds=7, baseline="fp32", clock=clock)
    assert c.speed("int8") == pytest.approx(1 / cost)
    v = c.verdict()
    assert v.startswith(f"int8 ran {1 / cost:.2f}× the speed of fp32 on this run ({word} it")
    assert "median of 7 interleaved rounds" in v and "disagree" not in v


def test_verdict_says_when_rounds_disagree():
    c = Comparison({"a": [1.0, 1.0, 1.0], "b": [0.8, 1.25, 0.9]}, baseline="a")
    assert c.speed("b") == pytest.approx(1 / 0.9)
    assert "disagree on the direction, 0.80× to 1.25×" in c.verdict()
    # the table has one row per variant and the baseline at 1.00×
    rows = c.table().splitlines()
    assert len(rows) == 3 and rows[1].rstrip().endswith("1.00×")


def test_median_is_robust_to_one_slow_round():
    c = Comparison({"a": [1.0, 1.0, 50.0], "b": [2.0, 2.0, 2.0]}, baseline="a")
    assert c.speed("b") == pytest.approx(0.5)


@pytest.mark.parametrize("kw, match", [({"rounds": 0}, "rounds"), ({"warmup": -1}, "warmup"),
                                       ({"number": 0}, "number"), ({"baseline": "z"}, "baseline")])
def test_compare_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        compare({"a": lambda: None, "b": lambda: None}, **kw)


def test_compare_needs_two_callables():
    with pytest.raises(ValueError, match="at least two"):
        compare({"a": lambda: None})
    with pytest.raises(ValueError, match="callable"):
        compare({"a": lambda: None, "b": 3})


def test_reference_round_trip_and_report(tmp_path):
    clock = FakeClock()
    c = compare({"fp32": clock.work(1.0), "int8": clock.work(1.6)}, rounds=3, clock=clock)
    path = save_reference(c, tmp_path / "ref.json", command="python benchmarks/x.py --out ref.json")
    with pytest.raises(FileExistsError):
        save_reference(c, path, command="again")
    ref = load_reference(path)
    assert ref.baseline == "fp32" and ref.speed("int8") == pytest.approx(1 / 1.6)
    text = c.report(ref)
    assert "int8 ran 0.62× the speed of fp32 on this run" in text
    assert "int8 ran 0.62× the speed of fp32\n" in text
    assert "Re-measure it with: python benchmarks/x.py --out ref.json" in text


def test_reference_from_rates_with_filter(tmp_path):
    p = tmp_path / "q.json"
    p.write_text(json.dumps({"command": "python b.py", "rows": [
        {"variant": "fp32", "batch": 1, "tok_s": 30.0}, {"variant": "int8", "batch": 1, "tok_s": 15.0},
        {"variant": "fp32", "batch": 16, "tok_s": 500.0}, {"variant": "int8", "batch": 16, "tok_s": 1000.0}]}))
    ref = load_reference(p, value_key="tok_s", higher_is_faster=True, where={"batch": 16})
    assert ref.speed("int8") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no 'tok_s' for"):
        load_reference(p, value_key="tok_s", higher_is_faster=True, variants=["fp32", "bf16"])
    with pytest.raises(FileNotFoundError, match="no saved reference run"):
        load_reference(tmp_path / "missing.json")


@pytest.mark.parametrize("name", ["compile_decode_cpu.json", "speculative_cpu.json"])
def test_shipped_reference_runs_load(name):
    ref = load_reference(name, value_key="median_s" if "compile" in name else "seconds")
    assert len(ref.seconds) >= 2 and ref.command.startswith("python benchmarks/")


def test_compare_reported_uses_what_each_call_reports_in_interleaved_order():
    log = []
    reports = {"one": iter([0.010, 0.011, 0.009]), "two": iter([0.040, 0.038, 0.042])}

    def variant(name):
        def fn():
            log.append(name)
            return next(reports[name])
        return fn

    c = compare_reported({"one": variant("one"), "two": variant("two")}, rounds=3, unit="step")
    assert log == ["one", "two", "two", "one", "one", "two"] and c.order == log
    assert c.times == {"one": [0.010, 0.011, 0.009], "two": [0.040, 0.038, 0.042]}
    assert c.verdict().startswith("two ran 0.25× the speed of one on this run (slower than it")
    with pytest.raises(ValueError, match="positive, finite seconds"):
        compare_reported({"a": lambda: 1.0, "b": lambda: None}, rounds=1)
