"""Static KV cache: token-exact with chapter 03's cache, and one compiled graph for every decode step."""

from __future__ import annotations

import pytest
import torch

from course_lib.caches.static_cache import GraphCounter, StaticKVCache, compile_decode_step, forward_static
from course_lib.decoding.batching import pad_batch
from course_lib.decoding.static import generate_static
from course_lib.text.tokenizer import get_encoding


@pytest.mark.parametrize("prompt_len", [1, 5, 12])
def test_static_greedy_equals_contiguous_cache(prompt_len, make_gpt):
    model = make_gpt(block_size=32, dropout=0.0)
    x = torch.randint(0, 300, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    new = 32 - prompt_len
    assert torch.equal(generate_static(model, x, new, temperature=0.0), model.generate(x, new, temperature=0))


def test_static_sampling_equals_contiguous_with_same_seed(make_gpt):
    model = make_gpt(block_size=32, dropout=0.0)
    x = torch.randint(0, 300, (3, 4), generator=torch.Generator().manual_seed(5))
    kw = dict(temperature=0.9, top_k=50, top_p=0.95)
    a = generate_static(model, x, 20, generator=torch.Generator().manual_seed(1), **kw)
    b = model.generate(x, 20, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)


def test_static_left_padded_batch_equals_each_prompt_alone(shipped_gpt):
    enc = get_encoding()
    prompts = ["农夫山泉", "Sunbeam Instant Ramen", "元气"]
    ids, mask = pad_batch(enc, prompts, shipped_gpt.block_size)
    batch = generate_static(shipped_gpt, ids, 12, temperature=0.0, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = shipped_gpt.generate(torch.tensor([enc.encode(p)]), 12, temperature=0)
        assert batch[row, -12:].tolist() == alone[0, -12:].tolist(), p


def test_static_logits_match_forward(make_gpt):
    model = make_gpt(block_size=16, dropout=0.0)
    x = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    cache = StaticKVCache.for_model(model, 2)
    with torch.no_grad():
        full = model(x)
        first = forward_static(model, cache, x[:, :5], torch.arange(5))
        assert torch.allclose(first, full[:, 4], atol=1e-5)
        for t in range(5, 9):
            step = forward_static(model, cache, x[:, t:t + 1], torch.tensor([t]))
            assert torch.allclose(step, full[:, t], atol=1e-5)


def test_compiled_static_step_is_one_graph_for_50_steps_and_any_prompt_length(shipped_gpt):
    counter = GraphCounter()
    step = compile_decode_step(backend=counter)
    for prompt in ([100, 200, 300], [5, 6, 7, 8, 9, 10, 11]):
        x = torch.tensor([prompt])
        out = generate_static(shipped_gpt, x, 51, temperature=0.0, step=step)  # 50 compiled decode steps
        assert torch.equal(out, shipped_gpt.generate(x, 51, temperature=0))
    assert counter.graphs == 1


def test_compiled_growing_cache_recompiles(shipped_gpt):
    """The contrast: chapter 03's cache gives dynamo a new length every step (static shapes: one graph per step)."""
    torch._dynamo.reset()
    counter = GraphCounter()
    step = torch.compile(shipped_gpt.decode_step, backend=counter, dynamic=False)
    logits, cache = shipped_gpt.prefill(torch.tensor([[100, 200, 300]]))
    for _ in range(6):
        logits = step(logits.argmax(-1, keepdim=True), cache)
    assert counter.graphs == 6


def test_static_cache_too_short_names_the_fix(make_gpt):
    model = make_gpt(block_size=16, dropout=0.0)
    with pytest.raises(ValueError, match="need 16 slots .* static cache has max_len 12"):
        generate_static(model, torch.zeros(1, 10, dtype=torch.long), 7, temperature=0.0, cache=StaticKVCache.for_model(model, 1, 12))
    # a cache of block_size slides its window past block_size, like every loop (was: an error here)
    idx = torch.zeros(1, 10, dtype=torch.long)
    assert torch.equal(generate_static(model, idx, 7, temperature=0.0), model.generate(idx, 7, temperature=0))


# ------------------------------------------------------------------ generate_static(compile=...)
BRAND_PROMPTS = ["农夫山泉", "Sunbeam Instant Ramen", "元气", "Coca-Cola 330ml", "Meadow Farm Whole Milk 1L"]


@pytest.fixture
def counting_compile(monkeypatch):
    """generate_static(compile=...) with dynamo but no code generation: graphs counted per function."""
    import course_lib.caches.static_cache as sc
    counters = {"decode": GraphCounter(), "prefill": GraphCounter()}
    monkeypatch.setattr(sc, "_COMPILED", {})
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(
        fn, backend=counters["decode" if fn is sc._decode_fn else "prefill"], fullgraph=True, dynamic=False))
    torch._dynamo.reset()
    yield counters
    monkeypatch.undo()
    sc._COMPILED.clear()  # never hand the counting functions to a later test


def batch_of(enc, n: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [BRAND_PROMPTS[i % len(BRAND_PROMPTS)] + " x" * (i // len(BRAND_PROMPTS)) for i in range(n)]
    return pad_batch(enc, prompts, block_size)


def test_compile_true_is_one_decode_graph_after_many_steps_and_token_exact(shipped_gpt, counting_compile):
    """Many decode steps, prompts of several lengths in one bucket: one decode graph, one prefill graph,
    and the tokens of the eager contiguous cache."""
    enc = get_encoding()
    limit = torch._dynamo.config.recompile_limit
    for p in ("农夫山泉", "Sunbeam Instant Ramen", "元气森林"):  # 3-6 tokens: all in the 16 bucket
        x = torch.tensor([enc.encode(p)])
        out = generate_static(shipped_gpt, x, 60, temperature=0.0, compile=True)
        assert torch.equal(out, shipped_gpt.generate(x, 60, temperature=0)), p
    assert counting_compile["decode"].graphs == 1 and counting_compile["prefill"].graphs == 1
    assert torch._dynamo.config.recompile_limit == limit  # raised during the call only (chapter 06 teaches the default)


@pytest.mark.parametrize("compile_", ["decode", True])
@pytest.mark.parametrize("batch", [1, 16])
def test_compiled_static_equals_eager_cache_with_padding(shipped_gpt, counting_compile, compile_, batch):
    """Batch 1 and a left-padded batch 16 (the bucket adds more padding): the eager contiguous cache's tokens."""
    ids, mask = batch_of(get_encoding(), batch, shipped_gpt.block_size)
    ref = shipped_gpt.generate(ids, 24, temperature=0, attention_mask=mask)
    assert torch.equal(generate_static(shipped_gpt, ids, 24, temperature=0.0, attention_mask=mask, compile=compile_), ref)
    assert counting_compile["decode"].graphs == 1


def test_inductor_compiled_static_equals_eager_cache(shipped_gpt):
    """The real compiler (inductor's fused kernels, not just dynamo's graph): still token-identical, padded batch 16."""
    ids, mask = batch_of(get_encoding(), 16, shipped_gpt.block_size)
    ref = shipped_gpt.generate(ids, 24, temperature=0, attention_mask=mask)
    assert torch.equal(generate_static(shipped_gpt, ids, 24, temperature=0.0, attention_mask=mask, compile=True), ref)


def test_compile_pads_prompt_to_bucket_only_when_new_tokens_fit(make_gpt, counting_compile):
    """A prompt whose bucket would leave no room for the new tokens is prefilled eagerly at its own length (still exact)."""
    model = make_gpt(block_size=32, dropout=0.0)
    x = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate_static(model, x, 12, temperature=0.0, compile=True), model.generate(x, 12, temperature=0))
    assert counting_compile["prefill"].graphs == 0


def test_compile_argument_is_checked(make_gpt):
    with pytest.raises(ValueError, match="compile must be one of"):
        generate_static(make_gpt(), torch.zeros(1, 3, dtype=torch.long), 2, temperature=0.0, compile="yes")


def test_greedy_fast_path_equals_filtered_argmax():
    """SamplingSettings.sample at temperature 0 skips filter(): same ids, ties included (first maximum)."""
    from course_lib.decoding.sampling import SamplingSettings
    logits = torch.randn(16, 1000, generator=torch.Generator().manual_seed(0)).round(decimals=1)  # many ties
    s = SamplingSettings(0.0, top_k=5, top_p=0.9)
    assert torch.equal(s.sample(logits), s.filter(logits).argmax(-1, keepdim=True))


def test_compile_mode_is_cuda_graphs_on_cuda_only():
    from course_lib.caches.static_cache import default_compile_mode
    assert default_compile_mode("cuda") == "reduce-overhead"
    assert default_compile_mode("cpu") is None and default_compile_mode(torch.device("mps")) is None
