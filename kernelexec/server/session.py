"""The protocol state machine of one WebSocket connection (docs/protocol.md).

A :class:`Session` reads client frames (:func:`~kernelexec.server.frames.parse_frame`),
routes them to pools and writes server frames. Nothing a client sends can crash the session
or disturb another node's pool: every bad frame becomes an ``error`` frame.

States: *new* (only ``hello`` and ``ping`` accepted) -> *greeted* (everything) -> *ended*
(connection lost or bridge shutting down: frames are dropped, pools closed).

Every ``execute`` gets exactly one answer: a ``result`` frame, or an ``error`` frame carrying
its ``req_id`` when the frame itself could not be taken (malformed, unknown node, duplicate
req_id). Results the bridge makes itself (pool could not start, pool closed, shutdown) have
the same shape as the pool's.

Batching (protocol 1.1): a client message may be a JSON array of frames, handled in order.
Once a client's hello says 1.1 or later, the frames this session produces in one event-loop
turn leave as one WebSocket message (an array; a lone frame stays an object), flushed by
``loop.call_soon``: one send syscall per turn instead of one per frame. Order is kept, since
every frame of the session goes through the same queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from ..config import PoolConfig
from ..errors import ConfigError
from ..protocol import PROTOCOL_VERSION
from .bridge import Bridge, sweep_blobs
from .frames import (
    PROTOCOL_MAJOR,
    SERVER_FRAMES,
    FrameError,
    batching,
    check_frame,
    decode,
    describe,
    dumps,
    error_frame,
    error_object,
    frame_ids,
    major_version,
    peek_ids,
)
from .pools import RESULT_GRACE, PoolEntry

__all__ = ["Session", "Transport"]

log = logging.getLogger("kernelexec.server")

_BEFORE_HELLO = frozenset({"hello", "ping"})
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


def error_result(node_id: str, req_id: str, error: dict[str, Any]) -> dict[str, Any]:
    """A result frame for a message the pool never answered."""
    return {
        "type": "result",
        "node_id": node_id,
        "req_id": req_id,
        "outputs": [],
        "logs": [],
        "status": [],
        "stdout": "",
        "error": error,
        "done": True,
        "sent": 0,
        "timing": {"queued_ms": 0.0, "exec_ms": 0.0},
    }


def _exec_seconds(result: dict[str, Any]) -> float | None:
    timing = result.get("timing")
    value = timing.get("exec_ms") if isinstance(timing, dict) else result.get("exec_ms")
    return value / 1000.0 if isinstance(value, (int, float)) else None


class Session:
    """One connection's protocol state."""

    def __init__(self, bridge: Bridge, transport: Transport) -> None:
        self.bridge = bridge
        self.transport = transport
        self.greeted = False
        self.ended: str | None = None
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._contexts: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ctx_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fast_limit = bridge.options.max_frame_bytes // 4
        #: The largest message the client takes (UTF-8 bytes).
        self._limit = bridge.options.max_frame_bytes
        #: The client reads arrays of frames (protocol >= 1.1): frames are queued per turn.
        self._batch = False
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._routes: dict[str, Callable[[dict[str, Any]], None]] = {
            "hello": self._on_hello,
            "configure": self._on_configure,
            "execute": self._on_execute,
            "context_reply": self._on_context_reply,
            "close": self._on_close,
            "list_kernels": self._on_list_kernels,
            "ping": self._on_ping,
        }

    # -- output ------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Write one frame; silently dropped once the connection is gone."""
        if self.ended is not None and self.bridge.closing is None:
            return
        try:
            data = dumps(frame)
        except (TypeError, ValueError) as exc:
            data = dumps(self._unencodable(frame, exc))
        if len(data) > self._limit:
            checked = self._within_limit(frame, data)
            if checked is None:
                return
            data = checked
        if not self._batch:
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
        message = (
            f"a {kind} frame of {size} bytes is larger than max_frame_bytes ({limit}); "
            "send big data as bytes (they travel as blob files) or send less"
        )
        log.warning("Node %s: %s", frame.get("node_id"), message)
        if kind == "context_request":  # the code gets the error instead of waiting
            future = self._contexts.get(str(frame.get("ctx_id")))
            if future is not None and not future.done():
                future.set_result({"value": None, "error": message})
            return None
        if kind in ("send", "done", "status", "log"):  # to the log (and Catch, with req_id)
            report = {"type": "log", "node_id": frame.get("node_id"),
                      "req_id": frame_ids(frame)[0], "level": "error", "text": message}  # fmt: skip
            return dumps(report)
        return dumps(self._instead(frame, error_object("FRAME_TOO_LARGE", message)))

    @staticmethod
    def _instead(frame: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
        """The frame that reports ``error`` in place of ``frame``."""
        req_id, node_id = frame_ids(frame)
        if frame.get("type") == "result":
            return error_result(str(node_id), str(req_id), error)
        return {"type": "error", "error": error, "req_id": req_id, "node_id": node_id}

    def send_event(self, node_id: str, event: dict[str, Any]) -> None:
        """PoolHooks.on_event: forward a send/done/status/log event with its node id."""
        if event.get("type") not in SERVER_FRAMES:
            kind = event.get("type")
            log.warning("Dropped an event of unknown type %r from node %s", kind, node_id)
            return
        event["node_id"] = node_id
        self.send(event)

    # -- input -------------------------------------------------------------------------

    def handle(self, text: str | bytes) -> None:
        """Handle one client message (a frame, or an array of frames in order); never raises."""
        if self.ended is not None:
            return
        try:
            if len(text) > self._fast_limit:
                self._check_size(text)
            data = decode(text)
        except FrameError as exc:
            self.send(exc.to_frame())
            return
        if isinstance(data, list):
            for item in data:
                if self.ended is not None:
                    return
                self._handle_frame(item)
        else:
            self._handle_frame(data)

    def _handle_frame(self, data: Any) -> None:
        """Handle one decoded client frame; never raises."""
        try:
            frame = check_frame(data)
            if not self.greeted and frame["type"] not in _BEFORE_HELLO:
                msg = f"{frame['type']} before hello: send hello first (see docs/protocol.md)"
                req_id, node_id = frame_ids(frame)
                raise FrameError(msg, req_id=req_id, node_id=node_id)
            self._routes[frame["type"]](frame)
        except FrameError as exc:
            self.send(exc.to_frame())
        except Exception as exc:
            log.exception("Bug while handling a frame")
            self.send(error_frame("INTERNAL", f"the bridge failed on this frame: {exc!r}"))

    def _check_size(self, text: str | bytes) -> None:
        size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        limit = self.bridge.options.max_frame_bytes
        if size > limit:
            msg = (
                f"frame of {size} bytes is larger than max_frame_bytes ({limit}); "
                "send big payloads as blobs"
            )
            req_id, node_id = peek_ids(text)
            raise FrameError(msg, "FRAME_TOO_LARGE", req_id=req_id, node_id=node_id)

    def _on_hello(self, frame: dict[str, Any]) -> None:
        version = frame["protocol_version"]
        major = major_version(version)
        if major is None:
            expected = f"MAJOR.MINOR like {PROTOCOL_VERSION!r}"
            msg = f"hello: protocol_version {describe(version)} is not {expected}"
            raise FrameError(msg)
        if major != PROTOCOL_MAJOR:
            msg = (
                f"the client speaks protocol {version} but this bridge speaks {PROTOCOL_VERSION}: "
                "install the same major version of the kernelexec Python package and of the "
                "Node-RED package"
            )
            self.send(error_frame("VERSION_MISMATCH", msg))
            reason = f"protocol version mismatch: bridge speaks {PROTOCOL_VERSION}"
            self.transport.close(1002, reason)
            return
        self.greeted = True
        log.info("Connection from %.80s, protocol %.20s", frame["client"], version)
        self.flush()
        self.send({
            "type": "welcome",
            "protocol_version": PROTOCOL_VERSION,
            "server": self.bridge.server,
            "pid": os.getpid(),
            "blob_dir": self.bridge.blob_dir,
        })  # fmt: skip
        self.flush()  # the welcome goes alone: the client learns from it that arrays may come
        self._batch = batching(version)

    def _on_ping(self, frame: dict[str, Any]) -> None:
        self.send({"type": "pong", "id": frame["id"]})

    def _on_configure(self, frame: dict[str, Any]) -> None:
        node_id = frame["node_id"]
        if self.bridge.closing is not None:
            msg = f"the bridge is shutting down ({self.bridge.closing}); no new pools"
            raise FrameError(msg, "POOL_CLOSED", node_id=node_id)
        try:
            config = self._with_default_gateway(PoolConfig.from_dict(node_id, frame["config"]))
        except ConfigError as exc:
            self._refuse_config(node_id, exc.to_dict())
            return
        self.bridge.registry.configure(config, self)

    def _with_default_gateway(self, config: PoolConfig) -> PoolConfig:
        """``serve --gateway-url``: pools with no gateway of their own run on the bridge's."""
        options = self.bridge.options
        if not options.gateway_url or config.env.gateway_url or config.env.is_local_only:
            return config  # a node with its own gateway, or a local environment, keeps it
        env = dataclasses.replace(
            config.env, gateway_url=options.gateway_url, gateway_token=options.gateway_token
        )
        return config.replace(env=env)

    def _refuse_config(self, node_id: str, error: dict[str, Any]) -> None:
        """A bad config replaces the node's pool by a failed one: its messages get the error."""
        self.bridge.registry.configure_failed(node_id, self, error)

    def _own_entry(self, frame: dict[str, Any]) -> PoolEntry:
        node_id = frame["node_id"]
        entry = self.bridge.registry.get(node_id)
        if entry is None or entry.owner is not self:
            where = "this connection" if entry is None else "this connection (another one owns it)"
            msg = f"node {describe(node_id)} has no pool on {where}; send configure first"
            raise FrameError(msg, "NOT_CONFIGURED", req_id=frame_ids(frame)[0], node_id=node_id)
        return entry

    # -- execute -----------------------------------------------------------------------

    def _on_execute(self, frame: dict[str, Any]) -> None:
        entry = self._own_entry(frame)
        req_id = frame["req_id"]
        if req_id in self._inflight:
            msg = f"req_id {describe(req_id)} is still running here; req_ids must be unique"
            raise FrameError(msg, req_id=req_id, node_id=entry.node_id)
        future = self._submit_now(entry, req_id, frame["msg"])
        if future is None:  # the pool is not ready yet, or needs its coroutine (keep_order)
            future = asyncio.ensure_future(self._execute(entry, req_id, frame["msg"]))
        else:
            future.add_done_callback(functools.partial(self._answered, entry, req_id))
        self._inflight[req_id] = future
        entry.running.add(future)

    def _submit_now(
        self, entry: PoolEntry, req_id: str, msg: dict[str, Any]
    ) -> asyncio.Future[Any] | None:
        """The hot path: hand the message to a ready pool without a task of its own (the
        result future's done callback answers). None when :meth:`_execute` must do it."""
        pool = entry.pool
        submit_nowait = getattr(pool, "submit_nowait", None)
        if submit_nowait is None or not entry.settled.is_set() or entry.failure is not None:
            return None
        try:
            future: asyncio.Future[Any] | None = submit_nowait(req_id, msg)
        except Exception as exc:  # answered as INTERNAL by _answered, like _execute does
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        if future is not None:
            entry.load_changed()
        return future

    def _answered(self, entry: PoolEntry, req_id: str, future: asyncio.Future[Any]) -> None:
        """Done callback of a :meth:`_submit_now` future: the same answers as :meth:`_execute`
        (cancelled: POOL_CLOSED; an exception: INTERNAL)."""
        if future.cancelled():
            result = error_result(entry.node_id, req_id, self._closed(entry))
        elif (exc := future.exception()) is not None:
            log.error("Bug while running req %s of node %s", req_id, entry.node_id, exc_info=exc)
            message = f"the bridge failed on this message: {exc!r}"
            error = error_object("INTERNAL", message, type(exc).__name__)
            result = error_result(entry.node_id, req_id, error)
        else:
            result = future.result()
        self._finish(entry, req_id, result)

    async def _execute(self, entry: PoolEntry, req_id: str, msg: dict[str, Any]) -> None:
        try:
            result = await self._submit(entry, req_id, msg)
        except asyncio.CancelledError:
            self._finish(entry, req_id, error_result(entry.node_id, req_id, self._closed(entry)))
            raise
        except Exception as exc:
            log.exception("Bug while running req %s of node %s", req_id, entry.node_id)
            message = f"the bridge failed on this message: {exc!r}"
            error = error_object("INTERNAL", message, type(exc).__name__)
            result = error_result(entry.node_id, req_id, error)
        self._finish(entry, req_id, result)

    async def _submit(self, entry: PoolEntry, req_id: str, msg: dict[str, Any]) -> dict[str, Any]:
        if not entry.settled.is_set():
            if entry.waiting >= entry.config.queue_limit:
                message = (
                    f"node {entry.node_id}: {entry.waiting} messages already wait for the pool "
                    "to start (queue_limit); the message was refused"
                )
                return error_result(entry.node_id, req_id, error_object("QUEUE_FULL", message))
            entry.waiting += 1
            try:
                await entry.settled.wait()
            finally:
                entry.waiting -= 1
        pool = entry.pool
        if pool is None or entry.failure is not None:
            return error_result(entry.node_id, req_id, entry.failure or self._closed(entry))
        entry.load_changed()
        return await pool.submit(req_id, msg)

    def _finish(self, entry: PoolEntry, req_id: str, result: dict[str, Any]) -> None:
        task = self._inflight.pop(req_id, None)
        if task is not None:
            entry.running.discard(task)
        result["type"] = "result"
        result["node_id"] = entry.node_id
        result["req_id"] = req_id
        seconds = _exec_seconds(result)
        if seconds is not None and entry.latency is not None:
            entry.latency.observe(seconds)
        self.send(result)
        entry.load_changed()

    def _closed(self, entry: PoolEntry) -> dict[str, Any]:
        reason = self.bridge.closing or self.ended or "the node closed it"
        message = f"node {entry.node_id} was closed ({reason}); the message did not finish"
        return error_object("POOL_CLOSED", message, "PoolClosedError")

    # -- close, list_kernels -----------------------------------------------------------

    def _on_close(self, frame: dict[str, Any]) -> None:
        entry = self._own_entry(frame)
        self._spawn(self._close_entry(entry, removed=frame.get("removed") is True))

    async def _close_entry(self, entry: PoolEntry, *, removed: bool = False) -> None:
        await self.bridge.registry.remove(entry)
        if removed:  # the node was deleted: its working directory goes with it
            from ..envs import remove_workdir

            await asyncio.to_thread(remove_workdir, entry.node_id, entry.config.workdir)
        self.send({"type": "closed", "node_id": entry.node_id})

    def _on_list_kernels(self, frame: dict[str, Any]) -> None:
        node_id = frame["node_id"]
        kernels: list[dict[str, Any]] = []
        for entry in self.bridge.registry:
            if entry.pool is None or entry.config.mode != "hot":
                continue
            if node_id is None or entry.node_id == node_id:
                kernels.extend({"node_id": entry.node_id, **k} for k in entry.pool.kernels())
        self.send({"type": "kernels", "kernels": kernels})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- context -----------------------------------------------------------------------

    async def ask_context(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """PoolHooks.on_context: ask Node-RED, wait for context_reply (with a deadline)."""
        what = f"{request.get('op')} {request.get('scope')} context key {request.get('key')!r}"
        if self.ended is not None:
            return {"value": None, "error": f"cannot {what}: {self.ended}"}
        ctx_id = f"c{next(self._ctx_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._contexts[ctx_id] = future
        self.send({
            "type": "context_request",
            "node_id": node_id,
            "ctx_id": ctx_id,
            "scope": request.get("scope"),
            "op": request.get("op"),
            "key": request.get("key"),
            "value": request.get("value"),
        })  # fmt: skip
        timeout = self.bridge.options.context_timeout
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            error = f"Node-RED did not answer ({what}) within {timeout:g} s; is the flow deployed?"
            return {"value": None, "error": error}
        finally:
            self._contexts.pop(ctx_id, None)

    def _on_context_reply(self, frame: dict[str, Any]) -> None:
        future = self._contexts.get(frame["ctx_id"])
        if future is None or future.done():
            msg = f"context_reply for unknown or expired ctx_id {describe(frame['ctx_id'])}"
            raise FrameError(msg)
        error = frame["error"]
        future.set_result({"value": frame["value"], "error": None if error is None else str(error)})

    # -- end ---------------------------------------------------------------------------

    def fail_inflight(self) -> None:
        """The bridge stops: every running message gets its POOL_CLOSED result now."""
        for task in list(self._inflight.values()):
            task.cancel()

    async def end(self, reason: str) -> None:
        """The connection is gone or the bridge stops: close this connection's pools."""
        if self.ended is None:
            self.ended = reason
        for future in self._contexts.values():
            if not future.done():
                future.set_result({"value": None, "error": f"context unavailable: {reason}"})
        await self.bridge.registry.remove_owned_by(self)
        running = list(self._inflight.values())
        if running:  # let results of the closed pools arrive, then fail what is left
            _, pending = await asyncio.wait(running, timeout=RESULT_GRACE)
            for task in pending:
                task.cancel()
        await asyncio.gather(*running, *self._tasks, return_exceptions=True)
        self.flush()  # the last results leave before the bridge closes the WebSocket
        self.bridge.sessions.discard(self)
        sweep_blobs()  # outputs nobody will read: their kernels are gone now
