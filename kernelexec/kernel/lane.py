"""The lane: a local kernel's ops down a pipe, straight into the kernel's own loop.

The Jupyter path carries each op as a ``kernelexec_request`` over zmq: the bridge's message
crosses zmq's I/O thread on both sides before the kernel's main thread sees it, and the reply
does the same back (most of an idle kernel's round trip, docs/performance.md). A local kernel
already has a pipe to the bridge for its RESULTs (kernelexec/kernel/resultpipe.py); the lane adds
one pipe the other way:

- the bridge writes ``{"lane": SEQ, "request": OP}`` (4-byte big-endian length + JSON, as
  the result pipe) into the **request pipe**, whose read end the kernel inherited at launch
  (its number is sent in the ``init`` op as ``request_fd``);
- the runtime reads it with ``loop.add_reader`` on the kernel's own asyncio loop, so the op
  runs on the kernel's main thread between shell messages, as a ``kernelexec_request`` would,
  with SIGINT raising KeyboardInterrupt while it runs (what ipykernel's pre/post handler hooks
  do around a shell message);
- a run op's RESULTs go down the result pipe as before, then the answer:
  ``{"lane": SEQ, "answer": ANSWER}`` (or ``{"lane": SEQ, "interrupted": true}``).

``init`` is a shell request (it hands the pipes over); every op after it (setup, run, code,
prefork, stop) takes the lane, so they stay in the order the worker sent them. Context
requests (stdin) and events (IOPub comm) stay Jupyter messages. The bridge keeps the read end
too: a request written while the kernel dies stays in the pipe, and the bridge empties it
before the next kernel starts (:meth:`RequestPipe.discard`), so no request is ever read by a
kernel it was not written for.

This module is imported by the kernel too (:class:`RequestReader`): standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Callable
from typing import Any

from .framing import F_SETPIPE_SZ, PIPE_SIZE, framed, take_frames

__all__ = ["RequestPipe", "RequestReader", "answer_frame", "request_frame"]

#: The key of a lane frame's sequence number (requests and answers).
SEQ = "lane"

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]


def _fast_dumps(body: Any) -> bytes | None:
    if _orjson is None:
        return None
    try:
        return _orjson.dumps(body)
    except (TypeError, ValueError):
        return None


def _loads(data: bytes) -> Any:
    return _orjson.loads(data) if _orjson is not None else json.loads(data)


def request_frame(seq: int, op: dict[str, Any]) -> bytes:
    """One request as it goes down the pipe (the bridge's values are JSON-safe already)."""
    body = {SEQ: seq, "request": op}
    data = _fast_dumps(body)
    if data is None:  # no orjson, a lone surrogate (U+FFFD then), NaN (null)...
        from .packing import wire_pack  # what the shell channel's messages are packed with

        data = wire_pack(body)
    return framed(data)


def answer_frame(seq: Any, answer: dict[str, Any] | None) -> dict[str, Any]:
    """The answer to request ``seq`` (None: interrupted before it had one)."""
    if answer is None:
        return {SEQ: seq, "interrupted": True}
    return {SEQ: seq, "answer": answer}


class RequestPipe:
    """Bridge side: the request pipe of one local kernel (kept across its restarts)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # pragma: no branch - Linux only
            import fcntl

            fcntl.fcntl(self.write_fd, F_SETPIPE_SZ, PIPE_SIZE)
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def send(self, frame: bytes) -> None:
        """Write the whole frame; wait (without blocking the loop) while the pipe is full."""
        view = memoryview(frame)
        while view:
            try:
                view = view[os.write(self.write_fd, view) :]
            except BlockingIOError:
                await self._writable()

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(self.write_fd, wake)
        try:
            await ready
        finally:
            loop.remove_writer(self.write_fd)

    def discard(self) -> None:
        """Empty the pipe: what a dead kernel did not read must not reach the next one."""
        while self.read_fd >= 0:
            try:
                if not os.read(self.read_fd, PIPE_SIZE):
                    return
            except OSError:  # EAGAIN: empty
                return

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = self.write_fd = -1


class RequestReader:
    """Kernel side: frames from the inherited read end, handled on the kernel's own loop."""

    def __init__(
        self, fd: int, loop: asyncio.AbstractEventLoop, handle: Callable[[dict[str, Any]], None]
    ) -> None:
        self.fd = fd
        self._loop = loop
        self._handle = handle
        self._buffer = bytearray()
        loop.add_reader(fd, self._readable)

    @classmethod
    def adopt(cls, fd: Any, handle: Callable[[dict[str, Any]], None]) -> RequestReader | None:
        """The reader of ``fd`` from the init op, if it is a pipe this process holds and the
        kernel runs an asyncio loop on this thread (ipykernel >= 6 does)."""
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 3:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
            os.set_inheritable(fd, False)  # not into subprocesses the user's code starts
            os.set_blocking(fd, False)
        except OSError:
            return None
        return cls(fd, loop, handle)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, PIPE_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the bridge is gone
            self.close()
            return
        self._buffer += chunk
        for frame in self._frames():
            self._handle(frame)

    def _frames(self) -> list[dict[str, Any]]:
        frames = []
        for body in take_frames(self._buffer):
            try:
                frame = _loads(body)
            except ValueError:  # only the bridge writes here: never, but never fatal either
                continue
            if isinstance(frame, dict):
                frames.append(frame)
        return frames

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
