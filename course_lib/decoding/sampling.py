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
`batching` (`generate_batch`, importable from the package top level: `from course_lib import generate_batch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from course_lib.core.checks import check_float, check_int, check_probability, is_valid

DEFAULT_TEMPERATURE = 1.0  # every generation entry point's default: sample the model's own distribution
# (the seed's `generate(idx, max_new_tokens, temperature=1.0, ...)`); pass temperature=0 for greedy.
MIN_TEMPERATURE = 1e-6  # smallest temperature > 0: |logit| / 1e-6 stays far below float32's 3.4e38


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        max_new_tokens: int | None = None, repetition_penalty: float = 1.0) -> None:
    """Raise ValueError naming the argument and its allowed range.

    NumPy scalars count as numbers (np.float32(0.7), np.int64(5)). A temperature between 0 and
    MIN_TEMPERATURE is refused: logits / 1e-300 overflow to inf and the softmax turns into NaN.
    """
    # The rules live in core.checks (NaN and inf refused everywhere); the messages keep this chapter's hints.
    if not is_valid(check_float, temperature, low=0.0, finite=False):  # inf: its own message below
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if math.isinf(temperature):
        raise ValueError("temperature must be finite (inf would make every token equally likely); use a value such as 1.0")
    if 0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"temperature {temperature!r} is too small to divide by (the logits overflow to inf, then NaN); "
                         f"use 0 for greedy or a value >= {MIN_TEMPERATURE}")
    if not is_valid(check_int, top_k, low=1, optional=True):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if not is_valid(check_probability, top_p, optional=True):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not is_valid(check_int, max_new_tokens, low=0, optional=True):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not is_valid(check_float, repetition_penalty, low=0.0, low_open=True):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0 = off, > 1 discourages repeats), "
                         f"got {repetition_penalty!r}")


DRAWS = ("multinomial", "inverse_cdf")


def inverse_cdf_draw(probs: torch.Tensor, generator: torch.Generator | None = None, block: int = 1024) -> torch.Tensor:
    """One token per row (B, 1) from probabilities (B, vocab): u ~ U(0, 1), the first index whose
    cumulative probability exceeds u * total. Only B uniforms come from the generator (drawn on
    its device, then moved), so a CPU generator stays reproducible on any device without copying
    the (B, vocab) probabilities to the host.

    A cumulative sum over 100k entries is slow on a CPU, so the lookup runs in two levels: sums of
    blocks of `block` entries find the block, then a cumulative sum inside that block alone finds
    the token. The result is the single-level inverse CDF (up to float rounding).

    The decode loop uses it for every draw on a device: copying probabilities to the host would
    wait every token, and so does torch.multinomial on CUDA (a host-side input check,
    pytorch/pytorch#108968). Sums are float64, float32 on Apple MPS (which has no float64)."""
    B, V = probs.shape
    probs = probs.contiguous()
    acc = torch.float32 if probs.device.type == "mps" else torch.float64
    gen_device = generator.device if generator is not None else probs.device
    u_dtype = torch.float32 if torch.device(gen_device).type == "mps" else torch.float64
    u = torch.rand(B, 1, generator=generator, device=gen_device, dtype=u_dtype).to(acc).to(probs.device)
    n_full = V // block
    sums = [probs.as_strided((B, n_full, block), (V, block, 1)).sum(-1)] if n_full else []  # a view: no copy
    if V % block:
        sums.append(probs[:, n_full * block:].sum(-1, keepdim=True))  # the last, shorter block
    block_cdf = torch.cat(sums, dim=1).to(acc).cumsum(-1)  # (B, n_blocks)
    target = u * block_cdf[:, -1:]
    b = torch.searchsorted(block_cdf, target, right=True).clamp_max_(block_cdf.shape[1] - 1)  # (B, 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(target))
    cols = b * block + torch.arange(block, device=probs.device)                              # (B, block)
    inside = probs.gather(1, cols.clamp_max(V - 1)).masked_fill(cols >= V, 0).to(acc).cumsum(-1)
    j = torch.searchsorted(inside, target - before, right=True).clamp_max_(block - 1)
    return (b * block + j).clamp_max_(V - 1)  # zero-probability entries are never chosen


@dataclass(frozen=True)
class SamplingSettings:
    """The knobs of one sampling step, checked once when built (a bad value raises ValueError)."""

    temperature: float = DEFAULT_TEMPERATURE
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
        # The context may come from another device than the logits (a CPU prompt, device logits):
        # follow the logits, like every step of the decode loop does.
        context = context.to(logits.device)
        weight = (torch.ones_like(context, dtype=logits.dtype) if context_mask is None
                  else context_mask.to(device=logits.device, dtype=logits.dtype))
        seen = torch.zeros_like(logits).scatter_add_(-1, context, weight) > 0
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        return torch.where(seen, penalised, logits)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None,
               draw: str = "multinomial") -> torch.Tensor:
        """Next token ids (B, 1) from last-position logits (B, vocab): filter, then argmax or a random draw.

        draw="multinomial" is `torch.multinomial`, which draws one exponential random number per
        vocabulary entry (B x 100k numbers per token, on the generator's device). draw="inverse_cdf"
        draws B uniforms and looks each up in the cumulative distribution: the same distribution,
        different draws for the same seed, and ~30x faster on a CPU at B = 64 (chapter 02 samples
        thousands of lines with it). Logits on a device always use inverse_cdf (it never waits on
        the host); CPU logits keep the draw asked for, so committed notebook outputs stay the same.
        """
        if draw not in DRAWS:
            raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}")
        if self.temperature == 0:  # greedy: the argmax filter() keeps is the argmax itself (one pass over B x vocab, not three)
            return logits.argmax(-1, keepdim=True)
        filtered = self.filter(logits)
        probs = filtered.softmax(-1)
        if draw == "inverse_cdf" or probs.device.type != "cpu":  # on a device: never wait on the host
            return inverse_cdf_draw(probs, generator)
        if generator is not None and generator.device != probs.device:  # a device generator, CPU logits
            return torch.multinomial(probs.to(generator.device), 1, generator=generator).cpu()
        return torch.multinomial(probs, 1, generator=generator)


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
                top_p: float | None = None, generator: torch.Generator | None = None,
                draw: str = "multinomial") -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab); see `SamplingSettings.sample`."""
    return SamplingSettings(temperature, top_k, top_p).sample(logits, generator, draw)
