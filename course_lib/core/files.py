"""Writing outputs safely: whole files or nothing, and run folders no two runs can share.

Every file the course writes (checkpoints, JSON, arrays, GIFs, executed notebooks, benchmark
results) goes to a temporary name in the target folder and is renamed into place: a crash or a
Ctrl-C leaves the old file or no file, never half of one (a rename within a folder is atomic).
Every numbered run folder is claimed with `mkdir`, which fails if the name exists, so two runs
started at the same moment get different folders.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from course_lib.core.paths import REPO_ROOT, display_path, link_problem


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], overwrite: bool = True) -> Path:
    """Call write(f) on a temporary file next to `path`, then rename it to `path`.

    overwrite=False refuses an existing file (FileExistsError naming it). Parent folders are
    created. The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600.
    """
    p = Path(path)
    if not overwrite and p.exists():
        raise FileExistsError(f"{display_path(p)} exists; refusing to overwrite it (pass overwrite=True to replace it).")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, p)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(p)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return p


_WHY = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
        errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def write_error(exc: OSError, where: str | Path, name_file: bool = True) -> str:
    """One line for a failed write: what went wrong in words and the path (the file if known and
    `name_file`, else `where`, e.g. the output folder when the file has a temporary name)."""
    why = _WHY.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__)
    return f"cannot write {display_path((exc.filename if name_file else None) or where)}: {why}"


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), overwrite)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """UTF-8 text, written atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def atomic_torch_save(obj: Any, path: str | Path, overwrite: bool = True) -> Path:
    """torch.save, written atomically. Saving to a file object names the archive inside "archive"
    (saving to a path would name it after the temporary file), so equal objects give equal bytes."""
    import torch  # imported here: the other writers do not need torch

    return atomic_write(path, lambda f: torch.save(obj, f), overwrite)


def claim_numbered_folder(root: str | Path, prefix: str = "", width: int = 0, first: int = 0) -> Path:
    """Create and return root/<prefix><n>, n one more than the largest number already used there.

    Files count as used too (a file named like the next folder is skipped, not retried forever).
    `mkdir` is atomic: if a concurrent run takes n first, this one moves on to n + 1.
    e.g. prefix="run-", width=3, first=1 gives run-001, run-002, ...; the defaults give 0, 1, 2, ...
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(prefix) + "([0-9]+)")
    used = [int(m.group(1)) for p in root.iterdir() if (m := pattern.fullmatch(p.name))]
    n = max(used, default=first - 1) + 1
    while True:
        path = root / f"{prefix}{n:0{width}d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse (ValueError, one line naming `flag`) a folder that cannot be created or written, before any compute.

    Walks up to the nearest existing ancestor: a file there, a broken link, or a folder where a
    test folder cannot be made (read-only, /proc, ...) is refused. Creates nothing.
    """
    root = Path(path)
    probe = root
    while not probe.exists():
        if probe.is_symlink():  # a dangling link, or a loop of links
            problem = link_problem(probe) or "a broken link"
            raise ValueError(f"{flag} {display_path(root)}: {display_path(probe)} is {problem}; pass another {flag}")
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{flag} {display_path(root)} cannot be created: {display_path(probe)} is a file, "
                         f"not a folder; pass another {flag}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=probe))
    except OSError as exc:
        raise ValueError(f"{flag} {display_path(root)} cannot be created: {display_path(probe)} is not writable "
                         f"({exc.strerror}); pass another {flag}") from None


def claim_folder(path: str | Path, marker: str, text: str = "") -> Path:
    """Claim `path` for this run: create it (parents too) if needed, then create path/marker exclusively.

    O_EXCL creation either makes the file or fails, so of two runs given the same path exactly
    one wins; the other gets FileExistsError, as does a folder that already holds anything.
    The marker (e.g. the run's arguments) stays: it tells the next run the folder is taken.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    if any(c.name != marker for c in p.iterdir()):
        raise FileExistsError(f"{display_path(p)} already holds files; earlier runs are never overwritten")
    fd = os.open(p / marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # FileExistsError if another run holds it
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return p


def fresh_output_file(arg: str | Path) -> Path:
    """The file a measuring CLI's `--out` names (relative to the repository), refused with FileExistsError
    when it exists already: a saved reference run is never overwritten by a later one."""
    out = Path(arg) if Path(arg).is_absolute() else REPO_ROOT / arg
    if out.exists():
        raise FileExistsError(f"{arg} exists; runs never overwrite earlier results: pass a new --out")
    return out


def fresh_output_arg(arg: str) -> Path:
    """`fresh_output_file` as an argparse `type=`: an existing file is a usage error (one line, exit 2)."""
    try:
        return fresh_output_file(arg)
    except FileExistsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

