"""Seed 002's inference engine rebuilt in PyTorch: one static graph per phase, and a phase flag.

MindFormers compiles one static graph per phase (`prefill` for the prompt, `increment` for each
decode step) and keeps the current phase in the model. `generate()` starts with a prefill and
leaves the model in `increment`; a following low-level `infer()` with a prompt inherits that phase
and hands prefill inputs to the decode graph. MindSpore's error in seed 002, "the dims of 1th input
must be the same as expected, but got expected: 1, and input: 2", compares the *number of
dimensions* of that graph input (1-D expected, 2-D given), not a length.

Here each phase's graph is a `torch.export` program over the static KV cache: the `increment`
graph has shapes fixed at T = 1, the `prefill` graph accepts any prompt length T >= 2. Calling the
wrong one raises PyTorch's own shape guard, which checks the length (`ids.size()[1] == 1`): a
different check, the same kind of failure. `Engine(design="phase-flag")` reproduces it. Seed 002's
adopted fix runs `infer` first and clears the cache (`clear_cache()`) before `generate`; it also
lists reloading the model before each test (about 20 s per load for its model; not adopted).
`design="inputs"` removes the cause: the graph is chosen from the input itself (T = 1 → decode graph,
T > 1 → prefill graph), and positions are always passed explicitly, so no hidden state remains.

Seed 002 is one of the course's source documents: notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from course_lib.caches.static_cache import StaticKVCache, StaticStep
from course_lib.core.checks import check_choice, check_token_ids
from course_lib.decoding.decode import generate_ids

Design = Literal["phase-flag", "inputs"]
DESIGNS = ("phase-flag", "inputs")


class Engine:
    """A batch-1 text engine over a static cache with one exported graph per phase (built on first use)."""

    def __init__(self, model, design: Design = "inputs", max_len: int = 64):
        check_choice("design", design, DESIGNS)
        self.model, self.design = model, design
        self.cache = StaticKVCache.for_model(model, 1, max_len)
        self._step = StaticStep(model, self.cache)
        self.graphs: dict[str, torch.nn.Module] = {}
        self.phase = "prefill"  # only read by design="phase-flag"

    def graph(self, phase: str) -> nn.Module:
        """The static graph of one phase: exported once with that phase's shapes, then reused."""
        if phase not in self.graphs:
            dev = self.model.device
            if phase == "increment":
                example = (torch.zeros(1, 1, dtype=torch.long, device=dev), torch.tensor([0], device=dev))
                dims = None
            else:
                example = (torch.zeros(1, 2, dtype=torch.long, device=dev), torch.arange(2, device=dev))
                T = torch.export.Dim("T", min=2, max=self.cache.max_len)
                dims = {"ids": {1: T}, "input_pos": {0: T}}
            with torch.no_grad():
                self.graphs[phase] = torch.export.export(self._step, example, dynamic_shapes=dims).module()
        return self.graphs[phase]

    @torch.no_grad()
    def infer(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor) -> torch.Tensor:
        """One step: T new tokens (1, T) at positions (T,) or (1, T) → last-position logits (1, vocab).

        A step at position 0 starts a new sequence. design="phase-flag" runs the graph of the current
        phase and then moves to "increment" (seed 002's engine); design="inputs" picks the graph from T.
        """
        check_token_ids("input_ids", input_ids, self.model.h_params["vocab_size"])
        if input_ids.shape[0] != 1:
            raise ValueError(f"the engine runs batch 1: input_ids must be (1, T), got {tuple(input_ids.shape)}")
        pos = torch.as_tensor(position_ids).reshape(-1).to(input_ids.device)
        if pos.numel() != input_ids.shape[1]:
            raise ValueError(f"position_ids must give one position per input token ({input_ids.shape[1]}), got {pos.numel()}")
        if pos.dtype.is_floating_point or (pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= self.cache.max_len)):
            raise ValueError(f"position_ids must be integer slots in [0, {self.cache.max_len}) (the engine's max_len), got "
                             f"{pos.tolist()}; clear_cache() and start again, or build Engine(..., max_len=...) longer")
        if self.design == "inputs":
            phase = "increment" if input_ids.shape[1] == 1 else "prefill"
        else:
            phase = self.phase
        logits = self.graph(phase)(input_ids, pos)
        self.phase = "increment"
        return logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy: prefill the prompt (1, T), then one decode step per token; returns (1, T + max_new_tokens).

        Like MindFormers, generate() always starts in the prefill phase; it leaves the engine in "increment".
        """
        T = idx.shape[1]
        need = min(T + max_new_tokens, self.model.block_size)  # the loop slides its window at block_size
        if need > self.cache.max_len:
            raise ValueError(f"{T} + {max_new_tokens} tokens exceed the engine's max_len {self.cache.max_len}")
        self.phase = "prefill"
        return generate_ids(self.model, idx, max_new_tokens, 0.0, runner=_EngineRunner(self))

    def clear_cache(self) -> None:
        """Seed 002's `block_mgr.clear_cache()`: empty the cache and go back to the prefill phase."""
        self.cache.reset()
        self.phase = "prefill"


class _EngineRunner:
    """The decode loop's runner for the engine: every step is an `Engine.infer` call (so the phase flag acts)."""

    drops_rows = False

    def __init__(self, engine: Engine):
        self.engine, self.length = engine, 0

    def prefill(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        self.length = window.shape[1]
        return self.engine.infer(window, position_ids=torch.arange(self.length, device=window.device))

    def step(self, window: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        token = window[:, -1:].clone(memory_format=torch.contiguous_format)
        logits = self.engine.infer(token, position_ids=torch.tensor([self.length], device=window.device))
        self.length += 1
        return logits

    def select_rows(self, rows: torch.Tensor) -> None:
        pass

    def sample(self, settings, logits, generator, draw):
        return settings.sample(logits, generator, draw)
