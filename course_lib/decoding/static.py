"""The decode loop over a static KV cache: `generate_static` and its runner.

The cache itself (`caches.static_cache`: tensor slots, one mask rule, compiled steps, bucketed prompt
lengths) stands below; this module plugs it into THE loop (`decoding.decode.generate_ids`: eos ids,
stop strings, repetition penalty, the block_size policy) through a `StaticRunner`.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from course_lib.caches.static_cache import (
    BUCKETS,
    COMPILE_MODES,
    StaticKVCache,
    StepFn,
    compiled_steps,
    default_compile_mode,
    forward_static,
    pad_left,
    reused_cache,
)
from course_lib.core.checks import check_choice, check_generation_inputs
from course_lib.decoding.decode import generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings, check_sampling_args


def _bucket_or_none(n: int, limit: int) -> int | None:
    return next((b for b in BUCKETS if n <= b <= limit), None)


class StaticRunner:
    """The decode loop's runner for a static cache: a prefill at the window's length (slots 0..T-1), then
    one step per token at the slot tensor `input_pos`, advanced in place (a compiled step or a CUDA graph
    always receives the same tensor). Rows never leave the batch: that would be a new shape, a new graph."""

    drops_rows = False

    def __init__(self, model, cache: StaticKVCache, step: StepFn = forward_static, prefill: StepFn = forward_static,
                 copy_out: bool = False, cuda_graphs: bool = False):
        self.model, self.cache, self.step_fn, self.prefill_fn = model, cache, step, prefill
        self.copy_out, self.cuda_graphs = copy_out, cuda_graphs
        self.input_pos = None

    def prefill(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        T = window.shape[1]
        self.cache.set_padding(mask)
        self.cache.length = 0
        logits = self.prefill_fn(self.model, self.cache, window, torch.arange(T, device=window.device))
        self.cache.advance(T)
        self.input_pos = torch.tensor([T], device=window.device)
        return logits

    def step(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may now be overwritten
        token = window[:, -1:].clone(memory_format=torch.contiguous_format)  # strides (1, 1): a view's would recompile
        logits = self.step_fn(self.model, self.cache, token, self.input_pos)
        logits = logits.clone() if self.copy_out else logits
        self.input_pos += 1  # in place: the step always receives the same tensor, with a new value
        self.cache.advance(1)
        return logits

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)

    def sample(self, settings: SamplingSettings, logits: torch.Tensor, generator, draw: str) -> torch.Tensor:
        return settings.sample(logits, generator, draw)


@torch.no_grad()
def generate_static(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                    top_p: float | None = None, *, generator: torch.Generator | None = None,
                    attention_mask: torch.Tensor | None = None, cache: StaticKVCache | None = None,
                    step: StepFn = forward_static, prefill: StepFn = forward_static,
                    compile: bool | str = False, mode: str | None = "auto", repetition_penalty: float = 1.0,
                    eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None,
                    pad_token_id: int | None = None, enc=None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T) using a static cache; temperature=0 is greedy.

    The decode loop (`decoding.decode.decode_loop`: eos ids, stop strings, repetition penalty, the
    block_size policy) with a `StaticRunner`. `step` runs each decode step (pass `compile_decode_step()`
    to compile it); `prefill` runs the prompt (eager by default: its shape changes with every prompt
    length). The cache's max_len must hold min(T + max_new_tokens, block_size): past block_size the
    window slides and the window is re-prefilled (as in every loop of the course).

    compile=True compiles both (`compiled_steps`): the prompt is left-padded to its bucket in
    `BUCKETS` (the mask hides the padding, positions start at each row's first real token) when the
    bucket still leaves room for the new tokens, and without a `cache` one of a bucketed length is
    reused. compile="decode" compiles the decode step only (eager prefill at the prompt's own length).
    mode: the decode step's torch.compile mode; "auto" = `default_compile_mode(idx.device)`.
    """
    check_choice("compile", compile, COMPILE_MODES)
    settings = SamplingSettings(temperature, top_k, top_p, repetition_penalty)
    check_sampling_args(max_new_tokens=max_new_tokens)
    attention_mask = check_generation_inputs(idx, model.h_params["vocab_size"], attention_mask, pad_token_id)
    B, T = idx.shape
    block = model.block_size
    n_pad = 0
    if compile:
        mode = default_compile_mode(idx.device) if mode == "auto" else mode
        step, compiled_prefill = compiled_steps(idx.device, mode)
        limit = block if cache is None else min(cache.max_len, block)
        if compile is True and (L := _bucket_or_none(T, limit - max_new_tokens)) is not None:
            prefill = compiled_prefill
            n_pad = L - T
            idx, attention_mask = pad_left(idx, L, attention_mask)
            T = L
        if cache is None:
            cache = reused_cache(model, B, _bucket_or_none(min(T + max_new_tokens, block), block) or block)
    cache = StaticKVCache.for_model(model, B) if cache is None else cache
    if cache.batch_size != B:
        raise ValueError(f"cache was built for batch size {cache.batch_size}, got {B}; build one per batch size")
    need = min(T + max_new_tokens, block)
    if need > cache.max_len:
        raise ValueError(f"{T} prompt + {max_new_tokens} new tokens need {need} slots (the window never exceeds "
                         f"block_size {block}) but the static cache has max_len {cache.max_len}; "
                         "use a longer cache (at most block_size) or fewer new tokens")
    cuda_graphs = compile and mode == "reduce-overhead"
    # A CUDA-graph step returns the same output buffer every replay: keep a copy. Eager and plain inductor
    # steps return a fresh tensor, and copying B x 100k logits every step costs (a step passed in: be safe).
    copy_out = cuda_graphs or (not compile and step is not forward_static)
    runner = StaticRunner(model, cache, step, prefill, copy_out, cuda_graphs)
    # Every batch size and cache bucket is a graph of the same function: allow more than dynamo's default 8
    # here only (chapter 06 shows the default limit at work elsewhere).
    limit = torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, 64)) if compile else nullcontext()
    with limit:
        out = generate_ids(model, idx, max_new_tokens, settings.temperature, settings.top_k, settings.top_p,
                           repetition_penalty=settings.repetition_penalty, generator=generator,
                           attention_mask=attention_mask, eos_token_id=eos_token_id, stop=stop,
                           pad_token_id=pad_token_id, enc=enc, runner=runner)
    return out[:, n_pad:]  # the bucket's padding was ours, not the caller's
