"""Cold mode: every message runs in a child forked from the set-up kernel, then exits.

The children are cloned from the kernel's zygote (kernelexec/kernel/zygote.py), a process
forked from the kernel once, so that the kernel shares its pages with one quiet process rather
than with each child; they are still the kernel's children (CLONE_PARENT). The next message's
child is forked ahead: while a message runs, or right after its answer (:func:`fork_ahead`).

The child (its own process group) runs the message exactly as a hot kernel would
(:meth:`Runtime.run_here`) but talks only to a pipe: events and context requests go to the
parent as frames, context replies come back on a second pipe, and the RESULT is the last
frame before ``os._exit``. The child never touches zmq or ipykernel's streams.

The parent relays events to its own channel (IOPub), answers context requests (stdin),
enforces the timeout by killing the child's process group, and reaps the child. Anything
the child started is killed with it. Frames: 4-byte big-endian length + UTF-8 JSON.

A child that gave its result is killed :data:`LINGER` seconds later, by a reaper thread, not
on the message's path: tearing down a process (its address space, ~40 MB copied by prewarm)
takes a millisecond or more of CPU, and on a small machine that was a core taken from the
reply on its way to Node-RED. Meanwhile the child only waits (its events are dropped).

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ErrorObject, ExecutionTimeoutError, KernelDiedError
from . import blobs
from .clone import can_clone_siblings, fork_quietly
from .framing import HEADER, framed, take_frames
from .prewarm import BackgroundCopy, copy_shared_pages, enabled
from .reaper import Reaper, kill_group, wait_status
from .results import Result, failed_result
from .zygote import Zygote

if TYPE_CHECKING:
    from .nodeapi import Channel

__all__ = ["ForkHost", "PipeChannel", "discard_spare", "prefork", "run_in_child"]


class ForkHost(Protocol):
    """What cold mode needs of the runtime it forks (kernelexec/kernel/runtime.py's ``Runtime``):
    its channel and outputs, where its blobs are, and in the child, a runtime that talks
    through the pipe and runs the message there. Cold mode knows nothing else of it."""

    channel: Channel
    outputs: int
    blob_dir: str | None
    pid: int

    def become_child(self, channel: Channel) -> None: ...

    def run_here(
        self, msg: Any, req_id: str | None, timeout: float, table: Any = None
    ) -> Result: ...

    def note_interrupted(self) -> None: ...

#: Seconds a child that gave its result lives on before its process group is killed.
LINGER = 0.02


def _write_frame(fd: int, obj: Any) -> None:
    view = memoryview(framed(json.dumps(obj, allow_nan=False).encode("utf-8")))
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int) -> bytes:
    parts, have = [], 0
    while have < size:
        chunk = os.read(fd, size - have)
        if not chunk:
            message = "the cold-mode parent closed the pipe"
            raise EOFError(message)
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _read_frame(fd: int) -> Any:
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size))
    return json.loads(_read_exact(fd, size))


class PipeChannel:
    """The child's channel: events and context requests as frames to the parent."""

    def __init__(self, out_fd: int, in_fd: int) -> None:
        self.out_fd, self.in_fd = out_fd, in_fd
        self._lock = threading.Lock()
        self.finished = False

    def event(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            if not self.finished:  # after the result nobody reads them
                _write_frame(self.out_fd, {"kind": "event", "event": event})

    def finish(self, result: Result) -> None:
        """Write the RESULT, the last frame."""
        with self._lock:
            self.finished = True
            _write_frame(self.out_fd, {"kind": "result", "result": result})

    def context(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            _write_frame(self.out_fd, {"kind": "context", "request": request})
            reply: dict[str, Any] = _read_frame(self.in_fd)
        return reply


class _FrameReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def read(self) -> list[Any] | None:
        """Frames complete so far (reads once); None at end of file."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        return [json.loads(body) for body in take_frames(self.buffer)]


def _child(runtime: ForkHost, from_parent: int, to_parent: int) -> None:
    """In the child: wait for the message on the pipe, run it, write the RESULT, exit.

    Never returns. A spare child (forked ahead of time) waits here until its message comes;
    told to warm up first (a ``{"warm": true}`` frame, the node idle), it copies the pages it
    shares with the zygote, or the kernel it was forked from (kernelexec/kernel/prewarm.py),
    until its message comes. End of file
    on the pipe (the kernel is gone, or discarded the spare) makes it exit.
    """
    code = 0
    try:
        _REAPER.close_inherited_pipes()  # the lingering children's: they must see EOF
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        # as a message's own fork would have it, wherever this child was forked (an idle
        # kernel ignores SIGINT, and an ignored signal stays ignored across exec)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # fork_ahead blocked it
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        channel = PipeChannel(to_parent, from_parent)
        runtime.become_child(channel)
        try:
            order = _read_frame(from_parent)
            if order.get(_WARM):
                if enabled():
                    copy_shared_pages(from_parent)
                order = _read_frame(from_parent)
        except EOFError:
            os._exit(0)
        channel.finish(runtime.run_here(order["msg"], order["req_id"], 0.0, order.get(blobs.TABLE)))
        _wait_for_close(from_parent)
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _wait_for_close(fd: int) -> None:
    """Block until the parent closes the pipe (LINGER after the result) or dies."""
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


#: The frame that tells a spare child to copy its pages while it waits (the kernel only
#: writes it; a message travels inside an order's "msg", never at its top level).
_WARM = "warm"


class _Spare:
    """A child forked ahead of time, blocked reading its message: no fork on the next path."""

    def __init__(self, pid: int, to_child: int, from_child: int) -> None:
        self.pid, self.to_child, self.from_child = pid, to_child, from_child
        self.warming = False

    def warm(self) -> bool:
        """Tell it to copy its pages while it waits; False if it is gone."""
        try:
            _write_frame(self.to_child, {_WARM: True})
        except OSError:  # EPIPE: it died
            return False
        self.warming = True
        return True

    def alive(self) -> bool:
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def discard(self) -> None:
        os.close(self.to_child)  # end of file: the child exits by itself
        os.close(self.from_child)
        _REAPER.reap(self.pid)


_SPARE: list[_Spare] = []
#: The zygote the children are cloned from (kernelexec/kernel/zygote.py), once started.
_ZYGOTE: list[Zygote] = []


def _fork_child(runtime: ForkHost) -> _Spare:
    """A child that waits for its message (see _child): cloned from the zygote, or forked
    from the kernel where there can be none. SIGINT is blocked meanwhile: an interrupt never
    leaves a half-made child, nor a zygote's answer unread."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        zygote = _zygote(runtime)  # before the pipes: it must not hold copies of them
        to_parent_r, to_parent_w = os.pipe()
        to_child_r, to_child_w = os.pipe()
        try:
            pid = _spawn(runtime, zygote, to_child_r, to_parent_w, (to_parent_r, to_child_w))
        except OSError:
            for fd in (to_parent_r, to_parent_w, to_child_r, to_child_w):
                os.close(fd)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(to_parent_w)
    os.close(to_child_r)
    return _Spare(pid, to_child_w, to_parent_r)


def _zygote(runtime: ForkHost) -> Zygote | None:
    """The zygote, started now if there is none (None where clone is not available)."""
    if not _ZYGOTE and can_clone_siblings():
        with contextlib.suppress(OSError):  # then the kernel forks its children itself
            child = functools.partial(_child, runtime)
            _ZYGOTE.append(Zygote.start(child, _REAPER.close_inherited_pipes))
    return _ZYGOTE[0] if _ZYGOTE else None


def _spawn(
    runtime: ForkHost, zygote: Zygote | None, from_parent: int, to_parent: int,
    kernel_ends: tuple[int, int],
) -> int:
    if zygote is not None:
        try:
            return zygote.fork(from_parent, to_parent)
        except (OSError, ValueError):  # gone, or no answer: forked from the kernel this once
            _discard_zygote()
    pid = fork_quietly()
    if pid == 0:
        for fd in kernel_ends:
            os.close(fd)
        _child(runtime, from_parent, to_parent)
    return pid


def _discard_zygote() -> None:
    while _ZYGOTE:
        zygote = _ZYGOTE.pop()
        zygote.close()
        _REAPER.reap(zygote.pid)


_KERNEL_COPY = BackgroundCopy()


def fork_ahead(runtime: ForkHost) -> None:
    """Fork the next message's child now, if there is none: while a message runs (run_in_child)
    or right after its answer went out (Runtime.after_answer), so that a message that follows
    at once finds its process forked. It only waits: on 2 cores, copying pages now would take
    the CPU the next message needs (prefork does that when the node is idle)."""
    if _SPARE:
        return
    _KERNEL_COPY.stop()
    with contextlib.suppress(OSError):  # no process to spare now: the message forks its own
        _SPARE.append(_fork_child(runtime))


def prefork(runtime: ForkHost) -> None:
    """The node is idle (op ``prefork``): the next message's child copies its pages while it
    waits (forked now if need be), and the kernel takes back its own pages in the background
    (kernelexec/kernel/prewarm.py)."""
    fork_ahead(runtime)
    if not _SPARE or not enabled() or _SPARE[-1].warming:
        return
    if not _SPARE[-1].warm():  # it died: one more try with a new one
        _SPARE.pop().discard()
        fork_ahead(runtime)
        if not _SPARE or not _SPARE[-1].warm():
            return
    _KERNEL_COPY.start()


def discard_spare() -> None:
    """Drop the spare child and the zygote (the code changed: they have the old code)."""
    while _SPARE:
        _SPARE.pop().discard()
    _discard_zygote()


def _take_child(runtime: ForkHost) -> _Spare:
    while _SPARE:
        spare = _SPARE.pop()
        if spare.alive():
            return spare
        spare.discard()
    return _fork_child(runtime)


def run_in_child(
    runtime: ForkHost, msg: Any, req_id: str | None, timeout: float, table: Any = None
) -> Result:
    """Run ``msg`` in a fresh child (the spare, or one forked now), relay its events; the
    RESULT (never raises)."""
    started = time.perf_counter()
    _KERNEL_COPY.stop()  # the message goes first
    child = _take_child(runtime)
    pid = child.pid
    answered = False
    try:
        try:
            _write_frame(child.to_child, {"msg": msg, "req_id": req_id, blobs.TABLE: table})
        except OSError:
            return _failed(runtime, req_id, started, _died(pid))
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        fork_ahead(runtime)  # the next message's child, while this one runs on another core
        result, answered = _parent(
            runtime, pid, child.from_child, child.to_child, req_id, timeout, started
        )
        return result
    finally:
        os.close(child.from_child)
        if pid in _REAPED:  # it died by itself and _died() reaped it: its pid may be reused
            _REAPED.discard(pid)
            os.close(child.to_child)
        elif answered:  # killed LINGER later, off the message's path
            _REAPER.reap(pid, kill_at=time.monotonic() + LINGER, close_fd=child.to_child)
        else:  # timed out or broke: at once
            os.close(child.to_child)
            kill_group(pid)
            _REAPER.reap(pid)


def _parent(
    runtime: ForkHost, pid: int, from_child: int, to_child: int, req_id: str | None,
    timeout: float, started: float,
) -> tuple[Result, bool]:
    """The child's RESULT and True, or a failure RESULT and False (timeout, death)."""
    deadline = started + timeout if timeout > 0 else None
    reader = _FrameReader(from_child)
    try:
        while True:
            wait = None if deadline is None else deadline - time.perf_counter()
            if wait is not None and wait <= 0:
                return _failed(runtime, req_id, started, _timeout(timeout)), False
            ready, _, _ = select.select([from_child], [], [], wait)
            if not ready:
                continue
            frames = reader.read()
            if frames is None:
                return _failed(runtime, req_id, started, _died(pid)), False
            for frame in frames:
                result = _handle_frame(runtime, frame, to_child)
                if result is not None:
                    return result, True
    except KeyboardInterrupt:
        runtime.note_interrupted()
        message = "interrupted: the message ran longer than the worker allowed"
        return _failed(runtime, req_id, started, _timeout_error(message)), False


def _handle_frame(runtime: ForkHost, frame: dict[str, Any], to_child: int) -> Result | None:
    kind = frame.get("kind")
    if kind == "event":
        runtime.channel.event(frame["event"])
    elif kind == "context":
        try:
            reply = runtime.channel.context(frame["request"])
        except Exception as exc:  # the child gets the error, the parent goes on
            reply = {"value": None, "error": f"{type(exc).__name__}: {exc}"}
        _write_frame(to_child, reply)
    elif kind == "result":
        result: Result = frame["result"]
        return result
    return None


def _timeout_error(message: str) -> ErrorObject:
    return ExecutionTimeoutError(message, type_name="TimeoutError").to_dict()


def _timeout(timeout: float) -> ErrorObject:
    return _timeout_error(f"the code ran longer than its timeout of {timeout:g} s and was stopped")


def _died(pid: int) -> ErrorObject:
    status = wait_status(pid)
    _REAPED.add(pid)
    if status is not None and os.WIFSIGNALED(status):
        how = f"was killed by signal {os.WTERMSIG(status)}"
    elif status is not None and os.WIFEXITED(status):
        how = f"exited with code {os.WEXITSTATUS(status)}"
    else:
        how = "ended"
    message = f"the process running the message (pid {pid}) {how} before giving a result"
    return KernelDiedError(message, type_name="ProcessExited").to_dict()


def _failed(
    runtime: ForkHost, req_id: str | None, started: float, error: ErrorObject
) -> Result:
    if req_id is not None:
        blobs.remove_request_blobs(req_id, directory=runtime.blob_dir, pid=runtime.pid)
    exec_ms = (time.perf_counter() - started) * 1000.0
    return failed_result(req_id, error, outputs=runtime.outputs, exec_ms=exec_ms)


_REAPER = Reaper()
#: Children already reaped on the message's path (never signal or wait for them again).
_REAPED: set[int] = set()
