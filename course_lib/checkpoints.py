"""Loading and saving checkpoints safely, with errors that say what went wrong and how to fix it.

Every load goes through `torch.load(..., weights_only=True)`: a checkpoint is a pickle, and an
ordinary pickle can run arbitrary code when it is opened. `weights_only=True` only rebuilds
tensors and plain containers, so a file from the internet cannot take over your machine.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .files import atomic_torch_save, atomic_write_text
from .paths import CHECKPOINTS, MANIFEST, display_path

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class CheckpointError(Exception):
    """Any problem with a checkpoint file or with loading it into a model."""


# ----------------------------------------------------------------------------------- loading
def _looks_like_checkpoint(p: Path) -> bool:
    return p.is_file() and (p.suffix in CHECKPOINT_SUFFIXES or p.name.startswith("step_"))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = False) -> dict:
    """Load a checkpoint dict with `weights_only=True`.

    map_location="cpu" (the default) makes a checkpoint saved on a GPU open on any machine.
    With verify=True the file's sha256 must match checkpoints/MANIFEST.json.
    """
    p = Path(path)
    shown = display_path(p)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {shown}. Check the path (run `make checkpoints` to rebuild the shipped ones).")
    if p.is_dir():
        inside = sorted(c.name for c in p.iterdir() if _looks_like_checkpoint(c))
        hint = f" Checkpoint files inside it: {', '.join(inside)}." if inside else " It holds no checkpoint files."
        raise CheckpointError(f"{shown} is a folder, but a checkpoint *file* is expected.{hint} Pass the file, e.g. {shown}/{inside[0] if inside else 'model.pt'}.")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{shown} is empty (0 bytes): the save was interrupted. Re-create it.")
    if verify:
        verify_checkpoint(p)
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a refused object: the bytes themselves are bad
            raise CheckpointError(f"{shown} is truncated or corrupted (not a readable torch checkpoint). "
                                  "Re-create it (`make checkpoints`) and compare its sha256 with checkpoints/MANIFEST.json.") from None
        raise CheckpointError(
            f"refused to load {shown}: it contains Python objects other than tensors and plain containers "
            f"({_refused_global(exc)}). Unpickling arbitrary objects can execute code hidden in the file, so "
            "weights_only=True blocks it. Re-save the checkpoint as a dict of tensors and plain values "
            "(e.g. {'h_params': dict, 'model_state_dict': model.state_dict()})."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{shown} is truncated or corrupted ({_first_line(exc)}). Re-download or re-create it "
            "(`make checkpoints`), and compare its sha256 with checkpoints/MANIFEST.json."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{shown} holds a {type(obj).__name__}, expected a dict of named entries.")
    return obj


def _refused_global(exc: BaseException) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return f"found {found.group(1)}" if found else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message (PyTorch's can run to several paragraphs)."""
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(exc).__name__


def get_entry(ckpt: Mapping, key: str, path: str | Path = "checkpoint") -> Any:
    """ckpt[key] with an error that lists the keys that do exist."""
    if key not in ckpt:
        raise CheckpointError(f"{display_path(path)} has no {key!r} entry; it has: {', '.join(map(str, ckpt))}.")
    return ckpt[key]


# ------------------------------------------------------------------------ state dict repairs
def common_prefix(keys: list[str] | Any) -> str | None:
    """The wrapper prefix every key shares (`module.` from DataParallel/DDP, `_orig_mod.` from torch.compile)."""
    keys = list(keys)
    for prefix in ("module.", "_orig_mod.", "model."):
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove `prefix` from the start of every key that has it (others are kept as they are)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """`model.load_state_dict` with readable errors: the key diff, the prefix fix, the shape mismatch."""
    want = model.state_dict()
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    if strict and (missing or unexpected):
        lines = ["state_dict does not match the model (strict=True):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_few(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_few(unexpected)}")
        prefix = common_prefix(unexpected) if unexpected else None
        if prefix and all(k[len(prefix):] in want for k in unexpected):
            lines.append(f"  every checkpoint key starts with {prefix!r} (saved from a wrapped model). "
                         f"Fix: load_weights(model, strip_prefix(state_dict, {prefix!r}))")
        raise CheckpointError("\n".join(lines))
    for k, v in state_dict.items():
        if k in want and tuple(want[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"shape mismatch for {k!r}: the model expects {tuple(want[k].shape)}, the checkpoint has "
                f"{tuple(v.shape)}. The model was built with different h_params than the checkpoint's."
            )
    # Tensors saved in 16 bits are cast into the model's fp32 parameters by load_state_dict.
    model.load_state_dict(dict(state_dict), strict=strict)


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------- saving
def atomic_save(obj: Any, path: str | Path, overwrite: bool = False) -> Path:
    """torch.save to a temporary name in the same folder, then rename: never a half-written file.
    Refuses to replace an existing file unless overwrite=True."""
    return atomic_torch_save(obj, path, overwrite)


def half_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp16 copies of floating-point weights (half the file size; loaded back into fp32).

    Tied weights (the embedding and the output head) appear under two keys but share one
    storage; converting each key separately would store the big table twice, so convert once.
    """
    converted: dict[int, torch.Tensor] = {}
    out = {}
    for k, v in model.state_dict().items():
        ptr = v.untyped_storage().data_ptr()
        if ptr not in converted:
            converted[ptr] = v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
        out[k] = converted[ptr]
    return out


# -------------------------------------------------------------------------------- manifest
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path = MANIFEST) -> dict[str, dict]:
    """checkpoints/MANIFEST.json as {relative path: entry}; empty if it does not exist yet."""
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def write_json_atomic(data: Any, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def manifest_key(path: str | Path) -> str:
    return Path(path).resolve().relative_to(CHECKPOINTS.resolve()).as_posix()


def update_manifest(path: str | Path, entry: dict, manifest: str | Path = MANIFEST) -> dict:
    """Record (or replace) the entry for one checkpoint file, adding its sha256 and size."""
    p = Path(path)
    data = read_manifest(manifest)
    key = manifest_key(p)
    data[key] = {**entry, "path": key, "sha256": sha256_file(p), "size_bytes": p.stat().st_size}
    write_json_atomic(data, manifest)
    return data[key]


def verify_checkpoint(path: str | Path, manifest: str | Path = MANIFEST) -> None:
    """Raise CheckpointError unless the file's sha256 equals the one recorded in the manifest."""
    p = Path(path)
    entry = read_manifest(manifest).get(manifest_key(p))
    if entry is None:
        raise CheckpointError(f"{display_path(p)} is not listed in checkpoints/MANIFEST.json; cannot verify it.")
    got = sha256_file(p)
    if got != entry["sha256"]:
        raise CheckpointError(
            f"{display_path(p)}: sha256 {got[:12]}... differs from MANIFEST.json ({entry['sha256'][:12]}...). "
            "The file changed or is corrupted; rebuild it with `make checkpoints` or restore it from git."
        )
