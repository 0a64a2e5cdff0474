"""Many prompts at once: left padding, an attention mask and per-row positions (chapter 03, seed 003).

`pad_batch` builds the (B, T) ids and mask; `generate_batch` runs the decode loop over chunks of
prompts, and each row's greedy output equals running that prompt alone (positions come from the
mask, see `layers.position_ids_from_mask`). `read_prompts` is seed 003's prompt-file mode.

Seed 003 is one of the course's source documents: notebooks/SOURCES.md#seed-003.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from course_lib.core.checks import check_int
from course_lib.core.paths import display_path
from course_lib.decoding.decode import encode_prompt, generate_ids
from course_lib.decoding.sampling import DEFAULT_TEMPERATURE, check_sampling_args
from course_lib.decoding.stopping import check_stopping_args, finished_text
from course_lib.text.tokenizer import decode_ids


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one per line (seed 003's batch mode); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {display_path(path)} (expected a text file with one prompt per line)")
    prompts = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return [p for p in prompts if p.strip()]


def pad_batch(enc, prompts: Sequence[str], block_size: int, side: str = "left",
              pad_id: int | None = None, device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) and attention mask (B, T) for prompts of different lengths.

    side="left" puts the padding before each prompt so every row's last column is its last real
    token: the next token of every row is read from the same column. side="right" exists to show
    why that is wrong for generation (the last column of a short row is padding).
    device: where the tensors are created; pass the model's (`model.device`) before feeding them to it.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    pad_id = enc.eot_token if pad_id is None else pad_id
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if isinstance(prompts, str) or bad is not None or not len(prompts):
        raise TypeError(f"prompts must be a non-empty list of strings{'' if bad is None else f'; prompts[{bad}] is {prompts[bad]!r:.40}'}")
    rows = [encode_prompt(enc, p, block_size) for p in prompts]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)  # built on the host (small, row by row), moved in one copy each


@torch.no_grad()
def generate_batch(model, enc, prompts: Sequence[str], max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE,
                   top_k: int | None = None, top_p: float | None = None, *, repetition_penalty: float = 1.0,
                   generator: torch.Generator | None = None, batch_size: int = 16, use_cache: bool = True,
                   stop: str | list[str] | None = None, eos_token_id: int | list[int] | None = None,
                   draw: str = "multinomial", progress: bool = False) -> list[str]:
    """Completions (new text only) for many prompts, batch_size prompts per forward pass.

    Prompts are left-padded with an attention mask; positions come from the mask, so each row's
    greedy output equals running that prompt alone. `stop` (e.g. "\\n" for one listing) and
    `eos_token_id` finish a row (see `stopping`): its completion ends before the first stop string or
    eos id, it emits padding from then on, and a chunk ends when all its rows are finished.
    draw="inverse_cdf" is the fast random draw (`SamplingSettings.sample`). progress shows a tqdm bar.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string; wrap it: [prompt]")
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, got {prompts!r:.60}; e.g. ['Meadow Farm', '农夫山泉']")
    check_int("batch_size", batch_size, low=1)
    check_sampling_args(temperature, top_k, top_p, max_new_tokens, repetition_penalty)  # before any work
    check_stopping_args(eos_token_id, stop)
    from tqdm.auto import tqdm  # imported here: only the batch path needs it

    out: list[str] = []
    with tqdm(total=len(prompts), disable=not progress, desc="prompts") as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            ids, mask = pad_batch(enc, chunk, model.block_size, side="left")
            ids, mask = ids.to(model.device), mask.to(model.device)
            full = generate_ids(model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty=repetition_penalty,
                                generator=generator, use_cache=use_cache, attention_mask=mask,
                                eos_token_id=eos_token_id, stop=stop, enc=enc, draw=draw)
            for row in full[:, ids.shape[1]:].tolist():
                out.append(finished_text(enc, row, eos_token_id, stop) if (stop or eos_token_id is not None)
                           else decode_ids(enc, row))
            bar.update(len(chunk))
    return out
