"""PyInstaller runtime hook, run before gateway.py inside the binary.

The process an operator starts is PyInstaller's bootloader; it unpacks the binary and runs the
gateway as its child, passing SIGTERM and SIGINT on. Killed itself (kill -9), it could pass nothing
on, and the gateway would live on without it, holding the port. So on Linux the gateway asks for a
SIGTERM when its parent dies, and shuts down as it does on any SIGTERM (workers, if any, follow it)."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_bootloader() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        parent = os.readlink(f"/proc/{os.getppid()}/exe")
    except (OSError, AttributeError):
        return
    if parent != os.readlink("/proc/self/exe"):  # the bootloader died before the request: follow it now
        os._exit(1)


_die_with_bootloader()
