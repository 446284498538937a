"""The protocol state machine of one WebSocket connection (docs/protocol.md).

A :class:`ClientSession` reads client frames (:func:`~kernelexec.server.frames.parse_frame`),
routes them to pools and writes server frames. Nothing a client sends can crash the session
or disturb another node's pool: every bad frame becomes an ``error`` frame.

States: *new* (only ``hello`` and ``ping`` accepted) -> *greeted* (everything) -> *ended*
(connection lost or bridge shutting down: frames are dropped, pools closed).

Every ``execute`` gets exactly one answer: a ``result`` frame
(:mod:`~kernelexec.server.executions`), or an ``error`` frame carrying its ``req_id`` when the
frame itself could not be taken (malformed, unknown node, duplicate req_id).

Batching (protocol 1.1): a client message may be a JSON array of frames, handled in order.
The frames the session sends go through its :class:`~kernelexec.server.outbox.Outbox`, which
batches them per event-loop turn once the client's hello says 1.1 or later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from ..config import PoolConfig
from ..errors import ConfigError, ErrorObject
from ..protocol import BLOB_TABLE, PROTOCOL_VERSION, ContextOp
from .bridge import Bridge, sweep_blobs
from .executions import Executions
from .frames import (
    PROTOCOL_MAJOR,
    SERVER_FRAMES,
    FrameError,
    batching,
    check_frame,
    decode,
    describe,
    error_frame,
    frame_ids,
    major_version,
    peek_ids,
)
from .outbox import Outbox, Transport
from .registry import RESULT_GRACE, PoolEntry

__all__ = ["ClientSession", "Transport"]

log = logging.getLogger("kernelexec.server")

_BEFORE_HELLO = frozenset({"hello", "ping"})
#: sun_path holds 108 bytes with its NUL
_MAX_SOCKET_PATH = 107


def _describe_request(request: dict[str, Any]) -> str:
    """What a context request asks, for error messages."""
    op, key = request.get("op"), request.get("key")
    if op == ContextOp.ENV:
        return f"env.get({key!r})"
    if op == ContextOp.LINKCALL:
        return f"link call to {key!r}"
    return f"{op} {request.get('scope')} context key {key!r}"


def _seconds(value: Any) -> float:
    """A non-negative number of seconds from a request field (anything else: 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return min(float(value), 86400.0)
    return 0.0


class ClientSession:
    """One connection's protocol state."""

    def __init__(self, bridge: Bridge, transport: Transport) -> None:
        self.bridge = bridge
        self.transport = transport
        self.greeted = False
        self.ended: str | None = None
        #: the node's answer socket, from its hello (kernel/answers.py)
        self.answers: dict[str, str] | None = None
        self._contexts: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ctx_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fast_limit = bridge.options.max_frame_bytes // 4
        self._outbox = Outbox(transport, bridge.options.max_frame_bytes, self._refuse_context)
        self._executions = Executions(self.send, self._closed_reason)
        self._routes: dict[str, Callable[[dict[str, Any]], None]] = {
            "hello": self._on_hello,
            "configure": self._on_configure,
            "execute": self._on_execute,
            "context_reply": self._on_context_reply,
            "close": self._on_close,
            "list_kernels": self._on_list_kernels,
            "inspect": self._on_inspect,
            "ping": self._on_ping,
        }

    # -- output ------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Write one frame; silently dropped once the connection is gone."""
        if self.ended is not None and self.bridge.closing is None:
            return
        self._outbox.send(frame)

    def flush(self) -> None:
        """Write the frames queued in this event-loop turn."""
        self._outbox.flush()

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
        self.answers = self._answer_offer(frame.get("answers"))
        self.greeted = True
        log.info("Connection from %.80s, protocol %.20s", frame["client"], version)
        self._check_client_version(str(frame["client"]))
        self.flush()
        self.send({
            "type": "welcome",
            "protocol_version": PROTOCOL_VERSION,
            "server": self.bridge.server,
            "pid": os.getpid(),
            "blob_dir": self.bridge.blob_dir,
        })  # fmt: skip
        self.flush()  # the welcome goes alone: the client learns from it that arrays may come
        self._outbox.batch = batching(version)

    def _answer_offer(self, offer: Any) -> dict[str, str] | None:
        """The hello's answer socket, taken only from the node that started this bridge (over
        the socket pair): a path its kernels connect to must be the node's own."""
        if offer is None or not getattr(self.transport, "started_by_client", False):
            return None
        path, token = offer.get("path"), offer.get("token")
        if (
            not isinstance(path, str)
            or not os.path.isabs(path)
            or len(path.encode()) > _MAX_SOCKET_PATH
            or not isinstance(token, str)
            or not 16 <= len(token) <= 256
        ):
            msg = (
                f"hello: answers {describe(offer)} is not {{path, token}} with an absolute "
                f"socket path of at most {_MAX_SOCKET_PATH} bytes and a token of 16-256 "
                "characters; leave it out to have every result sent by the bridge"
            )
            raise FrameError(msg)
        return {"path": path, "token": token}

    def _check_client_version(self, client: str) -> None:
        """The Node-RED package and this bridge come in pairs: say so when they differ.

        The node decides what to do (it rebuilds the environment it manages, or reports what
        to install); the bridge keeps serving, so that the node's error can reach the user.
        """
        name, _, theirs = client.partition("/")
        ours = self.bridge.server.partition("/")[2]
        if name != "node-red-kernelexec" or not theirs or theirs == ours or ours.startswith("0+"):
            return
        log.warning(
            "The Node-RED package is version %.40s but this bridge runs kernelexec %s: "
            "install the kernelexec bundled with the Node-RED package (the node does it for "
            "the environment it manages)",
            theirs,
            ours,
        )

    def _on_ping(self, frame: dict[str, Any]) -> None:
        self.send({"type": "pong", "id": frame["id"]})

    def _on_configure(self, frame: dict[str, Any]) -> None:
        node_id = frame["node_id"]
        if self.bridge.closing is not None:
            msg = f"the bridge is shutting down ({self.bridge.closing}); no new pools"
            raise FrameError(msg, "POOL_CLOSED", node_id=node_id)
        try:
            config = self._with_default_gateway(PoolConfig.from_dict(node_id, frame["config"]))
            if self.answers is not None:
                config = config.replace(answers=self.answers)
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

    def _refuse_config(self, node_id: str, error: ErrorObject) -> None:
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
        entry, table = self._own_entry(frame), frame.get(BLOB_TABLE) or None
        self._executions.start(entry, frame["req_id"], frame["msg"], table)

    def _closed_reason(self) -> str | None:
        """Why this connection's pools close: the bridge or the connection stopping."""
        return self.bridge.closing or self.ended

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

    def _on_inspect(self, frame: dict[str, Any]) -> None:
        from .editor import inspect

        entry = self._own_entry(frame)

        async def answer() -> None:
            try:
                self.send(await inspect(entry, frame))
            except FrameError as exc:
                self.send(exc.to_frame())

        self._spawn(answer())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- context -----------------------------------------------------------------------

    async def ask_context(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """PoolHooks.on_context: ask Node-RED, wait for context_reply (with a deadline)."""
        what = _describe_request(request)
        if self.ended is not None:
            return {"value": None, "error": f"cannot {what}: {self.ended}"}
        ctx_id = f"c{next(self._ctx_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._contexts[ctx_id] = future
        frame = {
            "type": "context_request",
            "node_id": node_id,
            "ctx_id": ctx_id,
            "scope": request.get("scope"),
            "op": request.get("op"),
            "key": request.get("key"),
            "value": request.get("value"),
        }
        for name in ("store", "timeout"):  # optional (protocol 1.2)
            if request.get(name) is not None:
                frame[name] = request[name]
        self.send(frame)
        timeout = self.bridge.options.context_timeout
        if request.get("op") == ContextOp.LINKCALL:  # answered within the call's own timeout
            timeout += _seconds(request.get("timeout"))
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

    def _refuse_context(self, ctx_id: str, error: str) -> None:
        """A context_request that could not be sent: the code gets ``error`` instead."""
        future = self._contexts.get(ctx_id)
        if future is not None and not future.done():
            future.set_result({"value": None, "error": error})

    # -- end ---------------------------------------------------------------------------

    def fail_inflight(self) -> None:
        """The bridge stops: every running message gets its POOL_CLOSED result now."""
        self._executions.cancel_all()

    async def end(self, reason: str) -> None:
        """The connection is gone or the bridge stops: close this connection's pools."""
        if self.ended is None:
            self.ended = reason
        for future in self._contexts.values():
            if not future.done():
                future.set_result({"value": None, "error": f"context unavailable: {reason}"})
        await self.bridge.registry.remove_owned_by(self)
        running = self._executions.running()
        if running:  # let results of the closed pools arrive, then fail what is left
            _, pending = await asyncio.wait(running, timeout=RESULT_GRACE)
            for task in pending:
                task.cancel()
        await asyncio.gather(*running, *self._tasks, return_exceptions=True)
        self.flush()  # the last results leave before the bridge closes the WebSocket
        self.bridge.sessions.discard(self)
        sweep_blobs()  # outputs nobody will read: their kernels are gone now
