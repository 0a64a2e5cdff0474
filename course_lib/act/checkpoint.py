"""The reference's checkpoint layout: a `step_N` file (a bare state dict) with `all_config.json` beside it.

The config lives NEXT TO the weights, not inside them, so `--checkpoint` must be the step file:
the folder is the run, the file is one moment of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, common_prefix, load_checkpoint, load_weights, strip_prefix
from ..paths import CHECKPOINTS, display_path
from .model import ACTReasoner

CONFIG_NAME = "all_config.json"
SHIPPED = CHECKPOINTS / "act" / "step_8000"


def step_of(path: str | Path) -> int:
    """`.../step_606` -> 606 (0 if the name carries no step)."""
    m = re.search(r"step_(\d+)", Path(path).name)
    return int(m.group(1)) if m else 0


def load_config(path: str | Path) -> dict:
    cfg_path = Path(path).parent / CONFIG_NAME
    if not cfg_path.exists():
        raise CheckpointError(f"no {CONFIG_NAME} beside {display_path(path)}: the model cannot be rebuilt without it. "
                              "Keep the config file in the same folder as the step file.")
    try:
        return json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{display_path(cfg_path)} is not valid JSON ({exc}).") from None


def load_reasoner(path: str | Path = SHIPPED, device: str | torch.device = "cpu") -> ACTReasoner:
    """Rebuild the reasoner from its config, load the weights (strict), eval mode, move to device."""
    sd = load_checkpoint(path, map_location="cpu")
    config = load_config(path)
    prefix = common_prefix(sd.keys())
    if prefix in ("_orig_mod.", "module."):  # saved from torch.compile / DDP
        sd = strip_prefix(sd, prefix)
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{display_path(path)} is not a state dict of tensors (the ACT layout stores one per step file).")
    model = ACTReasoner(config)
    load_weights(model, sd)
    return model.eval().to(device)
