"""The bridge protocol over a socket the Node-RED node handed the bridge at its start.

A bridge that Node-RED starts itself (``kernelexec serve --node-fd 3``) inherits one end of a
Unix socket pair as fd 3 (Node's ``stdio: [..., "pipe"]``). The node speaks the same protocol
over it as over the WebSocket (docs/protocol.md): the same frames, a message being one JSON
frame or an array of frames, each message prefixed by its length (4 bytes, big-endian). The
socket is the credential: only the two processes hold it, so there is no token and no Host
header to check, and no WebSocket framing, masking or HTTP upgrade to pay for (most of the
bridge's own time per message under Tornado's WebSocket, docs/performance.md).

The WebSocket endpoint stays for every other client (a bridge started by hand, `kernelexec
attach`, /metrics); the node uses it when it was given a bridge URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from ..kernel.framing import framed, take_frames
from .bridge import Bridge
from .session import ClientSession

__all__ = ["PipeConnection", "serve_inherited_socket"]

log = logging.getLogger("kernelexec.server")


class PipeConnection(asyncio.Protocol):
    """One node connection over an inherited socket: a :class:`ClientSession`'s transport."""

    #: the client is the Node-RED that started this bridge, on this machine (it may offer its
    #: answer socket: kernel/answers.py)
    started_by_client = True

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        #: The largest message the node may send (what the WebSocket handler allows).
        self.limit = 2 * bridge.options.max_frame_bytes
        self.session: ClientSession | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.session = ClientSession(self.bridge, self)
        self.bridge.sessions.add(self.session)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            messages = take_frames(self._buffer, self.limit)
        except ValueError as exc:
            log.warning("Node connection: %s; closing", exc)
            messages = []
            self.close()
        for message in messages:
            if self.session is not None:
                self.session.handle(message)

    def connection_lost(self, exc: Exception | None) -> None:
        session, self.session = self.session, None
        if session is not None and session.ended is None:
            reason = "the node's connection closed"
            session.ended = reason
            self.bridge.spawn(session.end(reason))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- the ClientSession's Transport ------------------------------------------------------------
    def write_message(self, message: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(framed(message))

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve_inherited_socket(bridge: Bridge, fd: int) -> PipeConnection:
    """Serve the protocol on the inherited socket ``fd`` (kept out of the kernels)."""
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        msg = f"--node-fd {fd} is not a Unix stream socket (family {sock.family}, type {sock.type})"
        raise ValueError(msg)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    _, connection = await loop.connect_accepted_socket(lambda: PipeConnection(bridge), sock)
    return connection
