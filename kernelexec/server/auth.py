"""Token authentication for every bridge endpoint except /healthz (kernel_gateway style mixin).

The token travels in ``Authorization: token T`` (``Bearer T`` is accepted too) or, for the
WebSocket only (browsers and some clients cannot set headers there), as ``?token=T``. A
missing token answers 401, a wrong one 403; tokens are compared with
:func:`hmac.compare_digest` and never logged.
"""

from __future__ import annotations

import hmac
from typing import Any, ClassVar

from tornado import web

__all__ = ["RedactedLogMixin", "TokenAuthMixin", "check_token"]

_SCHEMES = ("token", "bearer")


def check_token(given: str | None, expected: str) -> int | None:
    """None when ``given`` is the token, else the HTTP status to answer (401 or 403)."""
    if not given:
        return 401
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        return 403
    return None


class RedactedLogMixin(web.RequestHandler):
    """Tornado's own warnings name the request: without its query string (``?token=``)."""

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"


class TokenAuthMixin(RedactedLogMixin):
    """Refuses the request in ``prepare`` unless it carries the bridge's token."""

    #: Whether ``?token=`` is accepted (only the WebSocket handler sets this).
    query_token: ClassVar[bool] = False

    def request_token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() in _SCHEMES and value.strip():
            return value.strip()
        if self.query_token:
            return self.get_query_argument("token", None)
        return None

    def prepare(self) -> Any:
        status = check_token(self.request_token(), self.settings["kernelexec_token"])
        if status == 401:
            msg = "no token: send the header 'Authorization: token <TOKEN>' (see kernelexec serve)"
            raise web.HTTPError(401, msg)
        if status == 403:
            raise web.HTTPError(403, "wrong token")
        return super().prepare()
