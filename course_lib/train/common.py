"""What every recipe does before training: the same run arguments and the same setup."""

from __future__ import annotations

import argparse

import torch

from ..device import pick_device, seed_everything


def add_run_args(ap: argparse.ArgumentParser, seed: int, threads: int = 0) -> None:
    """--seed, --threads and --device, with one meaning in every recipe."""
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--threads", type=int, default=threads,
                    help="torch threads (0 = leave PyTorch's default; 1 is polite on a shared CPU)")
    ap.add_argument("--device", default="auto")


def setup_run(args: argparse.Namespace) -> tuple[torch.device, torch.Generator]:
    """Apply --threads, pick the device, seed everything; return (device, generator)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device), seed_everything(args.seed)
