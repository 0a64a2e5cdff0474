"""How likely is this text? Log-probabilities of a continuation under the model (chapter 02).

`sequence_logprob` scores one continuation after one prompt: the sum of log p(token | everything
before it) over the continuation's tokens, their mean, and the perplexity exp(-mean) — "how many
tokens the model was choosing between", on average. `sequence_logprobs` does the same for many
pairs at once (right-padded batches; only the continuation's positions are read). The prompt and the
continuation are tokenized separately, so the continuation's tokens are exactly those a decode
loop appends after the prompt; an empty prompt starts from <|endoftext|>, as in generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from course_lib.core.checks import check_int


def _pair_ids(enc, prompt: str, continuation: str, block_size: int) -> tuple[list[int], int]:
    if not isinstance(prompt, str) or not isinstance(continuation, str):
        raise ValueError("prompt and continuation must be strings")
    if continuation == "":
        raise ValueError("continuation must not be empty: there is nothing to score")
    p = enc.encode(prompt) if prompt else [enc.eot_token]
    c = enc.encode(continuation, allowed_special="all")
    if len(p) + len(c) > block_size:
        raise ValueError(f"prompt + continuation is {len(p) + len(c)} tokens; the model's context holds {block_size}")
    return p + c, len(c)


@torch.no_grad()
def sequence_logprobs(model, enc, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[dict]:
    """sequence_logprob for many (prompt, continuation) pairs, batch_size rows per forward pass."""
    check_int("batch_size", batch_size, low=1)  # 0 would never advance, a negative size would score nothing
    out: list[dict] = []
    rows = [_pair_ids(enc, p, c, model.block_size) for p, c in pairs]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for i, (ids, _) in enumerate(chunk):
            x[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1  # right padding: real tokens keep positions 0..n-1, padding is never read
        x, mask = x.to(model.device), mask.to(model.device)
        logp = torch.log_softmax(model(x, attention_mask=mask).float(), dim=-1)  # (b, T, vocab)
        # position t predicts token t + 1
        token_logp = logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0].double().cpu()  # (b, T - 1)
        for i, (ids, n) in enumerate(chunk):
            vals = token_logp[i, len(ids) - 1 - n:len(ids) - 1]
            total = float(vals.sum())
            out.append({"sum": total, "mean": total / n, "perplexity": math.exp(-total / n), "tokens": n})
    return out


def sequence_logprob(model, enc, prompt: str, continuation: str) -> dict:
    """{'sum', 'mean', 'perplexity', 'tokens'} of `continuation` after `prompt` (natural logs).

    sum = sum of log p(token | prompt and earlier continuation tokens); mean = sum / tokens;
    perplexity = exp(-mean). Higher sum/mean (closer to 0) = more likely under the model.
    """
    return sequence_logprobs(model, enc, [(prompt, continuation)], batch_size=1)[0]

