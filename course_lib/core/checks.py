"""Argument checks shared by every entry point: one place that says what a valid value is.

Each check returns the value (so `n = check_int("n", n, low=1)` reads as an assignment) or raises
`ValueError` naming the argument, the rule and the value it got. Booleans are never numbers here
(`True` is an int in Python, and `k=True` is always a mistake); NumPy scalars are (np.int64(5)).
Floats must be finite unless a check says otherwise: NaN passes every `<` and `>` comparison
as False, so a range check alone lets it through.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import torch

__all__ = ["check_int", "check_float", "check_probability", "check_choice", "check_nonempty",
           "check_token_ids", "check_attention_mask", "check_pad_id", "check_generation_inputs", "is_valid"]


def _name(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              optional: bool = False) -> int | None:
    """An int (not a bool, not a float) in [low, high]; None only when `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int{' or None' if optional else ''}, got {_name(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an int {_range(low, high)}, got {_name(value)}")
    return int(value)


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False,
                finite: bool = True) -> float | None:
    """A real number (ints allowed, bools not), finite unless `finite=False`, within the bounds;
    `low_open`/`high_open` exclude the bound itself."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number{' or None' if optional else ''}, got {_name(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
        raise ValueError(f"{name} must be a number {' and '.join(s for s in (lo, hi) if s)}, got {value!r}")
    return value


def check_probability(name: str, value: Any, *, optional: bool = False) -> float | None:
    """A probability in (0, 1] (top_p, a halting threshold): 0 would keep nothing."""
    return check_float(name, value, low=0.0, high=1.0, low_open=True, optional=optional)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of a fixed set of values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_name(value)}")
    return value


def check_nonempty(name: str, value: Any) -> Any:
    """A list/tuple/str with at least one element, where an empty one would mean nothing to do."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        if isinstance(value, str) and value:
            return value
        raise ValueError(f"{name} must be a non-empty list, got {_name(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    return value


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f">= {low}" if low is not None else f"<= {high}"


def check_token_ids(name: str, ids: Any, vocab_size: int, *, allow_empty: bool = False,
                    check_values: bool = True) -> torch.Tensor:
    """A (B, T) integer tensor of ids in [0, vocab_size). Out-of-range ids would index past the
    embedding table (a raw IndexError on the CPU, a device-side assert on CUDA); float ids would
    be silently truncated by some ops. check_values=False checks type and shape only (no data read:
    a tensor on the `meta` device has none)."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids with shape (batch, length), got {type(ids).__name__}")
    if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise ValueError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}; "
                         "for one prompt use ids[None] or ids.unsqueeze(0)")
    if ids.shape[0] == 0 or (ids.shape[1] == 0 and not allow_empty):
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): give at least one prompt token")
    if ids.numel() and check_values:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size}) of this model")
    return ids


def check_attention_mask(mask: Any, ids: torch.Tensor, *, left_padded: bool = True,
                         check_values: bool = True) -> torch.Tensor:
    """A 0/1 mask with the ids' shape; with `left_padded`, each row's ones form one run that ends at
    the last column (padding on the left, as batched decoding requires) and no row is all zeros.
    check_values=False checks type and shape only."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of 0/1 with shape {tuple(ids.shape)}, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask must have the ids' shape {tuple(ids.shape)}, got {tuple(mask.shape)}")
    if not check_values:
        return mask.to(torch.long)
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token); got other values such as "
                         f"{float(mask[(mask != 0) & (mask != 1)][0])!r}")
    m = mask.to(torch.long)
    if m.numel() and bool((m.sum(1) == 0).any()):
        raise ValueError("attention_mask has a row with no tokens (all zeros): every row needs at least one prompt token")
    if left_padded and m.numel():
        # left padding: once a row has a 1, every later column is 1
        if bool((m.cummax(1).values != m).any()):
            raise ValueError("attention_mask must be left-padded (zeros first, then ones, per row); "
                             "build it with course_lib.decoding.batching.pad_batch")
    return m


def check_pad_id(pad_token_id: Any, vocab_size: int, *, optional: bool = True) -> int | None:
    """A pad id inside the vocabulary (it is fed to the embedding, then masked)."""
    return check_int("pad_token_id", pad_token_id, low=0, high=vocab_size - 1, optional=optional)


def is_valid(check: Callable[..., Any], value: Any, **rules: Any) -> bool:
    """True when `check` accepts value under `rules` (e.g. `is_valid(check_int, k, low=1)`): the rule
    stays here while a caller keeps its own message (a chapter's hint, an exact text a notebook shows)."""
    try:
        check("value", value, **rules)
    except ValueError:
        return False
    return True


def check_generation_inputs(idx: Any, vocab_size: int, attention_mask: Any = None,
                            pad_token_id: Any = None) -> torch.Tensor | None:
    """What every generation entry point checks first: ids (B, T >= 1) inside the vocabulary, a 0/1
    left-padded mask of the same shape, a pad id in range. Returns the mask as torch.long (or None).

    Reading the values waits for the device once per call (never per step); a `meta` tensor (shapes
    only, used to test device code without a GPU) has no values, so only its type and shape are checked."""
    if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.shape[1] == 0:
        raise ValueError(f"idx is an empty prompt (shape {tuple(idx.shape)}); start from the <|endoftext|> token "
                         "(encode_prompt does this for \"\")")
    values = not (isinstance(idx, torch.Tensor) and idx.device.type == "meta")
    check_token_ids("idx", idx, vocab_size, check_values=values)
    check_pad_id(pad_token_id, vocab_size)
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of 0/1 with shape {tuple(idx.shape)}, "
                         f"got {type(attention_mask).__name__}")
    return check_attention_mask(attention_mask.to(idx.device), idx, check_values=values)
