"""Starting torchrun from Python (a notebook, a test, a benchmark): a notebook cannot be torchrun itself.

`python -m torch.distributed.run` is the same program as the `torchrun` script; calling it through
sys.executable makes sure the workers use this interpreter and its packages. A free port per launch
keeps two launches (or two notebooks) from meeting at the same rendezvous.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from course_lib.core.paths import REPO_ROOT


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A free port for torchrun's rendezvous, chosen at random BELOW the kernel's ephemeral range (Linux:
    32768-60999). A port the kernel hands out for `bind(0)` is ephemeral: between our check and torchrun's
    bind, another job's gloo connection can take it, and the rendezvous aborts. Ports below the range are
    never handed out that way, so only two launches drawing the same number could collide."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range busy: fall back to one the kernel picks
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(nproc: int, module: str, *args: str, port: int | None = None) -> list[str]:
    """The torchrun command line (as `python -m torch.distributed.run`, the same program) for one machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()), "-m", module, *args]


@contextmanager
def one_launch_at_a_time() -> Iterator[None]:
    """Hold a machine-wide lock while a torchrun job runs: two jobs of two processes each on a 2-core
    machine (parallel test workers, a notebook beside a test) oversubscribe it, which distorts every
    timing and brings collectives close to their timeouts. One job at a time keeps both honest.
    (The rare SIGABRT of a rank at exit had another cause: see process_group._import_compiler_first.)
    A no-op where fcntl does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(Path(tempfile.gettempdir()) / "course_lib_torchrun.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_torchrun(nproc: int, module: str, *args: str, threads: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Launch a course module under torchrun from any working directory; threads = OMP threads per process."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(threads)}
    with one_launch_at_a_time():
        return subprocess.run(torchrun_cmd(nproc, module, *args), capture_output=True, text=True, env=env,
                              cwd=REPO_ROOT, timeout=timeout)


def shown_command(nproc: int, module: str, *args: str) -> str:
    """The command as a reader would type it (no interpreter path, no port): for notebooks and messages."""
    quoted = [a if a and all(ch.isalnum() or ch in "-_./=:" for ch in a) else repr(a) for a in args]
    return " ".join(["torchrun", "--nproc_per_node", str(nproc), "-m", module, *quoted])
