"""Loading and saving checkpoints safely, with errors that say what went wrong and how to fix it.

Every load goes through `torch.load(..., weights_only=True)`: a checkpoint is a pickle, and an
ordinary pickle can run arbitrary code when it is opened. `weights_only=True` only rebuilds
tensors and plain containers, so a file from the internet cannot take over your machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from course_lib.core.files import atomic_write_bytes, atomic_write_text
from course_lib.core.paths import CHECKPOINTS, MANIFEST, display_path, link_problem

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
        if (problem := link_problem(p)) is not None:
            raise CheckpointError(f"checkpoint {shown} cannot be opened: the path goes through {problem}; fix the link or pass the file itself.")
        raise CheckpointError(f"checkpoint not found: {shown}. Check the path (run `make checkpoints` to rebuild the shipped ones).")
    if p.is_dir():
        inside = sorted(c.name for c in p.iterdir() if _looks_like_checkpoint(c))
        hint = f" Checkpoint files inside it: {', '.join(inside)}." if inside else " It holds no checkpoint files."
        raise CheckpointError(f"{shown} is a folder, but a checkpoint *file* is expected.{hint} Pass the file, e.g. {shown}/{inside[0] if inside else 'model.pt'}.")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{shown} is empty (0 bytes): the save was interrupted. Re-create it.")
    if verify:
        verify_checkpoint(p)
    sniff_checkpoint(p)
    try:
        obj = _load_weights_only(p, map_location)
    except pickle.UnpicklingError as exc:
        found = refused_global(exc)
        if found is None:  # not a refused object: the bytes themselves are bad
            raise CheckpointError(f"{shown} is truncated or corrupted (not a readable torch checkpoint). "
                                  "Re-create it (`make checkpoints`) and compare its sha256 with checkpoints/MANIFEST.json.") from None
        raise CheckpointError(_unsafe_message(shown, found)) from None
    except Exception as exc:  # noqa: BLE001
        # A damaged pickle can trip the unpickler anywhere (an empty stack, a missing memo entry, a
        # short struct read, a bad zip): every such failure means the bytes are bad.
        raise CheckpointError(
            f"{shown} is truncated or corrupted ({_first_line(exc)}). Re-download or re-create it "
            "(`make checkpoints`), and compare its sha256 with checkpoints/MANIFEST.json."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{shown} holds a {type(obj).__name__}, expected a dict of named entries.")
    return obj


def _unsafe_message(shown: str, found: str) -> str:
    return (f"refused to load {shown}: it contains Python objects other than tensors and plain containers "
            f"(found {found}). Unpickling arbitrary objects can execute code hidden in the file, so "
            "weights_only=True blocks it. Re-save the checkpoint as a dict of tensors and plain values "
            "(e.g. {'h_params': dict, 'model_state_dict': model.state_dict()}).")


def _load_weights_only(p: Path, map_location) -> Any:
    """torch.load(weights_only=True); for pickle protocols 3-5, which its unpickler cannot parse, the same allowlist.

    torch's weights-only unpickler reads protocol 2 only (torch.save's default): a protocol 4 or 5 file
    (`torch.save(..., pickle_protocol=4)`) stops at its first FRAME opcode ("Unsupported operand 149"),
    which used to be reported as corruption. Such a file is first scanned opcode by opcode
    (`unsafe_globals`): any import outside torch's allowlist is refused by name, before anything is
    built. A clean file is then read by Python's unpickler restricted to that same allowlist
    (`find_class` refuses everything else), the safe-unpickling recipe of the `pickle` documentation.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(p, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            if refused_global(exc) is not None or pickle_protocol(p) in (None, 0, 1, 2):
                raise
        bad = unsafe_globals(p)
        if bad:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {bad[0]}")
        return torch.load(p, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle)


def _allowed_globals() -> dict[str, Any]:
    """The globals torch's weights-only unpickler accepts (its own table, plus add_safe_globals)."""
    from torch import _weights_only_unpickler as wo

    return {**wo._get_allowed_globals(), **wo._get_user_allowed_globals()}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        key = f"{module}.{name}"
        if key not in allowed:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {key}")
        return allowed[key]


class _restricted_pickle:  # noqa: N801  (a stand-in for the `pickle` module, as torch.load's pickle_module)
    Unpickler = _RestrictedUnpickler
    __name__ = "course_lib.restricted_pickle"

    @staticmethod
    def load(f, **kwargs):
        return _RestrictedUnpickler(f, **kwargs).load()


def _pickles(p: Path) -> list[bytes]:
    """The pickle streams inside a checkpoint: data.pkl of a zip archive, or the legacy file's leading pickles."""
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            return [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    return [p.read_bytes()]


def pickle_protocol(p: Path) -> int | None:
    """The protocol of the checkpoint's (first) pickle, from its PROTO opcode; None if unreadable."""
    try:
        data = _pickles(p)
    except (OSError, zipfile.BadZipFile, KeyError):
        return None
    return data[0][1] if data and len(data[0]) > 1 and data[0][0] == PICKLE_PROTO else None


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def unsafe_globals(p: str | Path) -> list[str]:
    """Every "module.name" the checkpoint's pickles import that torch's weights-only allowlist lacks.

    Read with `pickletools.genops`, nothing executed. GLOBAL and INST carry "module name" inline;
    protocol 4+'s STACK_GLOBAL takes them from the stack, pushed just before as strings (often
    SHORT_BINUNICODE + MEMOIZE, or BINGET of a string memoized earlier), so the scan keeps the
    strings it saw pushed and the memo (MEMOIZE stores at the next free index).
    """
    allowed = _allowed_globals()
    found: list[str] = []
    for data in _pickles(Path(p)):
        stream = io.BytesIO(data)
        for _ in range(LEGACY_PICKLES):  # a legacy file holds several pickles back to back, then raw bytes
            try:
                names = _imports(stream)
            except Exception:  # noqa: BLE001  (the raw storage bytes, or damage: the restricted load decides)
                break
            found += [n for n in names if n not in allowed and n not in found]
            if stream.tell() >= len(data):
                break
    return found


LEGACY_PICKLES = 5  # torch's legacy format: magic number, protocol, sys info, the object, the storage keys


def _imports(stream: io.BytesIO) -> list[str]:
    """The "module.name" of every import opcode of the one pickle starting at stream's position."""
    pushed: list[object] = []   # what each opcode pushed: a str for strings, None for anything else
    memo: dict[int, object] = {}
    names = []
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            names.append(".".join(str(arg).split(" ", 1)))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            module, qual = pushed[-2:] if len(pushed) >= 2 else (None, None)
            ok = isinstance(module, str) and isinstance(qual, str)
            names.append(f"{module}.{qual}" if ok else "<an import the scan cannot name>")
            pushed.append(None)
        elif op.name in _STRING_OPS:
            pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif op.name == "MEMOIZE":  # stores the top of the stack at the next free memo index
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in _PUT_OPS:
            memo[arg] = pushed[-1] if pushed else None
        elif op.name in _GET_OPS:
            pushed.append(memo.get(arg))
        elif op.name not in ("FRAME", "PROTO", "MARK", "STOP", "POP", "POP_MARK"):
            pushed.append(None)
    return names


LFS_POINTER = b"version https://git-lfs.github.com/spec/"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
PICKLE_PROTO = 0x80         # the legacy format (_use_new_zipfile_serialization=False) starts with a pickle PROTO opcode


def sniff_checkpoint(path: Path) -> None:
    """CheckpointError unless the file starts like something torch.save writes (a zip or a pickle).

    Catches the usual wrong files before the unpickler does: a Git LFS pointer (the repository was
    cloned without `git lfs pull`), a text file, an HTML error page saved as a download.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    shown = display_path(path)
    if head.startswith(LFS_POINTER):
        raise CheckpointError(f"{shown} is a Git LFS pointer, not the checkpoint itself: run `git lfs pull` to download it.")
    if head.startswith(ZIP_MAGIC) or head[0] == PICKLE_PROTO:
        return
    try:
        text = head.decode("utf-8")
        kind = "a text file" if "\0" not in text else None
    except UnicodeDecodeError:
        kind = None
    start = repr(text[:24]) if kind else " ".join(f"{b:02x}" for b in head[:4])
    raise CheckpointError(f"{shown} is not a torch checkpoint: it is {kind or 'binary data'} starting with {start} "
                          "(torch.save writes a zip archive or a pickle); pass the .pt file itself.")


# The weights-only unpickler's refusals (torch/_weights_only_unpickler.py): an import it will not
# perform ("Unsupported global: GLOBAL x", "unsupported GLOBAL posix.system whose module posix is
# blocked"), or a call/construction of something it does not know.
_REFUSALS = (re.compile(r"GLOBAL ([\w.]+)"), re.compile(r"unrecognized function (.+?)(?: which belongs|$)"),
             re.compile(r"Can only (?:create new object|build) [^\n]*?but got (.+)$"))


def refused_global(exc: BaseException) -> str | None:
    """The global the weights-only unpickler refused (e.g. "posix.system"), or None for any other failure."""
    for line in str(exc).splitlines():
        for pattern in _REFUSALS:
            m = pattern.search(line.strip())
            if m:
                return m.group(1).strip().rstrip(".")
    return None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message (PyTorch's can run to several paragraphs)."""
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0][:160] if text else type(exc).__name__


def get_entry(ckpt: Mapping, key: str, path: str | Path = "checkpoint") -> Any:
    """ckpt[key] with an error that lists the keys that do exist."""
    if key not in ckpt:
        raise CheckpointError(f"{display_path(path)} has no {key!r} entry; it has: {', '.join(map(str, ckpt))}.")
    return ckpt[key]


def config_from(path: str | Path, cls: Any, config: object, build: bool = True) -> Any:
    """cls(**config) for a dataclass or a constructor whose arguments are ints, with one-line errors
    naming the key (a str, a float, a bool or a value < 1 where an int is expected, an unknown key).
    build=False returns the checked dict instead of the object."""
    import inspect

    shown = display_path(path)
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{shown}: 'config' must be a dict, got a {type(config).__name__}; re-create the checkpoint")
    params = inspect.signature(cls).parameters
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise CheckpointError(f"{shown}: unknown config key(s) {unknown}; known: {', '.join(params)}")
    for k, v in config.items():
        default = params[k].default
        if isinstance(default, int) and not isinstance(default, bool) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise CheckpointError(f"{shown}: config[{k!r}] must be an int >= 1, got {v!r}; re-create the checkpoint")
        if isinstance(default, float) and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v == v or abs(v) == float("inf")):
            raise CheckpointError(f"{shown}: config[{k!r}] must be a finite number, got {v!r}; re-create the checkpoint")
    return cls(**config) if build else dict(config)


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


def check_state_dict(state_dict: object, path: str | Path = "state_dict", float_weights: bool = False) -> None:
    """CheckpointError naming the key unless state_dict maps str keys to tensors.

    float_weights=True also requires floating-point, finite tensors (a model whose weights hold NaN
    produces NaN logits at the first generate, far from the cause)."""
    shown = display_path(path) if path != "state_dict" else "state_dict"
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{shown}: the state dict must be a mapping of name -> tensor, got a {type(state_dict).__name__}; "
                              "save model.state_dict()")
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{shown}: state dict entry {k!r} is a {type(v).__name__}, not a tensor; save model.state_dict()")
        if float_weights and not v.is_floating_point():
            raise CheckpointError(f"{shown}: weight {k!r} has dtype {v.dtype}, expected floating point; the file is damaged, re-create it")
        if float_weights and not torch.isfinite(v).all():
            raise CheckpointError(f"{shown}: weight {k!r} holds NaN or inf (training diverged?); re-create the checkpoint")


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                 path: str | Path | None = None) -> None:
    """`model.load_state_dict` with readable errors: the key diff, the prefix fix, the shape mismatch.

    Floating-point tensors must be finite: NaN weights give NaN outputs far from the cause (a 0%
    accuracy, NaN joints) with exit 0. `path` names the checkpoint in that message."""
    check_state_dict(state_dict)
    check_finite(state_dict, path)
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


def check_finite(tensors: Mapping[str, object], path: str | Path | None = None) -> None:
    """CheckpointError naming the checkpoint and the first floating-point tensor that holds NaN or inf."""
    for k, v in tensors.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            what = "NaN" if bool(torch.isnan(v).any()) else "inf"
            where = display_path(path) if path is not None else "the state dict"
            raise CheckpointError(f"{where}: tensor {k!r} holds {what} (training diverged, or the file is damaged); "
                                  "re-create the checkpoint")


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------- saving
def atomic_save(obj: Any, path: str | Path, overwrite: bool = False) -> Path:
    """torch.save to a temporary name in the same folder, then rename: never a half-written file.

    Refuses to replace an existing file unless overwrite=True, and refuses (CheckpointError, nothing
    written) anything `load_checkpoint` would refuse — a non-dict, a numpy array, a custom class —
    so the library never writes a checkpoint it cannot read.
    """
    check_saveable(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    try:  # the final word: what weights_only=True reads back (the walk above gives the readable message)
        torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to save {display_path(path)}: load_checkpoint (weights_only=True) would refuse it "
                              f"(found {refused_global(exc) or _first_line(exc)}); save tensors and plain values only.") from None
    return atomic_write_bytes(path, buf.getvalue(), overwrite)


_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)


def check_saveable(obj: Any, where: str = "checkpoint") -> None:
    """CheckpointError naming the first entry weights_only=True cannot load (tensors, dicts, lists,
    tuples, sets and plain values are fine); the top level must be a dict, as load_checkpoint expects."""
    if where == "checkpoint" and not isinstance(obj, dict):
        raise CheckpointError(f"refusing to save a {type(obj).__name__}: a checkpoint is a dict of named entries, "
                              "e.g. {'model_state_dict': model.state_dict()}.")
    if type(obj) in (torch.Tensor, torch.nn.Parameter) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (dict, list, tuple, set, frozenset)) and type(obj).__module__ in ("builtins", "collections"):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            check_saveable(k, f"{where} key") if isinstance(obj, dict) else None
            check_saveable(v, f"{where}[{k!r}]")
        return
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    fix = " (convert it with torch.from_numpy)" if type(obj).__module__.startswith("numpy") else ""
    raise CheckpointError(f"refusing to save: {where} is a {kind}, which load_checkpoint (weights_only=True) refuses; "
                          f"store tensors and plain values only{fix}.")


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
