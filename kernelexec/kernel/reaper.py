"""Killing and reaping cold mode's children off the message's path (kernelexec/kernel/coldfork.py).

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

__all__ = ["Reaper", "kill_group", "wait_status"]

#: How long :func:`wait_status` waits for a child that died on the message's path.
REAP_WAIT = 1.0


class Reaper:
    """A daemon thread that kills and waits for children, so no result waits for a teardown.

    A killed child with a large address space takes a millisecond or more to die; the
    message's result does not need to wait for that. A child that answered is killed at
    ``kill_at`` (LINGER after its result; its pipe is closed then too), a failed one at once.
    Every child is reaped (no zombie), and one thread serves all messages.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, int]] = []  # (kill_at, pid, fd to close or -1)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def reap(self, pid: int, *, kill_at: float | None = None, close_fd: int = -1) -> None:
        with self._wake:
            self._due.append((time.monotonic() if kill_at is None else kill_at, pid, close_fd))
            self._due.sort()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="kernelexec-reaper", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def close_inherited_pipes(self) -> None:
        """In a child just forked: close its copies of the pipes of children waiting to be
        killed, so that each of them sees end of file when the kernel goes, and forget them
        (a process forked from this one must not close those numbers again: they may name
        its own pipes by then). No lock: the reaper thread does not exist in the child, and
        may have held it at the fork."""
        for _, _, fd in list(self._due):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._due = []

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, pid, fd = self._due.pop(0)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                kill_group(pid)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)


def kill_group(pid: int) -> None:
    """SIGKILL the child's process group (the child alone when it has none)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_status(pid: int) -> int | None:
    """Wait for the child (bounded); its wait status, None if gone or not reaped in time."""
    end = time.monotonic() + REAP_WAIT
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > end:
            return None
        time.sleep(0.001)
