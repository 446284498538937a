"""The kernel WebSocket (``/api/kernels/ID/channels``): one tornado.websocket client per kernel.

- the token goes in the ``Authorization`` header of the handshake (jupyter_server's
  GatewayKernelClient omits it there);
- the v1 subprotocol is preferred, the legacy JSON protocol spoken otherwise (:mod:`.wire`);
- TCP_NODELAY on our socket and TCP_QUICKACK after every read: without them a request
  costs ~44 ms (Nagle's algorithm on the server meets delayed ACKs here);
- the connection is pinged; when it drops, it is reconnected with the same session id (the
  server replays what it buffered meanwhile), and a message not sent is sent again.

Shell replies resolve the future of their request; IOPub messages and input requests go to
the callbacks of the owner (:class:`~.handle.GatewayKernel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from ...errors import GatewayError, KernelDiedError
from .settings import GatewaySettings
from .wire import WS_V1, Message, decode, encode

__all__ = ["KernelChannels"]

log = logging.getLogger(__package__)

_PROTOCOL_VERSION = "5.3"
_T = TypeVar("_T")


class KernelChannels:
    """The WebSocket of one gateway kernel: connect, send, replies, reconnection.

    ``on_iopub`` gets every IOPub message, ``on_input_request`` every stdin input_request
    (run as a task), ``on_lost`` the reason when a dropped connection could not be restored.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        headers: Callable[[], dict[str, str]],
        *,
        on_iopub: Callable[[Message], None],
        on_input_request: Callable[[Message], Awaitable[None]],
        on_lost: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self._headers = headers
        self._on_iopub = on_iopub
        self._on_input_request = on_input_request
        self._on_lost = on_lost
        self.session = uuid.uuid4().hex
        self.kernel_id: str | None = None
        self.ws: WebSocketClientConnection | None = None
        #: set while the owner shuts the kernel down: a dropped connection stays dropped
        self.closing = False
        #: why the kernel counts as dead (None while it lives)
        self.death: str | None = None
        #: the WebSocket subprotocol the server chose (None: the legacy protocol)
        self.subprotocol: str | None = None
        #: the content of the kernel's kernel_info_reply (versions), once it answered
        self.kernel_info: dict[str, Any] = {}
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnecting: asyncio.Task[Any] | None = None

    # -- connecting ------------------------------------------------------------------

    async def open(self, kernel_id: str | None, timeout: float) -> None:
        """Connect and wait until the kernel answers a kernel_info_request."""
        self.kernel_id = kernel_id
        deadline = time.monotonic() + timeout
        try:
            await self._connect(deadline)
        except GatewayError as exc:
            if time.monotonic() < deadline:
                raise
            msg = (
                f"gateway kernel {kernel_id} did not answer within {timeout:g} s ({exc}); "
                "the cluster may be busy: raise start_timeout in gateway_url"
            )
            raise GatewayError(msg) from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = (
                    f"gateway kernel {kernel_id} did not answer within {timeout:g} s; "
                    "the cluster may be busy: raise start_timeout in gateway_url"
                )
                raise GatewayError(msg)
            msg_id = await self.send("shell", "kernel_info_request", {})
            try:
                reply = await asyncio.wait_for(self.wait_reply(msg_id), min(left, 2.0))
                self.kernel_info = reply.content
                break
            except asyncio.TimeoutError:
                continue
            except KernelDiedError as exc:
                msg = f"gateway kernel {kernel_id} died while starting: {exc}"
                raise GatewayError(msg) from None
        self.death = None

    async def _connect(self, deadline: float) -> None:
        s = self.settings
        query = urlencode({"session_id": self.session})
        url = f"{s.ws_url}/api/kernels/{quote(str(self.kernel_id))}/channels?{query}"
        attempt = 0
        while True:
            timeout = max(0.1, min(deadline - time.monotonic(), max(s.request_timeout, 30.0)))
            request = HTTPRequest(
                url,
                headers=self._headers(),
                connect_timeout=min(timeout, s.request_timeout),
                request_timeout=timeout,
                validate_cert=s.validate_cert,
            )
            try:
                conn = await asyncio.wait_for(
                    websocket_connect(
                        request,
                        subprotocols=[WS_V1],
                        max_message_size=1 << 31,
                        ping_interval=s.ping_interval or None,
                        ping_timeout=s.ping_interval or None,
                    ),
                    timeout + 1,
                )
                break
            except HTTPClientError as exc:
                problem = self._refused(exc)
            except (OSError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            attempt += 1
            if attempt >= s.retries or time.monotonic() >= deadline:
                msg = f"cannot connect to kernel {self.kernel_id} at {s.url}: {problem}"
                raise GatewayError(msg)
            pause = min(s.backoff * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
        self.subprotocol = conn.selected_subprotocol
        self.ws = conn
        self._tune_socket(conn)
        self._reader = asyncio.ensure_future(self._read_loop(conn))

    def _refused(self, exc: HTTPClientError) -> str:
        """Raise for a handshake answer that will not change; else the problem to retry on."""
        if exc.code in (401, 403):
            msg = (
                f"gateway {self.settings.url} refused the kernel WebSocket (HTTP {exc.code}); "
                "check gateway_token"
            )
            raise GatewayError(msg) from None
        if exc.code == 404:
            msg = f"gateway {self.settings.url} does not know kernel {self.kernel_id} (culled?)"
            raise KernelDiedError(msg) from None
        return f"HTTP {exc.code}: {exc.message}"

    def _socket(self, conn: WebSocketClientConnection) -> socket.socket | None:
        stream = getattr(conn, "stream", None) or getattr(conn.protocol, "stream", None)
        sock = getattr(stream, "socket", None)
        return sock if isinstance(sock, socket.socket) else None

    def _tune_socket(self, conn: WebSocketClientConnection) -> None:
        sock = self._socket(conn)
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.settings.nodelay))
        self._quickack(sock)

    def _quickack(self, sock: socket.socket | None) -> None:
        option = getattr(socket, "TCP_QUICKACK", None)
        if sock is not None and option is not None and self.settings.quickack:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    async def _read_loop(self, conn: WebSocketClientConnection) -> None:
        sock = self._socket(conn)
        subprotocol = conn.selected_subprotocol
        try:
            while True:
                data = await conn.read_message()
                if data is None:
                    break
                self._quickack(sock)
                try:
                    self._dispatch(decode(data, subprotocol))
                except (ValueError, KeyError, struct.error) as exc:
                    log.warning("gateway kernel %s: undecodable message: %s", self.kernel_id, exc)
                except Exception:  # a callback's bug must not cost the connection
                    log.exception("gateway kernel %s: message handling failed", self.kernel_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gateway kernel %s: reader failed", self.kernel_id)
        finally:
            conn.close()  # idempotent; releases the connection object
        if conn is self.ws and not self.closing:
            reason = f"WebSocket closed ({conn.close_code} {conn.close_reason or ''})".strip()
            self._reconnecting = self.spawn(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        """The connection dropped while the kernel may live on: reconnect with the same
        session id (the server replays what it buffered meanwhile), else declare death."""
        log.warning("gateway kernel %s: %s; reconnecting", self.kernel_id, reason)
        self.ws = None
        try:
            await self._connect(time.monotonic() + self.settings.reconnect_timeout)
        except (GatewayError, KernelDiedError) as exc:
            self._on_lost(f"lost the connection to the gateway ({reason}; {exc})")

    async def wait_reconnected(self) -> None:
        """Let a reconnection under way finish (or give up) first."""
        reconnecting = self._reconnecting
        if reconnecting is not None and not reconnecting.done():  # a dropped connection
            await asyncio.wait({reconnecting}, timeout=self.settings.reconnect_timeout + 2)

    async def _await_reconnect(self, old: WebSocketClientConnection | None) -> bool:
        """Wait for the reader to replace a dropped connection; True when it did."""
        if self.closing:
            return False
        deadline = time.monotonic() + 1.0
        while self.ws is old and self.ws is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the reader has yet to notice the close
        task = self._reconnecting
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.settings.reconnect_timeout + 2)
        return self.ws is not None and self.ws is not old

    async def close(self) -> None:
        conn, self.ws = self.ws, None
        reader, self._reader = self._reader, None
        if conn is not None:
            conn.close()  # close handshake; the reader ends when the server answers
            if reader is not None:
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(reader), 1.0)
            stream = getattr(conn, "stream", None)
            if stream is not None and not stream.closed():
                stream.close()  # no answer: drop the socket rather than leak it
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(reader, 1.0)

    # -- messages --------------------------------------------------------------------

    def awaits_reply(self, msg_id: str) -> bool:
        """Whether ``msg_id`` is a shell request sent and not yet answered."""
        return msg_id in self._pending

    async def send(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        buffers: list[bytes] | None = None,
        parent: dict[str, Any] | None = None,
    ) -> str:
        """Send one message; its msg_id. A shell request's reply comes from wait_reply()."""
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "kernelexec",
            "session": self.session,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": _PROTOCOL_VERSION,
        }
        msg_id = str(header["msg_id"])
        if channel == "shell":
            self._pending[msg_id] = asyncio.get_running_loop().create_future()
        for attempt in (1, 2):
            conn = self.ws
            if conn is None and attempt == 1 and await self._await_reconnect(None):
                conn = self.ws
            if conn is None:
                self._pending.pop(msg_id, None)
                raise KernelDiedError(self.death or "not connected to the gateway kernel")
            data = encode(self.subprotocol, channel, header, content, buffers or [], parent or {})
            try:
                await asyncio.wait_for(
                    conn.write_message(data, binary=isinstance(data, bytes)),
                    30 + len(data) / 1e6,
                )
            except WebSocketClosedError:
                # not sent at all: once the reader has reconnected, send it again
                if attempt == 1 and await self._await_reconnect(conn):
                    continue
                self._pending.pop(msg_id, None)
                msg = f"lost the connection to gateway kernel {self.kernel_id}"
                raise KernelDiedError(self.death or msg) from None
            except (asyncio.TimeoutError, OSError) as exc:
                self._pending.pop(msg_id, None)
                msg = f"lost the connection to gateway kernel {self.kernel_id}: {exc!r}"
                raise KernelDiedError(msg) from None
            self._quickack(self._socket(conn))
            break
        return msg_id

    async def wait_reply(self, msg_id: str) -> Message:
        future = self._pending.get(msg_id)
        if future is None:
            raise KernelDiedError(self.death or "the request was dropped")
        try:
            return await future
        finally:
            self._pending.pop(msg_id, None)

    def _dispatch(self, msg: Message) -> None:
        if msg.channel == "shell":
            future = self._pending.get(msg.parent_id or "")
            if future is not None and not future.done():
                future.set_result(msg)
        elif msg.channel == "iopub":
            self._on_iopub(msg)
        elif msg.channel == "stdin" and msg.msg_type == "input_request":
            self.spawn(self._on_input_request(msg))

    def fail_pending(self, reason: str) -> None:
        """Every request still waiting for its reply fails with KernelDiedError(reason)."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(KernelDiedError(reason))

    # -- tasks -----------------------------------------------------------------------

    def spawn(self, coro: Awaitable[_T]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
