"""What every recipe does before training: the same run arguments and the same setup.

`--device` defaults to cpu so `make checkpoints` reproduces the shipped fp32 weights; a GPU is an
explicit choice (`--device auto` or `cuda`), and the MANIFEST entry says which device and which
autocast dtype produced a file (`run_record`). On CUDA, `--precision auto` runs the forward pass
and the loss under bf16 autocast (matmuls on tensor cores, activations half the memory); weights,
gradients and the optimizer stay fp32, and bf16's fp32-sized exponent needs no loss scaling.
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch

from course_lib.core.device import pick_device, seed_everything

DEVICES = ("cpu", "auto", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def add_run_args(ap: argparse.ArgumentParser, seed: int, threads: int = 0) -> None:
    """--seed, --threads, --device and --precision, with one meaning in every recipe."""
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--threads", type=int, default=threads,
                    help="torch threads (0 = leave PyTorch's default; 1 is polite on a shared CPU)")
    ap.add_argument("--device", choices=DEVICES, default="cpu",
                    help="where to train: cpu (default, reproduces the shipped weights), auto = cuda > mps > cpu")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto = bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere; "
                         "bf16 = autocast wherever PyTorch has it; weights and optimizer stay fp32 either way")


def setup_run(args: argparse.Namespace) -> tuple[torch.device, torch.Generator]:
    """Apply --threads, pick the device, seed everything; return (device, generator)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device), seed_everything(args.seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this run, or None for plain fp32.

    auto: bf16 on CUDA GPUs with bf16 support (Ampere and later), where it is faster; fp32 on the
    CPU (CPU autocast is slower for these small models and would change the shipped numbers) and
    on MPS (bf16 autocast there depends on the macOS version).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def train_autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The context to run forward + loss in: autocast to dtype on device, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_record(device: torch.device, dtype: torch.dtype | None) -> dict:
    """What the MANIFEST records about how a checkpoint was trained: device type and autocast dtype."""
    return {"device": device.type, "autocast": "off" if dtype is None else str(dtype).removeprefix("torch.")}


def warmup_cosine_lr(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 10% of `lr` (the text and draft recipes)."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
