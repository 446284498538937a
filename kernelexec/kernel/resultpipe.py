"""Exactly-once accounting: a local kernel streams each RESULT down a pipe as it finishes.

A batch runs up to 256 messages in one request. When the kernel dies in the middle (the code
called ``os._exit``, crashed, was killed), the reply never comes, and without more the bridge
cannot tell which messages ran. So a local kernel gets the write end of a pipe (inherited at
launch, its number sent in the ``init`` op) and the runtime writes, synchronously, before
anything else can happen:

- ``{"batch": first_req_id}`` when it takes a batch (nothing of it has run before);
- each message's RESULT the moment it is complete, before the next message starts.

A ``write()`` to a pipe is in the pipe once it returns, whatever happens to the writer next,
so after a death the bridge drains the pipe and knows: a message with a RESULT ran (its
result is delivered as usual); the first one without was running (it fails, and its error
says so); the ones after it never started (they run again on the fresh kernel). IOPub and
zmq offer no such guarantee: what the I/O thread had not sent yet dies with the process.

Cost on the hot path: one ``write()`` per message in the kernel, a ``read()`` per ready chunk
in the bridge, and the batch reply no longer carries (nor signs) the results.

Frames: 4-byte big-endian length + JSON, as kernelexec/kernel/coldfork.py. This module is imported
by the kernel too (the writer half): standard library and kernelexec.kernel only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from typing import Any, Protocol

from .framing import F_SETPIPE_SZ, PIPE_SIZE, framed, take_frames
from .lane import SEQ
from .results import Result

__all__ = ["ResultPipe", "ResultWriter"]


try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]


class ResultWriter:
    """Kernel side: frames to the inherited write end ``fd`` (blocking writes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        from .packing import ORJSON_OPTIONS, wire_pack

        self._slow = wire_pack  # lone surrogates, NaN...: the kernel's own packer
        self._options = ORJSON_OPTIONS
        self._default: Any = None
        if _orjson is not None:
            from jupyter_client.jsonutil import json_default

            self._default = json_default

    @classmethod
    def adopt(cls, fd: Any) -> ResultWriter | None:
        """The writer for ``fd`` from the init op, if it is a pipe this process holds."""
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 3:
            return None
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
            os.set_inheritable(fd, False)  # not into subprocesses the user's code starts
        except OSError:
            return None
        return cls(fd)

    def batch(self, first_req_id: Any, *, direct: bool = False) -> None:
        """A batch begins (``direct``: a message the node wrote to the answer socket)."""
        self._write({"batch": first_req_id, "direct": True} if direct else {"batch": first_req_id})

    def result(self, result: Result) -> None:
        self._write(result)

    def answer(self, frame: dict[str, Any]) -> None:
        """The answer to a lane request (kernelexec/kernel/lane.py), after its RESULTs."""
        self._write(frame)

    def encode(self, obj: Any) -> bytes:
        """``obj`` as the pipe's JSON (the answer socket's too: kernel/answers.py)."""
        if _orjson is not None:
            try:  # ~1 us; wire_pack imports on every call (~8 us)
                return _orjson.dumps(obj, default=self._default, option=self._options)
            except (TypeError, ValueError):
                pass
        return self._slow(obj)

    def _write(self, obj: Any) -> None:
        frame = framed(self.encode(obj))
        written = os.write(self.fd, frame)
        if written < len(frame):  # a frame larger than the pipe's free space
            view = memoryview(frame)[written:]
            while view:
                view = view[os.write(self.fd, view) :]


def _loads(data: bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return json.loads(data)


class DirectSink(Protocol):
    """Who accounts for the messages the node wrote to the kernel itself
    (kernelexec/directruns.py): the batch frame marked direct begins one, its RESULT ends it."""

    def started(self, req_id: str) -> None: ...

    def finished(self, result: dict[str, Any]) -> bool:
        """True when ``result`` is the one of the direct run (it is taken)."""
        ...


class ResultPipe:
    """Bridge side: the pipe of one local kernel, read as data arrives.

    :meth:`begin` names the batch being run; frames for other req_ids (a previous kernel's
    leftovers) are dropped. :meth:`drain` reads what is left without waiting (after the reply,
    or after the kernel died: everything the kernel wrote is in the pipe by then).
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self.write_fd, True)  # the kernel's end: it waits on a full pipe
        with contextlib.suppress(OSError):  # pragma: no branch - Linux only
            import fcntl

            fcntl.fcntl(self.read_fd, F_SETPIPE_SZ, PIPE_SIZE)
        self._buffer = bytearray()
        self._wanted: set[str] = set()
        self.results: dict[str, dict[str, Any]] = {}
        self.batch_started = False
        self._reading = False
        #: Lane requests waiting for their answer frame, by sequence number.
        self.answer_waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: the runs the node sent the kernel itself (kernel/answers.py), when it may
        self.direct: DirectSink | None = None

    def attach(self) -> None:
        """Read whenever data arrives (the kernel must never wait long on a full pipe)."""
        import asyncio

        if not self._reading and self.read_fd >= 0:
            asyncio.get_running_loop().add_reader(self.read_fd, self.drain)
            self._reading = True

    def begin(self, req_ids: list[str]) -> None:
        self._wanted = set(req_ids)
        self.results = {}
        self.batch_started = False

    def end(self) -> None:
        """After a batch: forget it; a partial frame of a dead kernel goes too."""
        self._wanted = set()
        self.results = {}
        self.batch_started = False

    def reset(self) -> None:
        """Before a fresh kernel writes: no half frame of the old one may stay in front."""
        self._buffer.clear()

    def drain(self) -> None:
        """Read all that is in the pipe now; keep the frames of the current batch."""
        while self.read_fd >= 0:
            try:
                chunk = os.read(self.read_fd, PIPE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not chunk:
                break
            self._buffer += chunk
            self._frames()

    def _frames(self) -> None:
        for body in take_frames(self._buffer):
            try:
                frame = _loads(body)
            except ValueError:  # not our framing (a stray writer): start clean
                self._buffer.clear()
                return
            self._take(frame)

    def _take(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            return
        if SEQ in frame:
            self._answered(frame)
            return
        if "batch" in frame:
            if frame.get("direct") is True and isinstance(frame["batch"], str):
                if self.direct is not None:
                    self.direct.started(frame["batch"])
                return
            self.batch_started = self.batch_started or frame["batch"] in self._wanted
            return
        if self.direct is not None and self.direct.finished(frame):
            return
        req_id = frame.get("req_id")
        if isinstance(req_id, str) and req_id in self._wanted:
            self.results.setdefault(req_id, frame)

    def _answered(self, frame: dict[str, Any]) -> None:
        """A lane answer: its waiter gets the reply a ``kernelexec_request`` would have."""
        waiter = self.answer_waiters.get(frame[SEQ]) if isinstance(frame[SEQ], int) else None
        if waiter is None or waiter.done():  # not ours (a previous kernel's): dropped
            return
        reply: dict[str, Any]
        if frame.get("interrupted") is True:
            reply = {"status": "error", "ename": "KeyboardInterrupt", "evalue": "interrupted"}
        else:
            answer = frame.get("answer")
            reply = {"status": "ok", "payload": [{"source": "kernelexec", "data": answer}]}
        waiter.set_result(reply)

    def close(self) -> None:
        if self._reading:
            import asyncio

            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.read_fd)
            self._reading = False
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = self.write_fd = -1
