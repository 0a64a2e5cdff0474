"""The decode loop: append tokens one sampling step at a time, with or without a KV cache.

`generate_ids` is the loop every generation path uses (`GPT.generate`, the trace, the streamer,
batching). It checks the sampling arguments once, then per step: run the model (the whole window
without a cache; prefill then one token per step with one), apply the repetition penalty, sample.
`on_step` and `stop_when` are the hooks the trace, the streamer and batching plug into.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch

from .sampling import SamplingSettings, check_sampling_args

StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
_WARNED_TRAINING: weakref.WeakSet = weakref.WeakSet()  # models already warned about train() mode


def warn_if_training(model) -> None:
    """Warn once per model: in train() mode dropout is on, so even greedy tokens differ run to run."""
    if getattr(model, "training", False) and model not in _WARNED_TRAINING:
        _WARNED_TRAINING.add(model)
        warnings.warn("generating with a model in training mode: dropout is active, so even greedy tokens change "
                      "from run to run; call model.eval() first", stacklevel=3)


def encode_prompt(enc, prompt: str, block_size: int, allowed_special: str | set[str] = frozenset()) -> list[int]:
    """Token ids for one prompt, always usable by the model.

    An empty prompt starts from <|endoftext|> (the token every training document starts with),
    so the model samples a line from scratch instead of failing on a (1, 0) tensor. A prompt
    longer than the context keeps its last `block_size` tokens, with a warning: the model cannot
    attend further back anyway, and an index error would teach nothing.

    Text that looks like a special token ("<|endoftext|>") is encoded as the plain characters it
    is, the way the training data was encoded, so a prompt cannot inject control tokens;
    allowed_special="all" (or a set of names) turns such text into the special tokens instead.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__} {prompt!r:.40}; "
                        "use \"\" to start from <|endoftext|>")
    ids = enc.encode(prompt, allowed_special=allowed_special, disallowed_special=()) if prompt else [enc.eot_token]
    if len(ids) > block_size:
        warnings.warn(f"prompt has {len(ids)} tokens but the context holds {block_size}: "
                      f"keeping the last {block_size} tokens", stacklevel=2)
        ids = ids[-block_size:]
    return ids


@torch.no_grad()
def next_token_logits(model, enc, prompt: str) -> torch.Tensor:
    """The model's raw logits (vocab,) for the token after `prompt`."""
    x = torch.tensor([encode_prompt(enc, prompt, model.block_size)], dtype=torch.long, device=model.device)
    return model(x)[0, -1].float()


@torch.no_grad()
def generate_ids(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
                 use_cache: bool = True, attention_mask: torch.Tensor | None = None,
                 on_step: StepHook | None = None, stop_when: Callable[[torch.Tensor], bool] | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T) and return (B, T + max_new_tokens).

    use_cache=False is the plain loop: re-run the last block_size tokens for every new token.
    use_cache=True prefills the prompt once, then feeds one token per step (KV cache). When the
    sequence grows past block_size the window slides, every position changes, and cached keys are
    stale; the cached path then re-prefills the last block_size tokens each step, which is exactly
    what the plain loop computes (so greedy output stays token-exact, with no speed-up there).

    attention_mask (B, T) marks real tokens with 1 (0 = left padding). on_step(step, logits,
    adjusted, next_ids) sees the raw last-position logits, the logits after the repetition
    penalty, and the chosen ids (B, 1): the trace and the streamer hook in here. stop_when(next_ids)
    returning True ends the loop early (then fewer than max_new_tokens tokens are appended).
    """
    settings = SamplingSettings(temperature, top_k, top_p, repetition_penalty)  # checked once, used every step
    check_sampling_args(max_new_tokens=max_new_tokens)
    warn_if_training(model)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be (batch, T) with T >= 1, got shape {tuple(idx.shape)}; "
                         "an empty prompt should start from the <|endoftext|> token (see encode_prompt)")
    block = model.block_size
    if idx.shape[1] > block:
        warnings.warn(f"context of {idx.shape[1]} tokens is longer than block_size {block}: "
                      f"the model sees only the last {block}", stacklevel=2)
    mask = None if attention_mask is None else attention_mask.to(idx.device).long()
    cache = None
    for step in range(max_new_tokens):
        window = idx[:, -block:]
        wmask = None if mask is None else mask[:, -block:]
        if not use_cache:
            logits = model(window, attention_mask=wmask)[:, -1, :]
        elif cache is None or idx.shape[1] > block:  # first step, or the window slid: (re)prefill
            logits, cache = model.prefill(window, attention_mask=wmask, cache=cache)
        else:  # the usual step: one token in, the cache holds everything before it
            logits = model.decode_step(idx[:, -1:], cache, attention_mask=wmask)
        adjusted = logits
        if repetition_penalty != 1.0:
            adjusted = settings.penalise(logits, window, wmask)
        nxt = settings.sample(adjusted, generator)
        if on_step is not None:
            on_step(step, logits, adjusted, nxt)
        idx = torch.cat([idx, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if stop_when is not None and stop_when(nxt):
            break
    return idx
