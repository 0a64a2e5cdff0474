"""Chapter 06's pitfalls: each broken version fails the way the notebook says, each fixed version is right."""

from __future__ import annotations

import warnings

import pytest
import torch

from course_lib.caches.compile_watch import watch_compiles
from course_lib.caches.static_cache import (
    GraphCounter,
    StaticKVCache,
    StaticStep,
    bucket_length,
    forward_static,
    pad_left,
)
from course_lib.decoding.static import generate_static
from course_lib.labs.graph_pitfalls import BranchyStep, ReusedOutput


@pytest.fixture(scope="module")
def model(make_gpt):
    return make_gpt(block_size=32, dropout=0.0)


PROMPT = torch.tensor([[11, 22, 33, 44, 55]])


def test_traced_branch_silently_takes_the_decode_path(model):
    step = BranchyStep(model, StaticKVCache.for_model(model, 1))
    with torch.no_grad():
        right = step(PROMPT, torch.arange(5))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(step, (PROMPT[:, -1:], torch.tensor([5])), check_trace=False)
        wrong = traced(PROMPT, torch.arange(5))
    assert any(w.category.__name__ == "TracerWarning" for w in caught)
    assert (wrong - right).abs().max() > 1e-3


def test_traced_branchless_step_generalises_from_decode_to_prefill(model):
    step = StaticStep(model, StaticKVCache.for_model(model, 1))
    with torch.no_grad():
        right = step(PROMPT, torch.arange(5))
        traced = torch.jit.trace(step, (PROMPT[:, -1:], torch.tensor([5])), check_trace=False)
        assert torch.allclose(traced(PROMPT, torch.arange(5)), right, atol=1e-6)


def test_export_refuses_the_data_dependent_branch_and_accepts_the_fix(model):
    cache = StaticKVCache.for_model(model, 1)
    with pytest.raises(Exception, match="data-dependent"):
        torch.export.export(BranchyStep(model, cache), (PROMPT, torch.arange(5)))
    T = torch.export.Dim("T", min=1, max=32)
    step = StaticStep(model, cache)
    graph = torch.export.export(step, (PROMPT, torch.arange(5)), dynamic_shapes={"ids": {1: T}, "input_pos": {0: T}}).module()
    with torch.no_grad():
        full = model(torch.cat([PROMPT, torch.tensor([[66]])], dim=1))
        assert torch.allclose(graph(PROMPT, torch.arange(5)), full[:, 4], atol=1e-5)          # prefill shape
        assert torch.allclose(graph(torch.tensor([[66]]), torch.tensor([5])), full[:, 5], atol=1e-5)  # decode shape


def test_python_int_position_hits_the_recompile_limit_tensor_position_is_one_graph(model):
    def step_int(model, cache, token, pos: int):
        return forward_static(model, cache, token, torch.tensor([pos]))

    cache = StaticKVCache.for_model(model, 1)
    with watch_compiles() as bad, torch.no_grad():
        f = torch.compile(step_int, backend=GraphCounter(), dynamic=False)
        outs = [f(model, cache, torch.tensor([[7]]), p) for p in range(12)]
    assert bad.graphs == bad.limit == torch._dynamo.config.recompile_limit and bad.hit_limit
    assert bad.recompile_reasons[:3] == ["pos == 0", "pos == 1", "pos == 2"]
    with watch_compiles() as good, torch.no_grad():
        f = torch.compile(forward_static, backend=GraphCounter(), dynamic=False)
        pos = torch.tensor([0])
        for p in range(12):
            assert torch.allclose(f(model, cache, torch.tensor([[7]]), pos), outs[p], atol=1e-6)  # eager fallback is still right
            pos += 1
    assert good.graphs == 1 and not good.hit_limit


def test_mark_dynamic_prefill_is_one_graph_for_every_length(model):
    cache = StaticKVCache.for_model(model, 1)
    with watch_compiles() as rep, torch.no_grad():
        f = torch.compile(forward_static, backend=GraphCounter(), dynamic=False)
        for T in (3, 6, 9, 12):
            ids, pos = torch.arange(T)[None] + 10, torch.arange(T)
            torch._dynamo.mark_dynamic(ids, 1)
            torch._dynamo.mark_dynamic(pos, 0)
            assert torch.allclose(f(model, cache, ids, pos), model(ids)[:, -1], atol=1e-5)
    assert rep.graphs == 1


def test_bucketed_prefill_is_one_graph_per_bucket_and_token_exact(model):
    counter = GraphCounter()
    prefill = torch.compile(forward_static, backend=counter, dynamic=False)
    with watch_compiles():
        for T in (3, 5, 7, 9, 12):
            idx = torch.arange(T)[None] + 40
            ids, mask = pad_left(idx, bucket_length(T, (8, 16)))
            out = generate_static(model, ids, 6, temperature=0.0, attention_mask=mask, prefill=prefill)
            assert torch.equal(out[:, -6:], model.generate(idx, 6, temperature=0)[:, -6:]), T
    assert counter.graphs == 2


def test_bucket_length_names_the_fix():
    assert bucket_length(9, (8, 16)) == 16
    with pytest.raises(ValueError, match="add a larger bucket"):
        bucket_length(17, (8, 16))


def test_reused_output_is_overwritten_unless_cloned(model):
    cache = StaticKVCache.for_model(model, 1)
    step = ReusedOutput(forward_static)
    with torch.no_grad():
        first = step(model, cache, PROMPT, torch.arange(5))
        kept = first.clone()
        second = step(model, cache, torch.tensor([[66]]), torch.tensor([5]))
    assert first is second and torch.equal(first, second)      # the bug: the first result is gone
    assert not torch.allclose(kept, second)                      # the fix: a clone keeps it
