"""The kernel manager the course tools start notebooks with: encrypted transport, quiet process.

ipykernel warns "Kernel is running over TCP without encryption" whenever a kernel is started
without CurveZMQ keys. jupyter_client 8.10 can provision them: `transport_encryption = "auto"`
does so when the kernelspec declares `supported_encryption: curve` (ipykernel's does) and pyzmq
has Curve support. Where it does not, the kernel talks over local IPC sockets instead, which the
warning names as the other fix. Either way the warning is addressed, not hidden.

The kernel process's own stderr (its log lines, e.g. "KeyboardInterrupt caught in kernel" when a
run is stopped) goes to /dev/null: what a notebook prints is captured into its outputs by
ipykernel, and a dead kernel is still reported by nbclient as DeadKernelError.

Pass it to papermill: `execute_notebook(..., kernel_manager_class=QuietKernelManager)`.
"""

from __future__ import annotations

import subprocess

import zmq
from jupyter_client.manager import AsyncKernelManager


class QuietKernelManager(AsyncKernelManager):
    """AsyncKernelManager with CurveZMQ keys (or IPC sockets) and the kernel's stderr discarded."""

    def __init__(self, **kwargs):
        if zmq.has("curve"):
            kwargs.setdefault("transport_encryption", "auto")
        else:
            kwargs.setdefault("transport", "ipc")
        super().__init__(**kwargs)

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        kw.setdefault("stderr", subprocess.DEVNULL)
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    _launch_kernel = _async_launch_kernel
