"""The frames one connection sends: JSON encoding, the client's size limit, batching.

A frame that cannot be encoded, or that is larger than the client takes (max_frame_bytes),
is replaced by an error frame or log frame that reports it.

Batching (protocol 1.1): once a client's hello says 1.1 or later, the frames a session
produces in one event-loop turn leave as one WebSocket message (an array; a lone frame stays
an object), flushed by ``loop.call_soon``: one send syscall per turn instead of one per frame.
Order is kept, since every frame of the session goes through the same queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ErrorObject
from ..protocol import BLOB_TABLE
from .executions import error_result
from .frames import dumps, error_object, frame_ids

__all__ = ["FLUSH_FRAMES", "Outbox", "Transport"]

log = logging.getLogger("kernelexec.server")

#: Queued frames that make the session write at once rather than at the end of the turn
#: (the peer can start on the first ones while the bridge still produces the rest).
FLUSH_FRAMES = 256


class Transport(Protocol):
    """The connection a session writes to (the WebSocket handler)."""

    def write_message(self, message: bytes) -> Any: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def _consume(future: Any) -> None:
    """Retrieve a write future's exception (a closed peer) so asyncio does not log it."""
    if not future.cancelled():
        future.exception()


class Outbox:
    """Writes one connection's frames to its transport, in order.

    ``limit`` is the largest message the client takes (UTF-8 bytes). ``refuse_context`` is
    called with a ``context_request``'s ``ctx_id`` and the reason when that request is too
    large to send (the code waiting for it gets the error instead).
    """

    def __init__(
        self, transport: Transport, limit: int, refuse_context: Callable[[str, str], None]
    ) -> None:
        self.transport = transport
        self._limit = limit
        self._refuse_context = refuse_context
        #: The client reads arrays of frames (protocol >= 1.1): frames are queued per turn.
        self.batch = False
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    def send(self, frame: dict[str, Any]) -> None:
        """Encode ``frame`` and write it now, or queue it until the end of the turn."""
        try:
            data = dumps(frame)
        except (TypeError, ValueError) as exc:
            data = dumps(self._unencodable(frame, exc))
        if len(data) > self._limit:
            checked = self._within_limit(frame, data)
            if checked is None:
                return
            data = checked
        if not self.batch:
            self._write(data)
            return
        out = self._out
        out.append(data)
        if len(out) >= FLUSH_FRAMES:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued frames: as few messages as the size limit allows, in order."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        frames, self._out = self._out, []
        if len(frames) == 1:
            self._write(frames[0])
            return
        # Each frame is at most max_frame_bytes (_within_limit); so is each joined message.
        limit = self._limit
        batch: list[bytes] = []
        size = 2
        for data in frames:
            if batch and size + len(data) + 1 > limit:
                self._write_batch(batch)
                batch, size = [], 2
            batch.append(data)
            size += len(data) + 1
        if batch:
            self._write_batch(batch)

    def _write_batch(self, batch: list[bytes]) -> None:
        self._write(batch[0] if len(batch) == 1 else b"[" + b",".join(batch) + b"]")

    def _write(self, data: bytes) -> None:
        """Write UTF-8 JSON as a text message (tornado sends bytes as they are)."""
        try:
            future = self.transport.write_message(data)
        except Exception:  # WebSocketClosedError: the peer is gone
            return
        if future is not None:
            future.add_done_callback(_consume)

    def _unencodable(self, frame: dict[str, Any], exc: Exception) -> dict[str, Any]:
        _drop_blobs(frame)
        message = f"a {frame.get('type')} frame could not be encoded as JSON: {exc}"
        return self._instead(frame, error_object("CONVERSION_ERROR", message, type(exc).__name__))

    def _within_limit(self, frame: dict[str, Any], data: bytes) -> bytes | None:
        """A frame the client would refuse (too large) is replaced by a report of it: one
        node's huge output must not cost the connection, and with it every node's pool."""
        size = len(data)
        limit = self._limit
        if size <= limit:
            return data
        kind = frame.get("type")
        _drop_blobs(frame)
        message = (
            f"a {kind} frame of {size} bytes is larger than max_frame_bytes ({limit}); "
            "send big data as bytes (they travel as blob files) or send less"
        )
        log.warning("Node %s: %s", frame.get("node_id"), message)
        if kind == "context_request":  # the code gets the error instead of waiting
            self._refuse_context(str(frame.get("ctx_id")), message)
            return None
        if kind in ("send", "done", "status", "log"):  # to the log (and Catch, with req_id)
            report = {"type": "log", "node_id": frame.get("node_id"),
                      "req_id": frame_ids(frame)[0], "level": "error", "text": message}  # fmt: skip
            return dumps(report)
        return dumps(self._instead(frame, error_object("FRAME_TOO_LARGE", message)))

    @staticmethod
    def _instead(frame: dict[str, Any], error: ErrorObject) -> dict[str, Any]:
        """The frame that reports ``error`` in place of ``frame``."""
        req_id, node_id = frame_ids(frame)
        if frame.get("type") == "result":
            return error_result(str(node_id), str(req_id), error)
        return {"type": "error", "error": error, "req_id": req_id, "node_id": node_id}


def _drop_blobs(frame: dict[str, Any]) -> None:
    """The blob files of a frame that is replaced: nobody will read them (only names of the
    frame's own request are removed, see kernelexec.kernel.blobs.remove_table)."""
    table = frame.get(BLOB_TABLE)
    if table:
        from ..kernel import blobs

        req_id = frame.get("req_id")
        blobs.remove_table(table, req_id if isinstance(req_id, str) else None)
