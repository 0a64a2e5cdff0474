"""How much memory a checkpoint's configuration asks for, checked before anything is allocated.

A checkpoint's `h_params` (or config) decides the model's size: a damaged or hostile file with
`vocab_size = 10**12` would otherwise reach the allocator ("tried to allocate 256000000000000
bytes") or, with `n_layer = 10**7`, build modules for minutes. Every loader asks `check_build_size`
first: the model is built on the `meta` device (shapes only, no storage, so the count is exact for
any architecture), its parameters and buffers are counted in bytes, the memory a forward over the
whole context needs is added, and anything beyond MAX_MODEL_BYTES is refused with both numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from course_lib.core.checkpoints import CheckpointError
from course_lib.core.paths import display_path

# 4 GiB: the course's largest model (the text GPT) needs about 0.22 GiB, most of it the logits of a
# full 512-token forward over its 100,277-token vocabulary; a student's laptop has 8-16 GiB. A configuration asking for more than this is damaged or is not a
# course checkpoint, and is refused before it can exhaust the machine's memory.
MAX_MODEL_BYTES = 4 * 2**30
# Stacked blocks and loop counts (n_layer, H/L cycles, halt_max_steps): the shipped models use at most
# 8. Building 10**7 blocks would take minutes even on `meta`, so counts are bounded before the build.
MAX_LAYERS = 1024
MAX_LOOP_STEPS = 1024


def gib(n_bytes: float) -> str:
    g = n_bytes / 2**30
    return f"{g:,.0f} GiB" if g >= 100 else f"{g:.3g} GiB"


def meta_bytes(build: Callable[[], torch.nn.Module]) -> int:
    """Bytes of the parameters and buffers `build()` would allocate, counted without allocating (meta device).

    Shared storages (tied weights) count once."""
    with torch.device("meta"):
        model = build()
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def check_counts(path: str | Path, counts: Mapping[str, object], limit: int = MAX_LAYERS) -> None:
    """CheckpointError naming the key when a layer or loop count is above `limit` (ints only: types are checked elsewhere)."""
    for key, value in counts.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise CheckpointError(f"{display_path(path)}: {key} = {value} is above the loader's limit of {limit}; "
                                  "the configuration is damaged or not a course checkpoint")


def check_build_size(path: str | Path, build: Callable[[], torch.nn.Module], *, runtime_bytes: int = 0,
                     what: str = "model", config: Mapping | None = None, limit: int = MAX_MODEL_BYTES) -> int:
    """Refuse (CheckpointError with the estimate and the limit) a model needing more than `limit` bytes.

    The estimate is the parameters and buffers (exact, from a meta build) plus `runtime_bytes`, the
    caller's count of what one forward at full context needs (caches, logits, attention scores).
    `config` (the sizes that decide it) is shown in the message. Returns the estimate."""
    n_bytes = meta_bytes(build) + int(runtime_bytes)
    if n_bytes > limit:
        sizes = f" ({', '.join(f'{k}={v}' for k, v in config.items())})" if config else ""
        raise CheckpointError(f"{display_path(path)}: this {what} configuration{sizes} needs about {gib(n_bytes)} "
                              f"({n_bytes:,} bytes: weights + a full-context forward), above the loader's limit of "
                              f"{gib(limit)} (course_lib.core.sizes.MAX_MODEL_BYTES); the h_params are damaged or "
                              "not meant for this course")
    return n_bytes


def decoder_runtime_bytes(n_layer: int, block_size: int, width: int, n_head: int, vocab_size: int,
                          bytes_per: int = 4) -> int:
    """One forward of a decoder over `block_size` tokens at batch 1: the KV cache (keys and values of
    every layer), one layer's attention scores, and the logits of every position."""
    kv = 2 * n_layer * block_size * width
    scores = n_head * block_size * block_size
    logits = block_size * vocab_size
    return (kv + scores + logits) * bytes_per
