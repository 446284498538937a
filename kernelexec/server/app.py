"""The bridge application (:func:`make_app`) and its life cycle (:class:`Server`).

Shutdown (:meth:`Server.stop`, on SIGTERM/SIGINT or when the parent process is gone):

1. stop accepting connections; new ``configure`` frames are refused;
2. answer every waiting and running message at once with a POOL_CLOSED result (it still
   reaches Node-RED);
3. close every pool at once: stop code runs, kernels go down (killed past a deadline);
4. close every WebSocket (1001, "bridge shutting down");
5. remove orphan blob files (``kernelexec.kernel.blobs.sweep_orphans``) of the dead kernels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tornado import httpserver, netutil, web

from .bridge import Bridge, sweep_blobs
from .handlers import NotFoundHandler, default_handlers
from .hosts import HostPolicy

__all__ = ["Server", "make_app"]

log = logging.getLogger("kernelexec.server")
access_log = logging.getLogger("kernelexec.server.access")


def _log_request(handler: web.RequestHandler) -> None:
    """Access log without the query string: ``?token=`` must never reach a log."""
    request = handler.request
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING
    access_log.log(
        level, "%d %s %s %.1fms", status, request.method, request.path,
        1000.0 * request.request_time(),
    )  # fmt: skip


def make_app(bridge: Bridge, token: str, hosts: HostPolicy | None = None) -> web.Application:
    """The tornado application of one bridge, protected by ``token``; it answers only the
    Host headers ``hosts`` allows (default: loopback names, any port)."""
    if not token:
        msg = "the bridge needs a non-empty token"
        raise ValueError(msg)
    options = bridge.options
    ping = options.ping_interval or None
    return web.Application(
        [*default_handlers, (r".*", NotFoundHandler)],
        kernelexec_bridge=bridge,
        kernelexec_token=token,
        kernelexec_hosts=hosts or HostPolicy("127.0.0.1"),
        # frames above max_frame_bytes get a FRAME_TOO_LARGE error frame from the session;
        # tornado drops the connection (1009) only beyond twice that, to bound memory.
        websocket_max_message_size=2 * options.max_frame_bytes,
        websocket_ping_interval=ping,
        websocket_ping_timeout=3 * ping if ping else None,
        log_function=_log_request,
    )


class Server:
    """One bridge listening on one address."""

    def __init__(
        self, *, token: str, host: str = "127.0.0.1", port: int = 0, bridge: Bridge | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.bridge = bridge or Bridge()
        self.hosts = HostPolicy(host, port)
        self.app = make_app(self.bridge, token, self.hosts)
        self._http: httpserver.HTTPServer | None = None
        self._stopping: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; ``self.port`` is the real port afterwards (``port=0`` picks a free one)."""
        sockets = netutil.bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self.hosts.port = self.port
        # tornado's default read buffer (100 MB) would drop the connection on a frame below
        # max_frame_bytes; allow what the WebSocket handler allows (2x, see make_app).
        limit = 2 * self.bridge.options.max_frame_bytes + (1 << 20)
        self._http = httpserver.HTTPServer(self.app, max_buffer_size=limit)
        self._http.add_sockets(sockets)
        sweep_blobs()
        log.info("Bridge listening on %s", self.url)

    def stop(self, reason: str = "the bridge is stopping") -> asyncio.Future[None]:
        """Shut down (idempotent): see the module docstring."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(reason))
        return asyncio.shield(self._stopping)

    async def _stop(self, reason: str) -> None:
        bridge = self.bridge
        bridge.closing = reason
        log.info("Bridge stopping: %s", reason)
        if self._http is not None:
            self._http.stop()
        sessions = list(bridge.sessions)
        for session in sessions:
            session.fail_inflight()
        await bridge.registry.close_all()
        await asyncio.gather(*(s.end(reason) for s in sessions), *bridge.tasks)
        for session in sessions:
            with contextlib.suppress(Exception):
                session.transport.close(1001, "bridge shutting down")
        if self._http is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._http.close_all_connections(), 2.0)
        sweep_blobs()
        log.info("Bridge stopped")
