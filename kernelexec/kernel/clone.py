"""fork() whose child is this process's sibling, and a process that dies with its parent.

Two processes fork on behalf of their parent: the bridge's kernel template
(kernelexec/handles/template.py) forks kernels that must be the bridge's children, and a cold
kernel's zygote (kernelexec/kernel/coldfork.py) forks message processes that must be the
kernel's. ``clone(CLONE_PARENT)`` gives the child its creator's parent, who can then wait for
it, signal it and read its exit status as for a child of its own.

Linux only (the clone syscall's number per machine). Standard library only: this module runs
inside kernels.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys
import warnings

__all__ = ["can_clone_siblings", "clone_sibling", "die_with_parent", "fork_quietly"]

_CLONE_PARENT = 0x00008000
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_PR_SET_PDEATHSIG = 1


def can_clone_siblings() -> bool:
    """Whether this machine has what :func:`clone_sibling` needs (Linux, a known syscall)."""
    return sys.platform.startswith("linux") and platform.machine() in _SYS_CLONE


def clone_sibling() -> int:
    """fork(), but the child's parent is this process's parent (CLONE_PARENT), with CPython's
    own before/after-fork steps around it, as os.fork does. The GIL is held throughout."""
    libc = ctypes.PyDLL(None, use_errno=True)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    flags = _CLONE_PARENT | signal.SIGCHLD
    pid = int(libc.syscall(_SYS_CLONE[platform.machine()], flags, 0, 0, 0, 0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"clone: {os.strerror(error)}")
    return pid


def fork_quietly() -> int:
    """os.fork() without its warning about forking a multi-threaded process: the child runs
    no thread of its parent's (cold mode's processes, kernelexec/kernel/coldfork.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if ``parent`` is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
