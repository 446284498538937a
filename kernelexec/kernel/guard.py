"""What surrounds one execution of user code: output capture, the timeout alarm, and
killing the processes the code started.

* :class:`OutputCapture` puts a proxy in ``sys.stdout``/``sys.stderr``. While a message
  runs, everything written (from any thread) is collected for RESULT.stdout. Outside an
  execution, writes from the main thread go to the original stream (a notebook attached to
  the kernel sees its prints as usual); writes from other threads become ``log`` events,
  one per line.
* :class:`Alarm` arms ``signal.setitimer(ITIMER_REAL)``; when it fires, the main thread
  gets :class:`MessageTimeout`, a BaseException (so ``except Exception`` in user code does
  not swallow it), exactly like Jupyter's interrupt.
* :func:`signals_held` makes a few steps atomic against SIGINT and SIGALRM (a timeout):
  they arrive, and act, once the steps are done.
* :func:`kill_started_since` kills the children of this process that started after a given
  moment (and their descendants), read from /proc, or psutil when /proc is missing.

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO

__all__ = [
    "Alarm",
    "MessageTimeout",
    "OutputCapture",
    "child_pids",
    "clock_ticks",
    "kill_started_since",
    "signals_held",
]


class MessageTimeout(BaseException):
    """Raised in the main thread when a message's time is up."""


# ------------------------------------------------------------------------- output


class _StreamProxy:
    """Stands in for sys.stdout/sys.stderr; see :class:`OutputCapture`."""

    def __init__(self, original: TextIO, owner: OutputCapture, level: str) -> None:
        self._original = original
        self._owner = owner
        self._level = level
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        target = self._owner.target
        if target is not None:
            target.append(text)
        elif threading.current_thread() is threading.main_thread():
            return self._original.write(text)
        else:
            self._line_buffered(text)
        return len(text)

    def _line_buffered(self, text: str) -> None:
        if "\n" not in text:
            self._pending.append(text)
            return
        joined = "".join(self._pending) + text
        *lines, rest = joined.split("\n")
        self._pending = [rest] if rest else []
        for line in lines:
            self._owner.emit_line(self._level, line)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._owner.target is not None:
            return
        if self._pending and threading.current_thread() is not threading.main_thread():
            text, self._pending = "".join(self._pending), []
            self._owner.emit_line(self._level, text)
            return
        with contextlib.suppress(Exception):
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class OutputCapture:
    """Collects what user code prints while a message runs.

    ``permanent``: the proxies stay in sys.stdout/sys.stderr between executions (in a
    kernel). Otherwise (in-process use) they are put in place by :meth:`start` and
    removed by :meth:`stop`. ``on_line(level, text)`` receives lines written by other
    threads outside an execution.
    """

    def __init__(
        self, on_line: Callable[[str, str], None] | None = None, *, permanent: bool = False
    ) -> None:
        self.target: list[str] | None = None
        self.on_line = on_line
        self.permanent = permanent
        self._saved: tuple[Any, Any] | None = None
        if permanent:
            self._install()

    def _install(self) -> None:
        out, err = sys.stdout, sys.stderr
        if isinstance(out, _StreamProxy) and isinstance(err, _StreamProxy) and (
            out._owner is self and err._owner is self
        ):
            return
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _StreamProxy(sys.stdout, self, "info")
        sys.stderr = _StreamProxy(sys.stderr, self, "warn")

    def emit_line(self, level: str, text: str) -> None:
        if self.on_line is not None:
            with contextlib.suppress(Exception):
                self.on_line(level, text)

    def start(self) -> list[str]:
        """Begin collecting; returns the list the text goes to."""
        stdout = sys.stdout
        if not (isinstance(stdout, _StreamProxy) and stdout._owner is self):
            self._install()
        parts: list[str] = []
        self.target = parts
        return parts

    def stop(self) -> str:
        """End collecting; returns the text."""
        parts, self.target = self.target, None
        if not self.permanent:
            self.uninstall()
        return "".join(parts) if parts else ""

    def uninstall(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None


# -------------------------------------------------------------------------- alarm


class Alarm:
    """A one-shot ITIMER_REAL alarm raising MessageTimeout in the main thread.

    ``permanent`` (in a kernel): the SIGALRM handler is installed once and stays, so
    arming costs one ``setitimer`` call; a stray alarm while disarmed is ignored.
    Otherwise the previous handler is put back after every message.
    """

    def __init__(self, *, permanent: bool = False) -> None:
        self.armed = False
        self.fired = False
        self.permanent = permanent
        self._installed = False
        self._previous: Any = None

    @staticmethod
    def available() -> bool:
        return hasattr(signal, "setitimer") and (
            threading.current_thread() is threading.main_thread()
        )

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            self.fired = True
            raise MessageTimeout

    def arm(self, seconds: float) -> bool:
        """Start the alarm; False when it cannot be used here (not the main thread)."""
        self.fired = False
        if seconds <= 0 or not self.available():
            return False
        if not self._installed:
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
            self._installed = True
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)
        return True

    def disarm(self) -> None:
        self.armed = False
        if not self._installed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not self.permanent:
            signal.signal(signal.SIGALRM, self._previous)
            self._installed, self._previous = False, None


_HELD_SIGNALS = (signal.SIGINT, signal.SIGALRM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Run a block that must not be cut in two by an interrupt or a timeout (e.g. "publish
    an event naming files, then record that they were handed over"): a SIGINT or SIGALRM
    that comes meanwhile is noted and raised again right after the block, where its usual
    handler acts. Blocking the signal (``pthread_sigmask``) would not do: the kernel's other
    threads receive it, and Python runs the handler in the main thread all the same.
    Outside the main thread signals cannot reach the block's code, so it runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)

    previous = [(held, signal.signal(held, note)) for held in _HELD_SIGNALS]
    try:
        yield
    finally:
        for held, handler in previous:
            signal.signal(held, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


# ---------------------------------------------------------------------- processes

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def clock_ticks() -> int:
    """Now, in the unit of /proc/<pid>/stat ``starttime`` (clock ticks since boot)."""
    if _BOOTTIME is None:
        return 0
    return int(time.clock_gettime(_BOOTTIME) * _HZ)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _children_from_task_files(pid: int) -> set[int] | None:
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.update(int(x) for x in handle.read().split())
        except FileNotFoundError:
            return None  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return found


def _children_from_scan(pid: int) -> set[int]:
    found: set[int] = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields and len(fields) > 1 and fields[1] == str(pid):
                found.add(int(name))
    return found


def _children_from_psutil(pid: int) -> set[int]:
    try:
        import psutil  # not guaranteed in a managed environment
    except ImportError:
        return set()
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.Error:
        return set()


def child_pids(pid: int | None = None) -> set[int]:
    """Direct children of ``pid`` (default: this process)."""
    pid = pid or os.getpid()
    if not os.path.isdir("/proc/self"):
        return _children_from_psutil(pid)
    found = _children_from_task_files(pid)
    return found if found is not None else _children_from_scan(pid)


def _descendants(pid: int) -> list[int]:
    order: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        order.append(current)
        stack.extend(child_pids(current))
    return order


def kill_started_since(ticks: int) -> list[int]:
    """SIGKILL the children started at or after ``ticks`` and all their descendants."""
    killed: list[int] = []
    for child in child_pids():
        started = _start_ticks(child)
        if started is None or started < ticks:
            continue
        for pid in _descendants(child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed
