"""Joining the process group that `torchrun` prepared, with errors that say what to do.

torchrun starts one process per rank and gives each the same four environment variables
(MASTER_ADDR, MASTER_PORT of the rendezvous, WORLD_SIZE) and its own RANK / LOCAL_RANK.
`init_from_env` reads them, picks the backend that fits the device (gloo moves CPU tensors over
TCP; NCCL moves CUDA tensors GPU-to-GPU over NVLink/PCIe/InfiniBand), and sets a timeout: when
one rank dies, the others fail their next collective after `timeout` seconds with a message
instead of waiting forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = 60.0  # seconds a collective may wait for the other ranks


class DistSetupError(RuntimeError):
    """The distributed setup is wrong (missing torchrun variables, a world size that cannot split the model)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def launched_by_torchrun() -> bool:
    """True inside a torchrun worker (it always sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def missing_env(env: dict | None = None) -> list[str]:
    env = os.environ if env is None else env
    return [k for k in ENV_VARS if k not in env]


def check_env(command: str = "-m course_lib.distributed.generate ...", env: dict | None = None) -> None:
    """DistSetupError naming the missing variables and the torchrun command that sets them."""
    missing = missing_env(env)
    if missing:
        raise DistSetupError(f"{', '.join(missing)} not set: this runs one process per rank; start it with "
                             f"`torchrun --nproc_per_node 2 {command}` (torchrun sets RANK, WORLD_SIZE, "
                             "MASTER_ADDR, MASTER_PORT; by hand, export all four in every process)")


def check_divides(world_size: int, n_head: int, n_kv_head: int | None = None) -> None:
    """Heads are the unit of the attention split: every rank must hold the same whole number of them.

    With grouped-query attention (n_kv_head < n_head) the key/value heads are split too, each rank
    keeping whole groups, so the world size must divide n_kv_head (which divides n_head): a
    multi-query model (n_kv_head = 1) runs on one process only.
    """
    if n_kv_head is None or n_kv_head == n_head:
        if world_size < 1 or n_head % world_size:
            ok = [n for n in range(1, n_head + 1) if n_head % n == 0]
            raise DistSetupError(f"world size {world_size} does not divide the model's {n_head} attention heads; "
                                 f"use --nproc_per_node in {ok}")
        return
    if world_size < 1 or n_kv_head % world_size or n_head % world_size:
        ok = [n for n in range(1, n_kv_head + 1) if n_kv_head % n == 0]
        raise DistSetupError(f"world size {world_size} does not divide the model's {n_kv_head} key/value heads "
                             f"(n_kv_head {n_kv_head}, n_head {n_head}): each rank holds whole key/value heads and "
                             f"the query heads that share them; use --nproc_per_node in {ok}")


def init_from_env(device: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                  command: str = "-m course_lib.distributed.generate ...") -> DistInfo:
    """Join the process group torchrun describes in the environment -> DistInfo.

    device "auto" means CUDA (cuda:LOCAL_RANK, NCCL) when available, else the CPU (gloo).
    Calling it again in an initialised process returns the same info.
    """
    check_env(command)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise DistSetupError(f"device must be auto, cpu or cuda for torch.distributed (gloo or NCCL), got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DistSetupError("device 'cuda' asked for but CUDA is not available; use --device cpu (gloo)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)  # NCCL and the object collectives use the current device
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise DistSetupError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if not dist.is_initialized():
        _import_compiler_first()
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return DistInfo(rank, world, local_rank, dev, backend)


def _import_compiler_first() -> None:
    """Import torch's compiler (torch._dynamo) BEFORE the process group exists.

    torch imports it lazily, at the first call that is wrapped to skip compilation (building a model
    on the meta device is one). Imported after `init_process_group`, it keeps about ten references to
    the default group, so `destroy_process_group` cannot free it: the gloo worker threads still run
    while the interpreter exits, and now and then one rank dies with "terminate called without an
    active exception" (SIGABRT) after its work is done. Measured on the 2-core VM with a busy core
    beside it: 8 of 20 two-process runs of `step_timing` aborted that way; with this import first
    the gloo threads are gone after `shutdown()`, and 0 of 25 aborted.
    """
    import torch._dynamo  # noqa: F401


def timeout_message(rank: int, timeout: float, exc: BaseException) -> str:
    """The one line a rank prints when a collective failed: most often another rank died first."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return (f"rank {rank}: a collective failed or waited more than {timeout:g} s for the other ranks "
            f"({first}); another rank probably failed first, see its error above")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
