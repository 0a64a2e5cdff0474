"""The timing helper: warm-up, repeats, median, argument checks (never a timing assertion)."""

from __future__ import annotations

import pytest
import torch

from course_lib.core.timing import Timing, sync, time_fn


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
