"""The gateway's REST API (``/api/kernels``, ``/api/kernelspecs``) with retries and backoff.

The token goes in the ``Authorization`` header of every call. Transient failures (refused
connections, timeouts, 5xx, 429) are retried with exponential backoff and jitter within a
deadline; the last one becomes a :class:`~kernelexec.errors.GatewayError` saying what to check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from ...errors import GatewayError, KernelexecError
from .settings import GatewaySettings
from .wire import dumps

__all__ = ["GatewayNotFoundError", "RestClient"]

log = logging.getLogger(__package__)

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 599})


class GatewayNotFoundError(KernelexecError):
    """HTTP 404: the gateway does not know the kernel (or has no such API). Not a
    GatewayError: the handle tells "gone" from "failing" by this class."""

    code = "GATEWAY_ERROR"


@dataclass
class _Ok:
    value: Any


@dataclass
class _Problem:
    text: str
    timed_out: bool = False

    def __str__(self) -> str:
        return self.text


def _reason(response: HTTPResponse) -> str:
    try:
        body = json.loads(response.body or b"{}")
        text = body.get("message") or body.get("reason") or ""
    except (ValueError, AttributeError):
        text = (response.body or b"")[:200].decode("utf-8", "replace")
    return f"HTTP {response.code} {response.reason or ''}".strip() + (f": {text}" if text else "")


class RestClient:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._client: AsyncHTTPClient | None = None

    @property
    def client(self) -> AsyncHTTPClient:
        # made on first use, inside the event loop that will drive it
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=32)
        return self._client

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.settings.token:
            headers["Authorization"] = f"token {self.settings.token}"
        return headers

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        creates: bool = False,
    ) -> Any:
        """One REST call, retried on transient failures; 404 raises GatewayNotFoundError.

        ``creates``: the call makes something (a kernel): a timed-out attempt may have
        succeeded on the server, so it is not repeated (which could leave a kernel behind).
        """
        s = self.settings
        timeout = timeout or s.request_timeout
        attempts = max(1, s.retries if retries is None else retries)
        deadline = time.monotonic() + timeout * attempts
        url = s.url + path
        for attempt in range(attempts):
            problem = await self._once(method, url, body, timeout)
            if isinstance(problem, _Ok):
                return problem.value
            remaining = deadline - time.monotonic()
            if attempt + 1 >= attempts or remaining <= 0 or (creates and problem.timed_out):
                msg = (
                    f"gateway {s.url}: {method} {path} failed after {attempt + 1} attempt(s): "
                    f"{problem}. Check that the gateway runs and gateway_url is right."
                )
                raise GatewayError(msg)
            delay = min(s.backoff * 2**attempt * (0.75 + random.random() / 2), remaining)
            log.info(
                "gateway %s: %s %s failed (%s); retrying in %.2f s",
                s.url,
                method,
                path,
                problem,
                delay,
            )
            await asyncio.sleep(delay)
        msg = "unreachable"
        raise AssertionError(msg)

    async def _once(self, method: str, url: str, body: Any, timeout: float) -> _Ok | _Problem:
        payload = None if body is None and method != "POST" else dumps(body or {})
        request = HTTPRequest(
            url,
            method=method,
            headers=self.headers(),
            body=payload,
            connect_timeout=min(timeout, self.settings.request_timeout),
            request_timeout=timeout,
            validate_cert=self.settings.validate_cert,
        )
        try:
            response = await asyncio.wait_for(
                self.client.fetch(request, raise_error=False), timeout + 1
            )
        except OSError as exc:  # refused, unreachable, DNS: nothing reached the server
            return _Problem(f"{type(exc).__name__}: {exc}")
        except (asyncio.TimeoutError, HTTPClientError) as exc:
            return _Problem(f"{type(exc).__name__}: {exc or 'timed out'}", timed_out=True)
        return self._outcome(method, url, response)

    def _outcome(self, method: str, url: str, response: HTTPResponse) -> _Ok | _Problem:
        """The response's value, a retryable problem, or the error to raise now."""
        if response.code < 300:
            return _Ok(json.loads(response.body) if response.body else None)
        if response.code == 404:
            raise GatewayNotFoundError(_reason(response))
        if response.code in (401, 403) and b"Resource Limit" not in (response.body or b""):
            reason = _reason(response)
            hint = "check gateway_token (sent as 'Authorization: token ...')"
            if "KERNEL_USERNAME" in reason:  # Enterprise Gateway's unauthorized_users
                hint = "set KERNEL_USERNAME in the bridge's environment to a user it allows"
            msg = f"gateway {self.settings.url} refused the request ({reason}); {hint}"
            raise GatewayError(msg)
        if response.code in _RETRY_STATUS or response.code == 403:
            return _Problem(_reason(response), timed_out=response.code in (408, 504, 599))
        msg = f"gateway {self.settings.url}: {method} {url} failed: {_reason(response)}"
        raise GatewayError(msg)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
