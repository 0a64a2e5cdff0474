"""The collectives a tensor-parallel model needs, each one timed and its bytes counted.

Megatron's recipe needs only two: an all-reduce (sum the partial outputs of a row-parallel layer:
every rank ends with the same full result) and an all-gather (put the vocabulary slices of the
logits side by side). `Comm` wraps them so the benchmark can say how much of a step is spent
waiting for other ranks; with world_size 1 both are free no-ops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class CommStats:
    calls: int = 0
    seconds: float = 0.0
    bytes: int = 0  # bytes this rank contributed (the payload; the wire traffic depends on the algorithm)


@dataclass
class Comm:
    rank: int = 0
    world_size: int = 1
    stats: dict[str, CommStats] = field(default_factory=dict)
    timed: bool = False  # synchronise CUDA around each call so the clock measures the transfer

    def _record(self, op: str, t0: float, nbytes: int) -> None:
        s = self.stats.setdefault(op, CommStats())
        s.calls += 1
        s.seconds += time.perf_counter() - t0
        s.bytes += nbytes

    def _sync(self, x: torch.Tensor) -> None:
        if self.timed and x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over ranks, in place; every rank gets the same tensor."""
        if self.world_size == 1:
            return x
        self._sync(x)
        t0 = time.perf_counter()
        dist.all_reduce(x)
        self._sync(x)
        self._record("all_reduce", t0, x.numel() * x.element_size())
        return x

    def all_gather_last(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate each rank's (..., sizes[r]) slice along the last dim, in rank order.

        Slices may differ in width (100277 rows do not split evenly): pad to the widest, gather, trim.
        """
        if self.world_size == 1:
            return x
        width = max(sizes)
        padded = torch.nn.functional.pad(x, (0, width - x.shape[-1])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._sync(x)
        t0 = time.perf_counter()
        dist.all_gather(parts, padded)
        self._sync(x)
        self._record("all_gather", t0, padded.numel() * padded.element_size())
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes, strict=True)], dim=-1)

    def reset_stats(self) -> None:
        self.stats.clear()
