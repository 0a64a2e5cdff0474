"""One sampling step: turning last-position logits into the next token.

The order and semantics follow the Hugging Face logits processors (repetition penalty →
temperature → top-k → top-p): top-k keeps every token tied with the k-th largest logit, top-p
always keeps at least one token, and removed entries become -inf so a softmax gives them exactly
zero probability. Unlike Hugging Face, temperature=0 is allowed and means greedy (argmax), the
behaviour students expect and a common crash elsewhere (division by zero, NaN in multinomial).

`SamplingSettings` checks its arguments once; a decode loop builds one per call and reuses it every
step. The functions `filter_logits`, `apply_repetition_penalty` and `sample_next` are the same
operations for a single call. The loops built on this step live in their own modules:
`decode` (the loop), `trace` (every step's candidates), `streaming` (UTF-8-safe text out) and
`batching` (`generate_batch`, also importable from here as the public API names it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch

MIN_TEMPERATURE = 1e-6  # smallest temperature > 0: |logit| / 1e-6 stays far below float32's 3.4e38


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        max_new_tokens: int | None = None, repetition_penalty: float = 1.0) -> None:
    """Raise ValueError naming the argument and its allowed range.

    NumPy scalars count as numbers (np.float32(0.7), np.int64(5)). A temperature between 0 and
    MIN_TEMPERATURE is refused: logits / 1e-300 overflow to inf and the softmax turns into NaN.
    """
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or temperature != temperature or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if math.isinf(temperature):
        raise ValueError("temperature must be finite (inf would make every token equally likely); use a value such as 1.0")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature {temperature!r} is too small to divide by (the logits overflow to inf, then NaN); "
                         f"use 0 for greedy or a value >= {MIN_TEMPERATURE}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 0):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if (isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, Real)
            or not repetition_penalty > 0 or repetition_penalty == float("inf")):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0 = off, > 1 discourages repeats), "
                         f"got {repetition_penalty!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """The knobs of one sampling step, checked once when built (a bad value raises ValueError)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_sampling_args(self.temperature, self.top_k, self.top_p, None, self.repetition_penalty)
        for name, cast in (("temperature", float), ("top_k", int), ("top_p", float), ("repetition_penalty", float)):
            if getattr(self, name) is not None:  # NumPy scalars become plain Python numbers
                object.__setattr__(self, name, cast(getattr(self, name)))

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature → top-k → top-p on (..., vocab) logits; removed entries are -inf."""
        logits = logits.float()
        if self.temperature == 0:  # greedy: keep only the (first) argmax
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
            return logits.masked_fill(~keep, float("-inf"))
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k is not None:
            k = min(self.top_k, logits.size(-1))
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th value survive
        if self.top_p is not None and self.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, dim=-1)  # ascending
            cum = sorted_logits.softmax(-1).cumsum(-1)
            remove_sorted = cum <= (1 - self.top_p)
            remove_sorted[..., -1:] = False  # the most likely token always stays
            remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
            logits = logits.masked_fill(remove, float("-inf"))
        return logits

    def penalise(self, logits: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hugging Face's repetition penalty (CTRL paper), see `apply_repetition_penalty`."""
        logits = logits.float()
        penalty = self.repetition_penalty
        if penalty == 1.0 or context.numel() == 0:
            return logits
        weight = torch.ones_like(context, dtype=logits.dtype) if context_mask is None else context_mask.to(logits.dtype)
        seen = torch.zeros_like(logits).scatter_add_(-1, context, weight) > 0
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        return torch.where(seen, penalised, logits)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next token ids (B, 1) from last-position logits (B, vocab): filter, then argmax or multinomial."""
        filtered = self.filter(logits)
        if self.temperature == 0:
            return filtered.argmax(-1, keepdim=True)
        probs = filtered.softmax(-1)
        if probs.device.type != "cpu":  # never wait on the host (see inverse_cdf_sample)
            return inverse_cdf_sample(probs, generator)
        if generator is not None and generator.device != probs.device:  # a device generator, CPU logits
            return torch.multinomial(probs.to(generator.device), 1, generator=generator).cpu()
        return torch.multinomial(probs, 1, generator=generator)


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (B, 1) from probs (B, vocab) on any device, reproducible with a CPU generator.

    Only B uniforms are drawn (on the generator's device, else the probabilities') and cross to
    the probabilities' device; the cumulative sum and the search stay there, so decoding never
    waits on the host. Copying (B, vocab) probabilities to the CPU every token would, and so does
    torch.multinomial on CUDA (it checks its input on the host: pytorch/pytorch#108968). Same
    distribution as torch.multinomial, different draws: CPU logits keep multinomial, so committed
    notebook outputs hold.
    """
    gen_device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=gen_device)
    cdf = probs.cumsum(-1)
    target = u.to(probs.device, non_blocking=True) * cdf[..., -1:]
    ids = torch.searchsorted(cdf, target, right=True)  # first index whose cdf exceeds target: a p > 0 token
    # target can round up to the total: fall back to the most likely token instead of index vocab.
    return torch.where(ids < probs.size(-1), ids, probs.argmax(-1, keepdim=True))


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Apply temperature → top-k → top-p to (..., vocab) logits; removed entries are -inf."""
    return SamplingSettings(temperature, top_k, top_p).filter(logits)


def apply_repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float,
                             context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hugging Face's rule (CTRL paper): every token already in the context gets its logit
    divided by `penalty` if positive, multiplied if negative, so it always becomes less likely.

    logits (B, vocab), context (B, T) token ids; context_mask (B, T) marks real tokens (padding is
    not "already said"). A token counts once however often it appeared.
    """
    return SamplingSettings(repetition_penalty=penalty).penalise(logits, context, context_mask)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab)."""
    return SamplingSettings(temperature, top_k, top_p).sample(logits, generator)


def __getattr__(name: str):
    # The public API (COURSE_DESIGN.md) names course_lib.sampling.generate_batch; it lives in
    # `batching`, which imports this module, so it is looked up lazily instead of at import time.
    if name == "generate_batch":
        from .batching import generate_batch
        return generate_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
