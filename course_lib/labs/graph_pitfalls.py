"""The broken versions chapter 06 reproduces, kept small so their failure is the only thing to read.

- `BranchyStep`: a prefill/decode step with a Python branch on a tensor value. `torch.jit.trace`
  records only the branch its example input took; `torch.export` refuses the data-dependent branch.
  The fix is `static_cache.StaticStep`: one code path (the static cache's mask) right for any T.
- `ReusedOutput`: a stand-in for a CUDA graph replay on machines without CUDA. A captured graph
  writes its result into the same output memory on every replay, so a tensor returned by one call
  changes under your feet at the next call. The fix is the same as with real CUDA graphs: clone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from course_lib.caches.static_cache import StaticKVCache


class BranchyStep(nn.Module):
    """A step that decides prefill vs decode from `input_pos[0] == 0` (a value, not a shape).

    Decode takes a shortcut that is only right for one token: one mask row (the new token's) for
    every query. Fed a whole prompt, it lets every prompt token see the prompt's future.
    """

    def __init__(self, model: nn.Module, cache: StaticKVCache):
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        if input_pos[0] == 0:  # prefill: a new prompt; query j sees the slots up to its own
            mask = self.cache.mask(input_pos)
        else:                  # decode: the single new token sees every slot up to its own
            mask = self.cache.causal[input_pos[-1:]]
        h = self.model.hidden_states(ids, self.cache.positions(input_pos), mask, self.cache.at(input_pos))
        return self.model.lm_head(h[:, -1, :])


class ReusedOutput:
    """Wrap a step so every call returns the SAME output tensor, overwritten in place (a CUDA graph replay)."""

    def __init__(self, step: Callable[..., torch.Tensor]):
        self.step, self.out = step, None

    def __call__(self, *args) -> torch.Tensor:
        result = self.step(*args)
        if self.out is None:
            self.out = torch.empty_like(result)  # allocated once, at "capture"
        self.out.copy_(result)
        return self.out
