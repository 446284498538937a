"""Cold mode's zygote: one process, forked from the set-up kernel, that forks every message's.

A process forked from the kernel shares its memory pages copy-on-write, and the first write to
a shared page, by either process, copies it in a page fault (~3-8 µs on a small VM). With each
message's process forked from the kernel itself, the kernel paid ~380 such faults per message
for its own writes while it handed the message over and relayed the result, on the message's
path (docs/performance.md). The zygote is forked once (again after a code change) and then
only waits on a socket and clones: the kernel shares its pages with a process that writes
almost nothing, so after one round of faults they are the kernel's own again.

The zygote clones with CLONE_PARENT (kernelexec/kernel/clone.py): the message processes are
the kernel's children, and the kernel waits for them, kills their process groups and reads
their exit status exactly as before. The zygote has a process group of its own (a signal to
the kernel's group is not for it), ignores SIGINT, and exits when the kernel closes its socket
or dies (PR_SET_PDEATHSIG).

Exchange: the kernel sends one datagram (SOCK_SEQPACKET) with the child's two pipe ends
(SCM_RIGHTS); the zygote answers ``{"pid": N}`` or ``{"error": TEXT, "errno": N}``. The kernel
blocks SIGINT around an exchange (kernelexec/kernel/coldfork.py), so no answer is ever left
unread for the next one.

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from .clone import clone_sibling, die_with_parent, fork_quietly

__all__ = ["Zygote"]

#: In the clone: the message process's life, from its two pipe ends (never returns).
BecomeChild = Callable[[int, int], None]
_REQUEST = b"fork"
_MAX_ANSWER = 512


class Zygote:
    """The kernel's handle on its zygote process."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self._channel = channel

    @classmethod
    def start(cls, become_child: BecomeChild, prepare: Callable[[], None]) -> Zygote:
        """Fork the zygote from this process, as it is now; ``prepare`` runs first thing in
        it (what a process forked from the kernel must close)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        try:
            pid = fork_quietly()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            ours.close()
            _serve(theirs, parent, prepare, become_child)
        theirs.close()
        return cls(pid, ours)

    def fork(self, from_parent: int, to_parent: int) -> int:
        """A child of this process, cloned from the zygote, given the two pipe ends."""
        socket.send_fds(self._channel, [_REQUEST], [from_parent, to_parent])
        data = self._channel.recv(_MAX_ANSWER)
        if not data:
            raise OSError(errno.EPIPE, "the cold-mode zygote is gone")
        answer: dict[str, Any] = json.loads(data)
        pid = answer.get("pid")
        if not isinstance(pid, int):
            raise OSError(answer.get("errno") or errno.EAGAIN, str(answer.get("error")))
        return pid

    def close(self) -> None:
        """Stop it (the caller reaps :attr:`pid`, a child of this process)."""
        self._channel.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _serve(
    channel: socket.socket, parent: int, prepare: Callable[[], None], become_child: BecomeChild
) -> None:
    """The zygote's life: one clone per request, until the kernel hangs up. Never returns."""
    code = 0
    try:
        die_with_parent(parent)
        prepare()
        with contextlib.suppress(OSError):  # a session leader's child: it can
            os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            data, fds, _flags, _addr = socket.recv_fds(channel, len(_REQUEST), 2)
            if not data:
                break
            channel.send(json.dumps(_clone(channel, fds, become_child)).encode())
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _clone(channel: socket.socket, fds: list[int], become_child: BecomeChild) -> dict[str, Any]:
    try:
        if len(fds) != 2:
            raise OSError(errno.EINVAL, f"a fork request brings 2 fds, not {len(fds)}")
        pid = clone_sibling()
        if pid == 0:
            try:
                channel.close()
                become_child(fds[0], fds[1])
            finally:
                os._exit(70)
        return {"pid": pid}
    except OSError as exc:
        return {"error": str(exc), "errno": exc.errno}
    finally:
        for fd in fds:
            os.close(fd)
