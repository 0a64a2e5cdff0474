"""Choosing where tensors live, and making runs repeatable."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

_VALID = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    # Older builds lack torch.backends.mps entirely; guard instead of assuming.
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str = "auto", verbose: bool = True) -> torch.device:
    """Return a torch.device: "auto" prefers cuda, then mps, then cpu.

    An explicit request for a device that is not there is an error rather than a silent
    fallback: a notebook that quietly runs on the CPU is a classic source of confusion.
    """
    if not isinstance(name, str) or name.split(":")[0] not in _VALID:
        raise ValueError(f"device must be one of {_VALID} (optionally 'cuda:N'), got {name!r}")
    kind = name.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            device, why = torch.device("cuda"), f"CUDA GPU found ({torch.cuda.get_device_name(0)})"
        elif _mps_available():
            device, why = torch.device("mps"), "Apple MPS found"
        else:
            device, why = torch.device("cpu"), "no GPU found"
    elif kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch.cuda.is_available() is False; use device='auto' or 'cpu'")
    elif kind == "mps" and not _mps_available():
        raise RuntimeError("device='mps' requested but MPS is not available; use device='auto' or 'cpu'")
    else:
        device, why = torch.device(name), "requested explicitly"
    if verbose:
        print(f"Using device: {device.type} ({why})")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator with the same seed."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
