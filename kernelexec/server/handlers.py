"""The bridge's HTTP and WebSocket handlers; ``default_handlers`` is what the app mounts.

GET /healthz   no token   {"status": "ok", "protocol_version"}; with the token also "pid",
                          "pools", "connections"
GET /metrics   token      Prometheus text (kernelexec.server.metrics)
GET /ws        token      the bridge protocol (kernelexec.server.session), same origin only
anything else             JSON 404

The three endpoints answer 403 to a Host header that is not the bridge's own address
(kernelexec.server.hosts: DNS rebinding), before they look at the token.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from tornado import web, websocket

from ..protocol import PROTOCOL_VERSION
from .auth import RedactedLogMixin, TokenAuthMixin, check_token
from .bridge import Bridge
from .hosts import HostPolicy
from .metrics import CONTENT_TYPE
from .session import ClientSession

__all__ = [
    "BridgeSocketHandler",
    "HealthHandler",
    "HostCheckMixin",
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


class HostCheckMixin(RedactedLogMixin):
    """Refuses (403) a request whose Host header is not the bridge's address, first thing."""

    def prepare(self) -> Any:
        policy: HostPolicy = self.settings["kernelexec_hosts"]
        host = self.request.headers.get("Host", "")
        if not policy.allows(host):
            raise web.HTTPError(403, policy.refusal(host))
        return super().prepare()


class BridgeHandler(RedactedLogMixin):
    @property
    def bridge(self) -> Bridge:
        bridge: Bridge = self.settings["kernelexec_bridge"]
        return bridge


class HealthHandler(HostCheckMixin, JSONErrorsMixin, BridgeHandler):
    """Liveness for supervisors: no token needed, and then nothing that identifies the bridge
    (its pid and counts only with the token)."""

    def get(self) -> None:
        bridge = self.bridge
        self.set_header("Cache-Control", "no-store")
        body: dict[str, Any] = {
            "status": "closing" if bridge.closing else "ok",
            "protocol_version": PROTOCOL_VERSION,
        }
        if check_token(self._given_token(), self.settings["kernelexec_token"]) is None:
            body.update(
                pid=os.getpid(), pools=len(bridge.registry), connections=len(bridge.sessions)
            )
        self.finish(body)

    def _given_token(self) -> str | None:
        scheme, _, value = self.request.headers.get("Authorization", "").strip().partition(" ")
        return value.strip() if scheme.lower() in ("token", "bearer") else None


class MetricsHandler(HostCheckMixin, TokenAuthMixin, JSONErrorsMixin, BridgeHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.bridge.metrics.render())


class BridgeSocketHandler(
    HostCheckMixin, TokenAuthMixin, JSONErrorsMixin, BridgeHandler, websocket.WebSocketHandler
):
    """One Node-RED runtime's connection: frames in, frames out, via a :class:`ClientSession`."""

    query_token = True
    session: ClientSession | None = None

    def check_origin(self, origin: str) -> bool:
        """Only the bridge's own origin (a browser page elsewhere must not drive kernels)."""
        parts = urlsplit(origin)
        same_host = parts.netloc.lower() == self.request.host.lower()
        return parts.scheme in ("http", "https") and same_host

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.session = ClientSession(self.bridge, self)
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
