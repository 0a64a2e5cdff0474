"""THE decode loop: every generation method of the course appends tokens through `decode_loop`.

One loop owns prefill, the step, sampling, the repetition penalty, eos ids and stop strings, finished
rows, the step hooks (trace, streamer, batching) and the length policy at `block_size`. What differs
between methods plugs in as a *runner* (`Runner`): which cache it keeps and how a step runs:

- `CachedRunner`: chapter 03's contiguous `KVCache` through `model.prefill` / `model.decode_step`
  (also the tensor-parallel shard, whose `TPGPT` has the same two methods);
- `UncachedRunner`: no cache, the whole window every step (the fair baseline);
- `static.StaticRunner` (eager or compiled steps), `paged.PagedRunner`,
  `distributed.tp_gpt.TPRunner` (a distributed argmax picks the token), the chapter-06 engine's runner.

Beam search (`beam`) keeps its own loop around the same runners and caches: it picks K candidates per
row out of K x vocab and reorders cache rows, where this loop appends one token per row. Speculative
decoding (`speculative`) appends 1 .. k + 1 tokens per round; its docstring says what it shares.

The length policy, the same for every runner: a prompt longer than block_size keeps its last
block_size tokens, with a warning; when prompt + new tokens cross block_size the window slides, every
position changes and cached keys are stale, so the runner re-prefills the last block_size tokens each
step: exactly what the plain loop computes, so every runner keeps giving the same greedy tokens.

`generate_ids` checks every argument (`core.checks`) and runs the loop; `generate` adds beam search
(`GPT.generate` calls it). `eos_token_id` and `stop` end rows early (see `stopping`): a finished row
emits padding, its sampled token is discarded, and the loop ends when every row is finished.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch

from course_lib.core.checks import check_generation_inputs
from course_lib.decoding.beam import beam_search, check_beam_args
from course_lib.decoding.runners import CachedRunner, Runner, UncachedRunner
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, SamplingSettings, check_sampling_args
from course_lib.decoding.stopping import StopCriteria, default_pad_id, stop_encoding

StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
STOP_CHECK_EVERY = 8  # on a device, "is every row finished?" makes the host wait: ask every 8 tokens
_WARNED_TRAINING: weakref.WeakSet = weakref.WeakSet()  # models already warned about train() mode


def stop_check_interval(device: torch.device) -> int:
    """How many tokens between "is every row finished?" checks: every token on the CPU (free)."""
    return 1 if device.type == "cpu" else STOP_CHECK_EVERY


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


def _full_rows(x: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Logits of the computed rows placed back into a (batch, vocab) tensor; finished rows get -inf."""
    return x.new_full((batch, x.shape[-1]), float("-inf")).index_copy_(0, rows, x)


@torch.no_grad()
def generate_ids(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
                 top_p: float | None = None, *, repetition_penalty: float = 1.0, generator: torch.Generator | None = None,
                 use_cache: bool = True, attention_mask: torch.Tensor | None = None,
                 on_step: StepHook | None = None, stop_when: Callable[[torch.Tensor], bool] | None = None,
                 eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None, enc=None,
                 pad_token_id: int | None = None, draw: str = "multinomial", runner: Runner | None = None) -> torch.Tensor:
    """Append max_new_tokens tokens to idx (B, T) and return (B, T + max_new_tokens).

    use_cache=False is the plain loop: re-run the last block_size tokens for every new token, with
    the output head at the last position only (nanoGPT's inference form: the fair baseline).
    use_cache=True prefills the prompt once, then feeds one token per step (KV cache). When the
    sequence grows past block_size the window slides, every position changes, and cached keys are
    stale; the cached path then re-prefills the last block_size tokens each step, which is exactly
    what the plain loop computes (so greedy output stays token-exact, with no speed-up there).

    attention_mask (B, T) marks real tokens with 1 (0 = left padding). on_step(step, logits,
    adjusted, next_ids) sees the raw last-position logits, the logits after the repetition
    penalty, and the chosen ids (B, 1): the trace and the streamer hook in here. stop_when(next_ids)
    returning True ends the loop early (then fewer than max_new_tokens tokens are appended).

    eos_token_id (one id or a list) and stop (a string or a list; needs enc, default the course's
    cl100k_base) finish rows: from the step after, a finished row gets pad_token_id (default the
    first eos id, else <|endoftext|>) and is dropped from the batch the model computes (its cache
    rows too), and the loop returns as soon as every row is finished. On a device that check waits
    for the device, so it runs every STOP_CHECK_EVERY tokens: a few padding-only steps may run (and
    reach on_step), then are trimmed, so the result is the one the CPU returns.
    draw chooses the random draw (`SamplingSettings.sample`): "multinomial" or "inverse_cdf".
    runner: how steps run (see the module docstring); default `CachedRunner` (use_cache) or `UncachedRunner`.
    """
    settings = SamplingSettings(temperature, top_k, top_p, repetition_penalty)  # checked once, used every step
    check_sampling_args(max_new_tokens=max_new_tokens)
    mask = check_generation_inputs(idx, model.h_params["vocab_size"], attention_mask, pad_token_id)
    warn_if_training(model)
    enc = stop_encoding(stop, enc)
    stopper = StopCriteria(idx.shape[0], eos_token_id, stop, enc, device=idx.device)
    pad_token_id = default_pad_id(pad_token_id, stopper.eos, enc)
    if idx.shape[1] > model.block_size:
        warnings.warn(f"context of {idx.shape[1]} tokens is longer than block_size {model.block_size}: "
                      f"the model sees only the last {model.block_size}", stacklevel=2)
    if runner is None:
        runner = CachedRunner(model) if use_cache else UncachedRunner(model)
    return decode_loop(model.block_size, idx, max_new_tokens, settings, runner, generator=generator, mask=mask,
                       on_step=on_step, stop_when=stop_when, stopper=stopper, pad_token_id=pad_token_id, draw=draw)


def decode_loop(block: int, idx: torch.Tensor, max_new_tokens: int, settings: SamplingSettings, runner: Runner, *,
                generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                on_step: StepHook | None = None, stop_when: Callable[[torch.Tensor], bool] | None = None,
                stopper: StopCriteria | None = None, pad_token_id: int = 0, draw: str = "multinomial") -> torch.Tensor:
    """The loop itself, for arguments already checked (see `generate_ids`): idx (B, T) → (B, T + new)."""
    stopper = StopCriteria(idx.shape[0], None, None, None, device=idx.device) if stopper is None else stopper
    B = idx.shape[0]
    rows = None  # the rows still generating, once some have finished (None = all): only they are computed
    # On a device, reading "how many rows are still going?" every token would stall the GPU each step:
    # ask every STOP_CHECK_EVERY tokens, remember on the device when the last row finished, trim after.
    check_every = stop_check_interval(idx.device)
    prompt_len, all_done_at = idx.shape[1], torch.full((), -1, device=idx.device)
    for step in range(max_new_tokens):
        cur = idx if rows is None else idx.index_select(0, rows)
        cmask = mask if mask is None or rows is None else mask.index_select(0, rows)
        window = cur[:, -block:]
        wmask = None if cmask is None else cmask[:, -block:]
        if step == 0 or cur.shape[1] > block:  # first step, or the window slid: (re)prefill
            logits = runner.prefill(window, wmask)
        else:  # the usual step: one token in, the cache holds everything before it
            logits = runner.step(window, wmask)
        adjusted = logits
        if settings.repetition_penalty != 1.0:
            adjusted = settings.penalise(logits, window, wmask)
        nxt = runner.sample(settings, adjusted, generator, draw)
        if rows is not None:  # back to the full batch: finished rows get padding
            nxt = torch.full((B, 1), pad_token_id, dtype=nxt.dtype, device=nxt.device).index_copy_(0, rows, nxt)
            if on_step is not None:
                logits, adjusted = _full_rows(logits, rows, B), _full_rows(adjusted, rows, B)
        if stopper.active:  # finished rows take no part any more: their token is padding
            nxt = torch.where(stopper.done[:, None], torch.full_like(nxt, pad_token_id), nxt)
        if on_step is not None:
            on_step(step, logits, adjusted, nxt)
        idx = torch.cat([idx, nxt], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        if stopper.active:
            done = stopper.update(nxt)
            if check_every > 1:
                all_done_at = torch.where((all_done_at < 0) & done.all(), step, all_done_at)
            n_active = int((~done).sum()) if (step + 1) % check_every == 0 else -1  # a host sync
            if n_active == 0:
                break
            if runner.drops_rows and 0 < n_active < (B if rows is None else rows.numel()):  # drop finished rows
                local = (~done if rows is None else (~done).index_select(0, rows)).nonzero()[:, 0]
                rows = (~done).nonzero()[:, 0]
                runner.select_rows(local)
        if stop_when is not None and stop_when(nxt):
            break
    if check_every > 1 and stopper.active and (end := int(all_done_at)) >= 0:  # one sync, after the loop
        idx = idx[:, :prompt_len + end + 1]  # the steps after every row finished added only padding
    return idx


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None, *, repetition_penalty: float = 1.0,
             use_cache: bool = True, attention_mask: torch.Tensor | None = None, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: bool | str = False,
             eos_token_id: int | list[int] | None = None, stop: str | list[str] | None = None,
             pad_token_id: int | None = None) -> torch.Tensor:
    """`GPT.generate`: the decode loop, or beam search when num_beams > 1 (see `GPT.generate`)."""
    check_beam_args(num_beams, length_penalty, early_stopping)
    if num_beams > 1:
        if top_k is not None or (top_p is not None and top_p < 1.0):
            raise ValueError("top_k/top_p filter a sampling step; beam search does not sample "
                             "(use num_beams=1 to sample, or drop top_k/top_p)")
        return beam_search(model, idx, max_new_tokens, num_beams, length_penalty=length_penalty,
                           eos_token_id=eos_token_id, early_stopping=early_stopping,
                           repetition_penalty=repetition_penalty, pad_token_id=pad_token_id,
                           attention_mask=attention_mask, use_cache=use_cache, stop=stop).sequences
    return generate_ids(model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                        generator=generator, use_cache=use_cache, attention_mask=attention_mask,
                        eos_token_id=eos_token_id, stop=stop, pad_token_id=pad_token_id)
