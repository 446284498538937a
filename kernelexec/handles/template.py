"""The kernel template: a process that has imported the kernel and forks kernels on demand.

Started by the bridge (:mod:`.forking`) as ``python -m kernelexec.handles.template FD PID``
with the bridge's own interpreter and environment. It imports what a kernel imports (ipykernel,
IPython, zmq, debugpy, kernelexec's in-kernel runtime: ~0.3 s of the ~0.36 s a kernel takes
to start, docs/performance.md) and then, single-threaded, waits on FD (one end of a
SOCK_SEQPACKET socketpair only the bridge, PID, holds) for fork requests: one JSON datagram,
the fds to pass with it.

A fork request is answered with ``{"pid": N}`` or ``{"error": text}``. The child is made
with ``clone(CLONE_PARENT)``: its parent is the bridge, not the template, so jupyter_client
and the bridge wait for it, signal it and read its exit status exactly as for a kernel they
launched themselves (:class:`.forking.ForkedProcess`). In the child: a new session (the
kernel's process group, as jupyter_client's launch gives it), the request's fds at their
numbers, its working directory and environment, then ``kernelexec.kernel.app.main`` with the
request's arguments. The child never returns into the template's loop (``os._exit``).

What a forked kernel shares with its template: the interpreter's start (sys.path, sys.flags,
the hash seed); the environment is the request's. The ``random`` module is reseeded at fork
(CPython's own at-fork hook). The template dies with the bridge (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from typing import Any

from ..kernel.clone import can_clone_siblings, clone_sibling, die_with_parent

#: what a kernel imports (kernelexec.kernel.app.main and the runtime's first op)
PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.iostream",
    "ipykernel.heartbeat",
    "ipykernel.comm",
    "ipykernel.debugger",
    "IPython",
    # what IPKernelApp.initialize imports in the kernel (~6 ms after the fork otherwise)
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "pdb",
    "faulthandler",
    "tornado.platform.asyncio",
    "zmq",
    "kernelexec.kernel.app",
    "kernelexec.kernel.decoding",
    "kernelexec.kernel.runtime",
    "kernelexec.kernel.nodeapi",
    "kernelexec.kernel.guard",
    "kernelexec.kernel.convert",
    "kernelexec.kernel.blobs",
    "kernelexec.kernel.wrapping",
)
#: the module the template runs in a child; a request runs ``python -m`` this, nothing else
KERNEL_MODULE = "kernelexec.kernel"
_PR_SET_NAME = 15
#: the template's process name (/proc/PID/comm), so tools tell it from its kernels, which
#: share its command line ("python", as a launched kernel's)
TEMPLATE_COMM = b"kx-template"
_MAX_REQUEST = 1 << 20
_MAX_FDS = 8


def can_fork_kernels() -> bool:
    """Whether this machine has what the template needs (Linux, a known clone syscall)."""
    return can_clone_siblings()


# ---------------------------------------------------------------- the bridge's side
#: the environment variable that turns the template off (``0``) for a bridge
SWITCH = "KERNELEXEC_KERNEL_TEMPLATE"
#: room in the template's command line for the forked kernels' own (they write it there)
_CMDLINE_ROOM = 1024
#: a template spawned before the bridge's event loop runs (spawn_early), not yet adopted
_early: tuple[subprocess.Popen[bytes], socket.socket] | None = None


def wanted() -> bool:
    """Whether this bridge forks its kernels from a template."""
    return can_fork_kernels() and os.environ.get(SWITCH, "1") != "0"


def spawn(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m kernelexec.handles.template`` of this interpreter; the process and
    the bridge's end of the socket pair to it (forking.KernelTemplate speaks over it)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    padding = "-" * _CMDLINE_ROOM  # the forked kernels write their command line there
    module = "kernelexec.handles.template"
    argv = [sys.executable, "-m", module, str(theirs.fileno()), str(os.getpid()), padding]
    process = subprocess.Popen(
        argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env
    )
    theirs.close()
    return process, ours


def spawn_early(env: dict[str, str]) -> None:
    """Start the template first thing in ``kernelexec serve`` (kernelexec/cli.py, before it
    builds its parser): its imports (~0.35 s) then run beside the bridge's own on another core
    instead of after them, and the first deploy's kernels are forked that much sooner. Once
    only: a second call while it waits for adoption does nothing."""
    global _early
    if _early is None and wanted():
        _early = spawn(env)


def take_early() -> tuple[subprocess.Popen[bytes], socket.socket] | None:
    """The template spawn_early started, handed over once (None if there is none)."""
    global _early
    early, _early = _early, None
    return early


def discard_early() -> None:
    """A bridge that stops before it adopted its early template (it could not listen, its
    node socket was unusable): the template goes with it."""
    early = take_early()
    if early is not None:
        process, ours = early
        ours.close()
        process.kill()
        process.wait()


def _set_comm(name: bytes) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _set_cmdline(argv: list[str]) -> None:
    """Rewrite this process's command line (/proc/PID/cmdline, what ps and pgrep show) in
    place, as setproctitle does: within the room the original arguments took (the template
    is started with a padding argument for this), NUL-padded."""
    with open("/proc/self/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49)
    room = end - start
    data = b"\0".join(a.encode() for a in argv)[: room - 1]
    ctypes.memmove(start, data + b"\0" * (room - len(data)), room)


def _check(request: Any, fds: list[int]) -> tuple[list[str], dict[str, str], str, list[int]]:
    argv = request.get("argv")
    env = request.get("env")
    cwd = request.get("cwd") or os.getcwd()
    targets = request.get("fds") or []
    prefix = [sys.executable, "-m", KERNEL_MODULE]
    if (
        not isinstance(argv, list)
        or argv[:3] != prefix
        or not all(isinstance(a, str) for a in argv)
    ):
        msg = f"not a kernel command of this interpreter: {argv!r}"
        raise ValueError(msg)
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        msg = "env must map names to strings"
        raise ValueError(msg)
    if not isinstance(cwd, str):
        msg = f"cwd must be a path: {cwd!r}"
        raise ValueError(msg)
    if len(targets) != len(fds) or not all(isinstance(t, int) and t > 2 for t in targets):
        msg = f"fds {targets!r} do not match the {len(fds)} passed"
        raise ValueError(msg)
    return argv[3:], env, cwd, targets


def _become_kernel(
    channel: socket.socket,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    fds: list[int],
    targets: list[int],
) -> None:
    """In the child: the kernel's session, fds, cwd and environment, then the kernel."""
    code = 1
    try:
        channel.close()
        _set_comm(b"python")
        _set_cmdline([sys.executable, "-m", KERNEL_MODULE, *args])  # ps shows a kernel
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        moved = [os.dup(fd) for fd in fds]  # out of the way of the targets
        for fd in fds:
            os.close(fd)
        for fd, target in zip(moved, targets, strict=True):
            os.dup2(fd, target, inheritable=True)
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        from kernelexec.kernel import app

        # ipykernel read JPY_PARENT_PID into a trait default at import, in the template
        args = [*args, f"--IPKernelApp.parent_handle={env.get('JPY_PARENT_PID') or 0}"]
        sys.argv = [app.__file__ or KERNEL_MODULE, *args]
        app.main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve(channel: socket.socket) -> None:
    """One request a datagram (SOCK_SEQPACKET), one answer each; until the bridge hangs up."""
    while True:
        data, fds, _flags, _addr = socket.recv_fds(channel, _MAX_REQUEST, _MAX_FDS)
        if not data:
            return
        try:
            args, env, cwd, targets = _check(json.loads(data), fds)
            pid = clone_sibling()
            if pid == 0:
                _become_kernel(channel, args, env, cwd, fds, targets)
            answer: dict[str, Any] = {"pid": pid}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        channel.send(json.dumps(answer).encode())


def main(argv: list[str]) -> None:
    """``FD PID PADDING``: the socket, the bridge's pid, room for the kernels' command lines."""
    parent = int(argv[1])
    channel = socket.socket(fileno=int(argv[0]))
    die_with_parent(parent)
    _set_comm(TEMPLATE_COMM)
    _set_cmdline([sys.executable, "-m", "kernelexec.handles.template"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the bridge
    from kernelexec.kernel import debugging

    debugging.import_without_debugpy()  # debugpy loads on a kernel's first debug request
    for name in PRELOAD:
        __import__(name)
    channel.send(b'{"ready": true}')
    _serve(channel)


if __name__ == "__main__":
    main(sys.argv[1:])
