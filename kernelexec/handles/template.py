"""The kernel template: a process that has imported the kernel and forks kernels on demand.

Forked by ``python -m kernelexec serve`` before its imports (:mod:`.early`,
:func:`run_forked`), or spawned by the bridge as ``python -m kernelexec.handles.template FD
PID`` (:func:`spawn`), with the bridge's own interpreter and environment. It imports what a
kernel imports (ipykernel, IPython, zmq, kernelexec's in-kernel runtime: ~0.2 s of the
~0.25 s a kernel takes to start, docs/performance.md) and then, single-threaded, waits on FD
(one end of a SOCK_SEQPACKET socketpair only the bridge, PID, holds) for fork requests: one
JSON datagram, the fds to pass with it.

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

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, NoReturn

from ..kernel.clone import can_clone_siblings, clone_sibling, die_with_parent
from . import early
from .environment import BRIDGE_SECRETS, kernel_environment

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


class ForkedProcess:
    """The part of :class:`subprocess.Popen` jupyter_client's LocalProvisioner (and
    forking.KernelTemplate) uses, for a child this process did not launch with Popen: a kernel
    (a CLONE_PARENT sibling of the template), or the template forked by :mod:`.early`."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, status unknown
                self.returncode = -signal.SIGKILL
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: the template's process as the bridge holds it: spawned, or forked (kernelexec/handles/early.py)
TemplateProcess = subprocess.Popen[bytes] | ForkedProcess


def can_fork_kernels() -> bool:
    """Whether this machine has what the template needs (Linux, a known clone syscall)."""
    return can_clone_siblings()


# ---------------------------------------------------------------- the bridge's side
#: the environment variable that turns the template off (``0``) for a bridge
SWITCH = "KERNELEXEC_KERNEL_TEMPLATE"
#: a template spawned before the bridge's event loop runs (spawn_early), not yet adopted
_early: tuple[TemplateProcess, socket.socket] | None = None


def wanted() -> bool:
    """Whether this bridge forks its kernels from a template."""
    return can_fork_kernels() and os.environ.get(SWITCH, "1") != "0"


def spawn(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m kernelexec.handles.template`` of this interpreter; the process and
    the bridge's end of the socket pair to it (forking.KernelTemplate speaks over it)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    padding = "-" * early.ROOM  # the forked kernels write their command line there
    module = "kernelexec.handles.template"
    argv = [sys.executable, "-m", module, str(theirs.fileno()), str(os.getpid()), padding]
    process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
    theirs.close()
    return process, ours


def spawn_early(env: dict[str, str]) -> None:
    """Start the template first thing in ``kernelexec serve`` (kernelexec/cli.py, before it
    builds its parser): its imports (~0.2 s) then run beside the bridge's own on another core
    instead of after them, and the first deploy's kernels are forked that much sooner. Once
    only: a second call while it waits for adoption does nothing; nothing either when
    ``kernelexec/__main__.py`` already forked it (:mod:`.early`)."""
    global _early
    if _early is not None:
        return
    forked = early.take_forked()
    if forked is not None:
        pid, fd = forked
        _early = ForkedProcess(pid), socket.socket(fileno=fd)
    elif wanted():
        _early = spawn(env)


def take_early() -> tuple[TemplateProcess, socket.socket] | None:
    """The template spawn_early started (or adopted), handed over once (None if none)."""
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


def run_forked(channel: int) -> NoReturn:
    """The template forked by ``kernelexec/__main__.py`` (:mod:`.early`), on ``channel``: only
    its own fds and the kernel environment, then :func:`main`. Never returns."""
    parent = os.getppid()
    code = 1
    try:
        os.closerange(3, channel)  # the node's socket, anything else of the bridge's
        os.closerange(channel + 1, os.sysconf("SC_OPEN_MAX"))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        env = kernel_environment()
        os.environ.clear()  # unsetenv each: nothing points into the initial block any more
        os.environ.update(env)
        _blank_initial_environment(BRIDGE_SECRETS)
        main([str(channel), str(parent)])
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _blank_initial_environment(names: tuple[str, ...]) -> None:
    """Overwrite ``NAME=VALUE`` of ``names`` with NULs in this process's initial environment
    block: the bridge's, secrets included, which /proc/PID/environ shows, and which every
    kernel forked from the template would carry too (a spawned template's block is the kernel
    environment already)."""
    with open("/proc/self/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50 and 51)
    blanked = {name.encode() for name in names}
    offset = 0
    for entry in ctypes.string_at(start, end - start).split(b"\0"):
        if entry.partition(b"=")[0] in blanked:
            ctypes.memset(start + offset, 0, len(entry))
        offset += len(entry) + 1


if __name__ == "__main__":
    main(sys.argv[1:])
