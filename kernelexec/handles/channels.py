"""The zmq channels of one local kernel incarnation: shell, IOPub and stdin, one reader each.

Plain ``zmq.asyncio`` sockets signed by the kernel manager's Session (incoming messages checked
and decoded by :mod:`.decoding`, ~6 times faster than the Session), with ONE reader task per
socket: JUPYTER-NOTES.md measured reader stalls when several tasks await the same channel. A
reply is matched to its request by ``parent_header.msg_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager

from ..kernel.decoding import decode

__all__ = ["Channels", "MessageHandler"]

log = logging.getLogger("kernelexec.kernel")

#: Called with every decoded message of a channel.
MessageHandler = Callable[[dict[str, Any]], None]
_RECONNECT_MS = 10


class Channels:
    """The shell, iopub and stdin sockets of one kernel incarnation, with their readers."""

    def __init__(
        self, km: AsyncKernelManager, *, on_iopub: MessageHandler, on_stdin: MessageHandler
    ) -> None:
        self.context = zmq.asyncio.Context.instance()
        self.session = km.session
        identity = self.session.bsession
        self.shell = self._socket(zmq.DEALER, identity)
        self.stdin = self._socket(zmq.DEALER, identity)
        #: Set once the stdin connection is up (see _wait_for_handshake).
        self.stdin_ready = asyncio.Event()
        stdin_monitor = self.stdin.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.iopub = self._socket(zmq.SUB, None, unbounded=True)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        for sock, channel in ((self.shell, "shell"), (self.stdin, "stdin"), (self.iopub, "iopub")):
            sock.connect(km._make_url(channel))
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        #: Set by the first IOPub message: the subscription is in place.
        self.iopub_seen = asyncio.Event()
        self.tasks = [
            asyncio.ensure_future(self._read(self.shell, self._on_shell)),
            asyncio.ensure_future(self._read(self.iopub, self._on_iopub(on_iopub))),
            asyncio.ensure_future(self._read(self.stdin, on_stdin)),
            asyncio.ensure_future(self._wait_for_handshake(stdin_monitor)),
        ]

    def _socket(
        self, kind: int, identity: bytes | None, *, unbounded: bool = False
    ) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        # The kernel binds its sockets while we connect: retry every 10 ms, not zmq's 100 ms
        # (each channel waited 1-3 retries, a few hundred ms of every kernel start).
        sock.reconnect_ivl = _RECONNECT_MS
        if unbounded:  # IOPub carries node.send(): zmq must never drop one at its HWM
            sock.rcvhwm = 0
        if identity is not None:
            sock.identity = identity
        return sock

    async def _wait_for_handshake(self, monitor: zmq.asyncio.Socket) -> None:
        """Set ``stdin_ready`` when the stdin connection's handshake is done.

        The kernel answers context requests over stdin with a ROUTER socket, which silently
        drops a message for a peer it does not know yet: an input_request sent before our
        stdin connection is up would be lost and the kernel would wait for its reply forever.
        Each channel connects (and retries) on its own, so the shell and IOPub being up says
        nothing about stdin (measured: 5 kernel starts in 20 had stdin up after them).
        """
        try:
            await monitor.recv_multipart()
            self.stdin_ready.set()
        finally:
            with contextlib.suppress(zmq.ZMQError):
                self.stdin.disable_monitor()
            monitor.close(linger=0)

    async def _read(self, sock: zmq.asyncio.Socket, handle: Any) -> None:
        while True:
            raw = await sock.recv_multipart(copy=False)
            try:
                msg = decode(self.session, raw)
            except Exception:  # a malformed or badly signed frame: drop it, keep reading
                log.warning("Dropped an undecodable kernel message", exc_info=True)
                continue
            handle(msg)

    def _on_iopub(self, handle: MessageHandler) -> MessageHandler:
        def first_then_handle(msg: dict[str, Any]) -> None:
            self.iopub_seen.set()
            handle(msg)

        return first_then_handle

    def _on_shell(self, msg: dict[str, Any]) -> None:
        future = self.pending.pop(msg["parent_header"].get("msg_id", ""), None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def send(self, sock: zmq.asyncio.Socket, msg: dict[str, Any]) -> None:
        await sock.send_multipart(self.session.serialize(msg))

    def fail_pending(self, error: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # nobody may await it any more: no "never retrieved" noise

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sock in (self.shell, self.stdin, self.iopub):
            sock.close(linger=0)
