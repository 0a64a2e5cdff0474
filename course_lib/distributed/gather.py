"""Data parallelism for evaluation (seed 000's HRM evaluate): every rank scores its share of each
batch, saves its own predictions, and rank 0 collects what the metrics and the evaluator need.

The global batch stays the unit (as in HRM, where each rank loads global_batch_size / world_size
rows of every batch), so "Processing batch 3" means the same rows with 1 or N processes, and
concatenating the ranks' parts in rank order gives back the single-process row order exactly.

Seed 000 is one of the course's source documents: notebooks/SOURCES.md#seed-000.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from course_lib.distributed.tp_layers import shard_range


def local_slice(n: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous rows of an n-row batch (ranks past the end get an empty slice)."""
    a, b = shard_range(n, rank, world_size)
    return slice(a, b)


def all_gather_object(obj: Any, world_size: int) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small Python objects: per-batch numbers)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_rank0(obj: Any, rank: int, world_size: int) -> list[Any] | None:
    """Every rank's obj, in rank order, on rank 0 (None elsewhere): CPU tensors travel pickled."""
    if world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
