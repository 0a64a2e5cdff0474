"""The reference's checkpoint layout: a `step_N` file (a bare state dict) with `all_config.json` beside it.

The config lives NEXT TO the weights, not inside them, so `--checkpoint` must be the step file:
the folder is the run, the file is one moment of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from course_lib.act.model import DEFAULT_CONFIG, HALT_SLOTS, ACTReasoner
from course_lib.core.checkpoints import CheckpointError, common_prefix, load_checkpoint, load_weights, strip_prefix
from course_lib.core.checks import check_float, check_int, is_valid
from course_lib.core.paths import CHECKPOINTS, display_path
from course_lib.core.sizes import MAX_LAYERS, MAX_LOOP_STEPS, check_build_size, check_counts

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
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise CheckpointError(f"{display_path(cfg_path)} is not valid UTF-8 JSON ({exc}); restore the config saved with the checkpoint.") from None
    check_config(cfg, cfg_path)
    return cfg


def check_config(cfg: object, path: str | Path = CONFIG_NAME) -> None:
    """CheckpointError (one line, naming the key) unless cfg is a dict of known keys with values of the right type."""
    shown = display_path(path)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{shown} must hold a JSON object of config keys, got a {type(cfg).__name__}; "
                              "restore the config saved with the checkpoint.")
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise CheckpointError(f"{shown}: unknown config key(s) {unknown}; known: {', '.join(sorted(DEFAULT_CONFIG))}.")
    for key, value in cfg.items():
        default = DEFAULT_CONFIG[key]
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = is_valid(check_int, value, low=1), "an integer >= 1"
        else:
            ok, want = is_valid(check_float, value, low=0.0), "a finite number >= 0"
        if not ok:
            raise CheckpointError(f"{shown}: {key!r} must be {want}, got {value!r}; fix the value or restore the saved config.")
    merged = {**DEFAULT_CONFIG, **cfg}
    if merged["hidden_size"] % merged["num_heads"]:
        raise CheckpointError(f"{shown}: hidden_size {merged['hidden_size']} is not divisible by num_heads {merged['num_heads']}.")
    # Loop counts are bounded before anything runs: halt_max_steps is the evaluation loop's length.
    check_counts(path, {k: merged[k] for k in ("H_layers", "L_layers")}, MAX_LAYERS)
    check_counts(path, {k: merged[k] for k in ("H_cycles", "L_cycles", "halt_max_steps")}, MAX_LOOP_STEPS)
    calls = merged["halt_max_steps"] * merged["H_cycles"] * (merged["L_cycles"] * merged["L_layers"] + merged["H_layers"])
    if calls > MAX_BLOCK_CALLS:
        raise CheckpointError(f"{shown}: halt_max_steps x H_cycles x (L_cycles x L_layers + H_layers) = {calls:,} block calls "
                              f"per puzzle, above the loader's limit of {MAX_BLOCK_CALLS:,}; the config is damaged.")


# Block applications per puzzle at evaluation; the shipped config makes 8 x 2 x (2 x 1 + 1) = 48.
MAX_BLOCK_CALLS = 2**16


def check_reasoner_size(path: str | Path, config: dict) -> int:
    """CheckpointError (the estimate and the limit) before building a reasoner too large for MAX_MODEL_BYTES:
    its weights plus one row's carry (z_H, z_L), attention scores and logits."""
    c = {**DEFAULT_CONFIG, **config}
    t = HALT_SLOTS + c["seq_len"]
    runtime = 4 * (2 * t * c["hidden_size"] + c["num_heads"] * t * t + c["seq_len"] * c["vocab_size"])
    shown = {k: c[k] for k in ("hidden_size", "num_heads", "H_layers", "L_layers", "seq_len", "vocab_size")}
    return check_build_size(path, lambda: ACTReasoner(config), runtime_bytes=runtime, what="ACT reasoner", config=shown)


def load_reasoner(path: str | Path = SHIPPED, device: str | torch.device = "cpu") -> ACTReasoner:
    """Rebuild the reasoner from its config, load the weights (strict), eval mode, move to device."""
    sd = load_checkpoint(path, map_location="cpu")
    config = load_config(path)
    prefix = common_prefix(sd.keys())
    if prefix in ("_orig_mod.", "module."):  # saved from torch.compile / DDP
        sd = strip_prefix(sd, prefix)
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{display_path(path)} is not a state dict of tensors (the ACT layout stores one per step file).")
    check_reasoner_size(path, config)
    model = ACTReasoner(config)
    load_weights(model, sd, path=path)
    return model.eval().to(device)
