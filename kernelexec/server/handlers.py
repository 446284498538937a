"""The bridge's HTTP and WebSocket handlers; ``default_handlers`` is what the app mounts.

GET /healthz   no token   {"status": "ok", "pid", "pools", "connections", "protocol_version"}
GET /metrics   token      Prometheus text (kernelexec.server.metrics)
GET /ws        token      the bridge protocol (kernelexec.server.session), same origin only
anything else             JSON 404
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from tornado import web, websocket

from ..protocol import PROTOCOL_VERSION
from .auth import RedactedLogMixin, TokenAuthMixin
from .bridge import Bridge
from .metrics import CONTENT_TYPE
from .session import Session

__all__ = [
    "BridgeSocketHandler",
    "HealthHandler",
    "JSONErrorsMixin",
    "MetricsHandler",
    "NotFoundHandler",
    "default_handlers",
]


class JSONErrorsMixin(web.RequestHandler):
    """Errors as JSON ``{"reason", "message"}`` (kernel_gateway's JSONErrorsMixin)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = ""
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'token realm="kernelexec"')
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"reason": self._reason, "message": message}))


class BridgeHandler(RedactedLogMixin):
    @property
    def bridge(self) -> Bridge:
        bridge: Bridge = self.settings["kernelexec_bridge"]
        return bridge


class HealthHandler(JSONErrorsMixin, BridgeHandler):
    """Liveness for supervisors: no token, nothing secret."""

    def get(self) -> None:
        bridge = self.bridge
        self.set_header("Cache-Control", "no-store")
        self.finish({
            "status": "closing" if bridge.closing else "ok",
            "pid": os.getpid(),
            "protocol_version": PROTOCOL_VERSION,
            "pools": len(bridge.registry),
            "connections": len(bridge.sessions),
        })  # fmt: skip


class MetricsHandler(TokenAuthMixin, JSONErrorsMixin, BridgeHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.bridge.metrics.render())


class BridgeSocketHandler(
    TokenAuthMixin, JSONErrorsMixin, BridgeHandler, websocket.WebSocketHandler
):
    """One Node-RED runtime's connection: frames in, frames out, via a :class:`Session`."""

    query_token = True
    session: Session | None = None

    def check_origin(self, origin: str) -> bool:
        """Only the bridge's own origin (a browser page elsewhere must not drive kernels)."""
        parts = urlsplit(origin)
        same_host = parts.netloc.lower() == self.request.host.lower()
        return parts.scheme in ("http", "https") and same_host

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.session = Session(self.bridge, self)
        self.bridge.sessions.add(self.session)

    def on_message(self, message: str | bytes) -> None:
        if self.session is not None:
            self.session.handle(message)

    def on_close(self) -> None:
        session, self.session = self.session, None
        if session is not None and session.ended is None:
            reason = f"the WebSocket connection closed (code {self.close_code})"
            session.ended = reason
            self.bridge.spawn(session.end(reason))


class NotFoundHandler(JSONErrorsMixin, RedactedLogMixin):
    def prepare(self) -> None:
        raise web.HTTPError(404, "no such endpoint: the bridge serves /healthz, /metrics and /ws")


default_handlers: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/healthz", HealthHandler),
    (r"/metrics", MetricsHandler),
    (r"/ws", BridgeSocketHandler),
]
