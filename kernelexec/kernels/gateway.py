"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway (docs/scale-out.md).

:class:`GatewayKernel` is a :class:`KernelHandle` over the gateway's REST API (start,
interrupt, restart and delete a kernel) and the kernel WebSocket
(``/api/kernels/ID/channels``), spoken with a small tornado.websocket client of our own:

- the token goes in the ``Authorization`` header of every REST call *and* of the WebSocket
  handshake (jupyter_server's GatewayKernelClient omits it there);
- the ``v1.kernel.websocket.jupyter.org`` subprotocol is preferred: the server forwards our
  serialized parts to the kernel untouched (``Session.send_raw``), so the request's
  ``content["kernelexec"]`` and binary buffers reach the kernel as sent; the legacy JSON
  protocol (text frames with a ``channel`` field, binary frames for messages with buffers)
  is spoken when a server does not offer v1;
- TCP_NODELAY on our socket and TCP_QUICKACK after every read: without them a request
  costs ~44 ms (Nagle's algorithm on the server meets delayed ACKs here);
- a request larger than the server's WebSocket message cap (10 MiB in tornado, not settable
  in Kernel Gateway) is split: its buffers are *staged* in the kernel by small execute
  requests carrying one chunk each, and a ``pre_execute`` hook of the kernel-side helper
  ``__kernelexec_gw__`` puts them back into the real request's buffers before the runtime
  reads them; the request's code is never changed;
- blob refs (files of one machine) travel as buffers, both ways (see "Blobs across
  machines" below);
- every await is bounded: REST calls and the handshake have timeouts and a retry policy
  with exponential backoff, the WebSocket is pinged, and while an execute waits the
  kernel's existence is polled. Failures become :class:`GatewayError` (start, connect,
  token) or :class:`KernelDiedError` (the kernel died, was culled, or the connection is
  gone for good).

A stock remote kernel has no kernelexec installed: the worker first executes
:func:`runtime_bootstrap_code`, which ships the in-kernel modules to the kernel.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from ..config import EnvConfig
from ..errors import GatewayError, KernelDiedError
from .base import KernelHandle

__all__ = [
    "EVENTS_COMM_ID",
    "GatewayKernel",
    "GatewaySettings",
    "make_gateway_kernel",
    "runtime_bootstrap_code",
]

log = logging.getLogger(__name__)

EVENTS_COMM_ID = "kernelexec-events"
WS_V1 = "v1.kernel.websocket.jupyter.org"
#: tornado's default websocket_max_message_size: what a gateway accepts from us.
SERVER_MESSAGE_CAP = 10 * 1024 * 1024
_HEADROOM = 256 * 1024  # for the JSON parts and the framing of a message with buffers
_PROTOCOL_VERSION = "5.3"
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class GatewaySettings:
    """Where the gateway is and how patiently to talk to it.

    Options other than url/token come from the query string of ``gateway_url``
    (``http://eg:8888?kernel_name=python_kubernetes&start_timeout=300``) or from
    ``KERNELEXEC_GATEWAY_<OPTION>`` environment variables, query string first.
    """

    url: str
    token: str | None = field(default=None, repr=False)  # a credential: never in logs
    kernel_name: str = "python3"
    #: seconds for a kernel to start and answer (an Enterprise Gateway on a busy
    #: Kubernetes cluster may need minutes to pull an image and schedule a pod)
    start_timeout: float = 120.0
    #: seconds for each other REST call and for the WebSocket handshake
    request_timeout: float = 10.0
    #: attempts of a REST call or connection before GatewayError
    retries: int = 4
    #: first backoff in seconds; doubled after each failed attempt, with jitter
    backoff: float = 0.25
    #: seconds a lost WebSocket may take to come back before the kernel counts as dead
    reconnect_timeout: float = 10.0
    #: seconds between WebSocket pings (a silent peer is dropped after the same again)
    ping_interval: float = 10.0
    #: seconds between checks that the kernel still exists while an execute waits
    liveness_interval: float = 5.0
    #: seconds an on_stdin (context) call may take before the kernel gets an error
    stdin_timeout: float = 60.0
    nodelay: bool = True
    quickack: bool = True
    validate_cert: bool = True
    #: largest WebSocket message we send; bigger requests are staged in chunks
    max_message: int = SERVER_MESSAGE_CAP
    #: environment for the kernel (Enterprise Gateway reads KERNEL_* variables)
    kernel_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str, token: str | None = None, **overrides: Any) -> GatewaySettings:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            msg = f"gateway_url {url!r} is not valid; expected http(s)://HOST:PORT[/base]"
            raise GatewayError(msg)
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        options: dict[str, Any] = {}
        known = {f for f in cls.__dataclass_fields__ if f not in ("url", "token", "kernel_env")}
        for name in known:
            env_value = os.environ.get(f"KERNELEXEC_GATEWAY_{name.upper()}")
            if env_value is not None:
                options[name] = env_value
        for name, value in parse_qsl(parts.query):
            if name not in known:
                msg = f"gateway_url option {name!r} is unknown; known options are {sorted(known)}"
                raise GatewayError(msg)
            options[name] = value
        options.update(overrides)
        typed: dict[str, Any] = {}
        for name, value in options.items():
            typed[name] = _coerce(name, value, cls.__dataclass_fields__[name].default)
        return cls(url=base, token=token or os.environ.get("KERNELEXEC_GATEWAY_TOKEN"), **typed)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] if self.url.startswith("http") else self.url


def _coerce(name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        msg = f"gateway option {name}={value!r} is not valid; expected a {type(default).__name__}"
        raise GatewayError(msg) from None
    return value


def _kernel_env(env: EnvConfig, node_id: str) -> dict[str, str]:
    """KERNEL_* variables Enterprise Gateway's kernel launchers understand."""
    out = {"KERNEL_USERNAME": os.environ.get("KERNEL_USERNAME", "kernelexec")}
    if node_id:
        out["KERNEL_KERNELEXEC_NODE"] = node_id
    if env.cpu_limit:
        out["KERNEL_CPUS"] = out["KERNEL_CPUS_LIMIT"] = f"{env.cpu_limit:g}"
    if env.memory_limit:
        out["KERNEL_MEMORY"] = out["KERNEL_MEMORY_LIMIT"] = env.memory_limit
    for name, value in os.environ.items():
        if name.startswith("KERNELEXEC_KERNEL_"):  # KERNELEXEC_KERNEL_NAMESPACE=... etc.
            out["KERNEL_" + name[len("KERNELEXEC_KERNEL_") :]] = value
    return out


def make_gateway_kernel(env: EnvConfig, *, node_id: str) -> GatewayKernel:
    """The kernel factory the pool uses when ``env.gateway_url`` is set."""
    if not env.gateway_url:
        msg = "make_gateway_kernel needs env.gateway_url"
        raise GatewayError(msg)
    settings = GatewaySettings.from_url(env.gateway_url, env.gateway_token)
    kernel_env = _kernel_env(env, node_id)
    # Enterprise Gateway waits this long for a kernel to launch (its default is 30 s)
    kernel_env.setdefault("KERNEL_LAUNCH_TIMEOUT", f"{int(settings.start_timeout)}")
    settings = replace(settings, kernel_env={**kernel_env, **settings.kernel_env})
    return GatewayKernel(settings, node_id=node_id)


# --------------------------------------------------------------------------------------
# wire format


@dataclass
class _Message:
    channel: str
    header: dict[str, Any]
    parent_header: dict[str, Any]
    content: dict[str, Any]
    buffers: list[bytes]

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def parent_id(self) -> str | None:
        value = self.parent_header.get("msg_id")
        return str(value) if value else None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _encode_v1(channel: str, parts: list[bytes]) -> bytes:
    """jupyter_server's serialize_msg_to_ws_v1: offsets, channel, header.. content, buffers."""
    chan = channel.encode("utf-8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return b"".join([head, chan, *parts])


def _decode_v1(data: bytes) -> tuple[str, list[bytes]]:
    count = struct.unpack_from("<Q", data)[0]
    offsets = list(struct.unpack_from(f"<{count}Q", data, 8))
    channel = data[offsets[0] : offsets[1]].decode("utf-8")
    parts = [data[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    return channel, parts


def _encode_legacy(msg: dict[str, Any], buffers: list[bytes]) -> str | bytes:
    if not buffers:
        return _dumps(msg).decode("utf-8")
    parts = [_dumps(msg), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def _decode(data: str | bytes, subprotocol: str | None) -> _Message:
    if subprotocol == WS_V1:
        assert isinstance(data, bytes)
        channel, parts = _decode_v1(data)
        header, parent, _meta, content = (json.loads(p) for p in parts[:4])
        return _Message(channel, header, parent, content, parts[4:])
    buffers: list[bytes] = []
    if isinstance(data, bytes):
        count = struct.unpack_from("!I", data)[0]
        offsets = [*struct.unpack_from(f"!{count}I", data, 4), len(data)]
        chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
        msg = json.loads(chunks[0])
        buffers = chunks[1:]
    else:
        msg = json.loads(data)
    return _Message(
        msg.get("channel") or "", msg["header"], msg.get("parent_header") or {},
        msg.get("content") or {}, buffers,
    )


# --------------------------------------------------------------------------------------
# REST with retries


class _NotFound(Exception):
    pass


_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 599})


def _reason(response: HTTPResponse) -> str:
    try:
        body = json.loads(response.body or b"{}")
        text = body.get("message") or body.get("reason") or ""
    except (ValueError, AttributeError):
        text = (response.body or b"")[:200].decode("utf-8", "replace")
    return f"HTTP {response.code} {response.reason or ''}".strip() + (f": {text}" if text else "")


class _Rest:
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
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
        retries: int | None = None, creates: bool = False,
    ) -> Any:
        """One REST call, retried on transient failures; 404 raises _NotFound.

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
            log.info("gateway %s: %s %s failed (%s); retrying in %.2f s", s.url, method,
                     path, problem, delay)
            await asyncio.sleep(delay)
        msg = "unreachable"
        raise AssertionError(msg)

    async def _once(self, method: str, url: str, body: Any, timeout: float) -> _Ok | _Problem:
        payload = None if body is None and method != "POST" else _dumps(body or {})
        request = HTTPRequest(
            url, method=method, headers=self.headers(), body=payload,
            connect_timeout=min(timeout, self.settings.request_timeout),
            request_timeout=timeout, validate_cert=self.settings.validate_cert,
        )
        try:
            response = await asyncio.wait_for(
                self.client.fetch(request, raise_error=False), timeout + 1
            )
        except OSError as exc:  # refused, unreachable, DNS: nothing reached the server
            return _Problem(f"{type(exc).__name__}: {exc}")
        except (asyncio.TimeoutError, HTTPClientError) as exc:
            return _Problem(f"{type(exc).__name__}: {exc or 'timed out'}", timed_out=True)
        if response.code < 300:
            return _Ok(json.loads(response.body) if response.body else None)
        if response.code == 404:
            raise _NotFound(_reason(response))
        if response.code in (401, 403) and b"Resource Limit" not in (response.body or b""):
            msg = (
                f"gateway {self.settings.url} refused the request ({_reason(response)}); "
                "check gateway_token (sent as 'Authorization: token ...')"
            )
            raise GatewayError(msg)
        if response.code in _RETRY_STATUS or response.code == 403:
            return _Problem(_reason(response), timed_out=response.code in (408, 504, 599))
        msg = f"gateway {self.settings.url}: {method} {url} failed: {_reason(response)}"
        raise GatewayError(msg)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class _Ok:
    value: Any


@dataclass
class _Problem:
    text: str
    timed_out: bool = False

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------------------
# the kernel handle


class GatewayKernel(KernelHandle):
    """One kernel on a Jupyter Kernel/Enterprise Gateway. Driven by exactly one worker."""

    def __init__(self, settings: GatewaySettings, *, node_id: str = "") -> None:
        self.settings = settings
        self.node_id = node_id
        self.kernel_id: str | None = None
        self._rest = _Rest(settings)
        self._session = uuid.uuid4().hex
        self._ws: WebSocketClientConnection | None = None
        self._subprotocol: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[_Message]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._alive = False
        self._closing = False
        self._death: str | None = None
        self._stage_seq = 0
        self._auto_restarted = False
        self._spec_checked = False
        #: output blobs of a reply (buffers of a kernelexec-gw-blobs comm_msg), by msg_id
        self._blob_parcels: dict[str, asyncio.Future[list[bytes]]] = {}
        self._reconnecting: asyncio.Task[Any] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.kernel_id is not None:
            await self.restart()
            return
        self._closing = False
        body: dict[str, Any] = {"name": self.settings.kernel_name}
        if self.settings.kernel_env:
            body["env"] = dict(self.settings.kernel_env)
        started = time.monotonic()
        await self._check_kernel_name()
        try:
            model = await self._rest.call(
                "POST", "/api/kernels", body, timeout=self.settings.start_timeout,
                retries=self.settings.retries, creates=True,
            )
        except _NotFound as exc:
            msg = (
                f"gateway {self.settings.url} has no kernel API or no kernel spec "
                f"{self.settings.kernel_name!r} ({exc}); check gateway_url and kernel_name"
            )
            raise GatewayError(msg) from None
        self.kernel_id = str(model["id"])
        log.info("gateway kernel %s started for node %s in %.2f s", self.kernel_id,
                 self.node_id, time.monotonic() - started)
        try:
            await self._open(self.settings.start_timeout)
        except BaseException:
            await self._delete_quietly()
            raise

    async def _check_kernel_name(self) -> None:
        """Fail clearly (and at once) when the gateway has no such kernel spec."""
        if self._spec_checked:
            return
        try:
            specs = await self._rest.call("GET", "/api/kernelspecs")
        except _NotFound:
            return
        names = sorted((specs or {}).get("kernelspecs") or {})
        if names and self.settings.kernel_name not in names:
            msg = (
                f"gateway {self.settings.url} has no kernel spec "
                f"{self.settings.kernel_name!r}; it has {names} (set kernel_name in gateway_url)"
            )
            raise GatewayError(msg)
        self._spec_checked = True

    async def restart(self) -> None:
        self._alive = False  # until the restarted kernel answers
        self._fail_pending("the kernel was restarted")
        await self._close_ws()
        if self.kernel_id is None:
            await self.start()
            return
        if self._auto_restarted:
            # the gateway restarts a dead kernel itself: a fresh process is on its way
            self._auto_restarted = False
            try:
                await self._open(self.settings.start_timeout)
                return
            except (GatewayError, KernelDiedError) as exc:
                log.info("gateway kernel %s did not come back by itself: %s", self.kernel_id, exc)
                await self._close_ws()
        try:
            await self._rest.call(
                "POST", f"/api/kernels/{self.kernel_id}/restart",
                timeout=self.settings.start_timeout, retries=2,
            )
        except (_NotFound, GatewayError) as exc:
            # culled, lost by a restarted gateway, or a restart that failed: a new kernel
            log.warning("gateway kernel %s could not be restarted (%s); starting a new one",
                        self.kernel_id, exc)
            await self._delete_quietly(retries=1)
            await self.start()
            return
        await self._open(self.settings.start_timeout)

    async def interrupt(self) -> None:
        if self.kernel_id is None:
            return
        try:
            await self._rest.call("POST", f"/api/kernels/{self.kernel_id}/interrupt")
        except _NotFound:
            self._mark_dead("the gateway no longer knows the kernel")

    async def shutdown(self, *, now: bool = False) -> None:
        self._closing = True
        self._fail_pending("the kernel was shut down")
        await self._close_ws()
        for task in list(self._tasks):
            task.cancel()
        await self._delete_quietly(retries=1 if now else None)
        self._rest.close()  # a later start() makes a new HTTP client

    async def _delete_quietly(self, retries: int | None = None) -> None:
        kernel_id, self.kernel_id = self.kernel_id, None
        self._alive = False
        if kernel_id is None:
            return
        try:
            await self._rest.call("DELETE", f"/api/kernels/{kernel_id}", retries=retries)
        except _NotFound:
            pass
        except GatewayError as exc:
            log.warning("gateway kernel %s may be left running: %s", kernel_id, exc)

    def is_alive(self) -> bool:
        return self._alive

    # -- connection ------------------------------------------------------------------

    async def _open(self, timeout: float) -> None:
        """Connect the WebSocket and wait until the kernel answers a kernel_info_request."""
        deadline = time.monotonic() + timeout
        try:
            await self._connect(deadline)
        except GatewayError as exc:
            if time.monotonic() < deadline:
                raise
            msg = (
                f"gateway kernel {self.kernel_id} did not answer within {timeout:g} s ({exc}); "
                "the cluster may be busy: raise start_timeout in gateway_url"
            )
            raise GatewayError(msg) from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = (
                    f"gateway kernel {self.kernel_id} did not answer within {timeout:g} s; "
                    "the cluster may be busy: raise start_timeout in gateway_url"
                )
                raise GatewayError(msg)
            msg_id = await self._send("shell", "kernel_info_request", {})
            try:
                await asyncio.wait_for(self._wait_reply(msg_id), min(left, 2.0))
                break
            except asyncio.TimeoutError:
                continue
            except KernelDiedError as exc:
                msg = f"gateway kernel {self.kernel_id} died while starting: {exc}"
                raise GatewayError(msg) from None
        self._alive = True
        self._death = None

    async def _connect(self, deadline: float) -> None:
        s = self.settings
        query = urlencode({"session_id": self._session})
        url = f"{s.ws_url}/api/kernels/{quote(str(self.kernel_id))}/channels?{query}"
        attempt = 0
        while True:
            timeout = max(0.1, min(deadline - time.monotonic(), max(s.request_timeout, 30.0)))
            request = HTTPRequest(
                url, headers=self._rest.headers(), connect_timeout=min(timeout, s.request_timeout),
                request_timeout=timeout, validate_cert=s.validate_cert,
            )
            try:
                conn = await asyncio.wait_for(
                    websocket_connect(
                        request, subprotocols=[WS_V1], max_message_size=1 << 31,
                        ping_interval=s.ping_interval or None, ping_timeout=s.ping_interval or None,
                    ),
                    timeout + 1,
                )
                break
            except HTTPClientError as exc:
                if exc.code in (401, 403):
                    msg = (
                        f"gateway {s.url} refused the kernel WebSocket (HTTP {exc.code}); "
                        "check gateway_token"
                    )
                    raise GatewayError(msg) from None
                if exc.code == 404:
                    msg = f"gateway {s.url} does not know kernel {self.kernel_id} (culled?)"
                    raise KernelDiedError(msg) from None
                problem = f"HTTP {exc.code}: {exc.message}"
            except (OSError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            attempt += 1
            if attempt >= s.retries or time.monotonic() >= deadline:
                msg = f"cannot connect to kernel {self.kernel_id} at {s.url}: {problem}"
                raise GatewayError(msg)
            pause = min(s.backoff * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause)
        self._subprotocol = conn.selected_subprotocol
        self._ws = conn
        self._tune_socket(conn)
        self._reader = asyncio.ensure_future(self._read_loop(conn))

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
                    self._dispatch(_decode(data, subprotocol))
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
        if conn is self._ws and not self._closing:
            reason = f"WebSocket closed ({conn.close_code} {conn.close_reason or ''})".strip()
            self._reconnecting = self._spawn(self._reconnect(reason))

    async def _reconnect(self, reason: str) -> None:
        """The connection dropped while the kernel may live on: reconnect with the same
        session id (the server replays what it buffered meanwhile), else declare death."""
        log.warning("gateway kernel %s: %s; reconnecting", self.kernel_id, reason)
        self._ws = None
        try:
            await self._connect(time.monotonic() + self.settings.reconnect_timeout)
        except (GatewayError, KernelDiedError) as exc:
            self._mark_dead(f"lost the connection to the gateway ({reason}; {exc})")

    async def _close_ws(self) -> None:
        conn, self._ws = self._ws, None
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

    async def _send(
        self, channel: str, msg_type: str, content: dict[str, Any],
        buffers: list[bytes] | None = None, parent: dict[str, Any] | None = None,
    ) -> str:
        header = {
            "msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "kernelexec",
            "session": self._session, "date": datetime.now(timezone.utc).isoformat(),
            "version": _PROTOCOL_VERSION,
        }
        msg_id = str(header["msg_id"])
        if channel == "shell":
            self._pending[msg_id] = asyncio.get_running_loop().create_future()
        for attempt in (1, 2):
            conn = self._ws
            if conn is None and attempt == 1 and await self._await_reconnect(None):
                conn = self._ws
            if conn is None:
                self._pending.pop(msg_id, None)
                raise KernelDiedError(self._death or "not connected to the gateway kernel")
            data = self._encode(channel, header, content, buffers or [], parent or {})
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
                raise KernelDiedError(self._death or msg) from None
            except (asyncio.TimeoutError, OSError) as exc:
                self._pending.pop(msg_id, None)
                msg = f"lost the connection to gateway kernel {self.kernel_id}: {exc!r}"
                raise KernelDiedError(msg) from None
            self._quickack(self._socket(conn))
            break
        return msg_id

    def _encode(
        self, channel: str, header: dict[str, Any], content: dict[str, Any],
        buffers: list[bytes], parent: dict[str, Any],
    ) -> str | bytes:
        if self._subprotocol == WS_V1:
            parts = [_dumps(header), _dumps(parent), b"{}", _dumps(content)]
            return _encode_v1(channel, parts + [bytes(b) for b in buffers])
        whole = {"header": header, "parent_header": parent, "metadata": {},
                 "content": content, "channel": channel}
        return _encode_legacy(whole, [bytes(b) for b in buffers])

    async def _await_reconnect(self, old: WebSocketClientConnection | None) -> bool:
        """Wait for the reader to replace a dropped connection; True when it did."""
        if self._closing:
            return False
        deadline = time.monotonic() + 1.0
        while self._ws is old and self._ws is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the reader has yet to notice the close
        task = self._reconnecting
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.settings.reconnect_timeout + 2)
        return self._ws is not None and self._ws is not old

    async def _wait_reply(self, msg_id: str) -> _Message:
        future = self._pending.get(msg_id)
        if future is None:
            raise KernelDiedError(self._death or "the request was dropped")
        try:
            return await future
        finally:
            self._pending.pop(msg_id, None)

    def _dispatch(self, msg: _Message) -> None:
        if msg.channel == "shell":
            future = self._pending.get(msg.parent_id or "")
            if future is not None and not future.done():
                future.set_result(msg)
        elif msg.channel == "iopub":
            self._on_iopub(msg)
        elif msg.channel == "stdin" and msg.msg_type == "input_request":
            self._spawn(self._answer_stdin(msg))

    def _on_iopub(self, msg: _Message) -> None:
        kind, content = msg.msg_type, msg.content
        if kind == "comm_msg" and content.get("comm_id") == _BLOBS_COMM_ID:
            data = content.get("data") or {}
            parcel = self._blob_parcels.setdefault(
                str(data.get("msg_id")), asyncio.get_running_loop().create_future()
            )
            if not parcel.done():
                parcel.set_result(msg.buffers)
        elif kind == "comm_msg" and content.get("comm_id") == EVENTS_COMM_ID:
            event, buffers = content.get("data") or {}, [bytes(b) for b in msg.buffers]
            if buffers and _has_gw_refs(event):
                _buffers_to_blobs(event, buffers)
                buffers = []
            if self.on_event is not None:
                try:
                    self.on_event(event, buffers)
                except Exception:
                    log.exception("gateway kernel %s: on_event failed", self.kernel_id)
        elif kind == "stream":
            if self.on_stream is not None:
                self.on_stream(str(content.get("name", "stdout")), str(content.get("text", "")))
        elif (
            kind == "status"
            and content.get("execution_state") in ("dead", "restarting")
            and not msg.parent_id  # the gateway's own notice, not the kernel's
        ):
            self._auto_restarted = content["execution_state"] == "restarting"
            self._mark_dead(f"the kernel died (gateway status {content['execution_state']!r})")

    async def _answer_stdin(self, msg: _Message) -> None:
        prompt = str(msg.content.get("prompt", ""))
        try:
            if self.on_stdin is None:
                problem = "no context handler: this kernel cannot ask for input"
                raise RuntimeError(problem)
            value = await asyncio.wait_for(self.on_stdin(prompt), self.settings.stdin_timeout)
        except Exception as exc:
            if isinstance(exc, asyncio.TimeoutError):
                exc = TimeoutError(f"no answer within {self.settings.stdin_timeout:g} s")
            value = json.dumps({"value": None, "error": f"{type(exc).__name__}: {exc}"})
        with contextlib.suppress(KernelDiedError):
            await self._send("stdin", "input_reply", {"value": value}, parent=msg.header)

    def _spawn(self, coro: Awaitable[_T]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _mark_dead(self, reason: str) -> None:
        if self._closing:
            return
        log.warning("gateway kernel %s: %s", self.kernel_id, reason)
        self._alive = False
        self._death = reason
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(KernelDiedError(reason))

    # -- execute ---------------------------------------------------------------------

    async def execute(
        self, code: str, extra: dict[str, Any], buffers: list[bytes] | None = None
    ) -> dict[str, Any]:
        reconnecting = self._reconnecting
        if reconnecting is not None and not reconnecting.done():  # a dropped connection
            await asyncio.wait({reconnecting}, timeout=self.settings.reconnect_timeout + 2)
        if not self._alive or self._ws is None:
            raise KernelDiedError(self._death or f"gateway kernel {self.kernel_id} is not running")
        buffers = list(buffers or [])
        content: dict[str, Any] = {
            "code": code, "silent": True, "store_history": False, "user_expressions": {},
            "allow_stdin": True, "stop_on_error": False, "kernelexec": extra,
        }
        if extra.get("op") in ("run", "setup", "stop", "init", "code"):  # see "Blobs across"
            content["kernelexec"], blobs_sent = _blobs_to_buffers(extra, buffers)
            if blobs_sent:
                content["kernelexec_gw_blobs"] = True
        if _wire_size(content, buffers) > self.settings.max_message - _HEADROOM:
            content["kernelexec_staged"] = await self._stage(buffers)
            buffers = []
        msg_id = await self._send("shell", "execute_request", content, buffers)
        try:
            reply = await self._watch(self._wait_reply(msg_id))
            return await self._blobs_from_kernel(msg_id, reply.content)
        finally:
            self._blob_parcels.pop(msg_id, None)

    async def _blobs_from_kernel(self, msg_id: str, content: dict[str, Any]) -> dict[str, Any]:
        """Output blobs came as buffers of a comm_msg: write them to local blob files."""
        if not _has_gw_refs(content.get("payload")):
            return content
        parcel = self._blob_parcels.setdefault(
            msg_id, asyncio.get_running_loop().create_future()
        )
        try:
            buffers = await asyncio.wait_for(parcel, self.settings.request_timeout)
        except asyncio.TimeoutError:
            msg = f"gateway kernel {self.kernel_id}: the output blobs of a reply never came"
            raise GatewayError(msg) from None
        _buffers_to_blobs(content.get("payload"), buffers)
        return content

    async def _watch(self, waiting: Awaitable[_T]) -> _T:
        """Await ``waiting`` while checking every liveness_interval that the kernel exists."""
        task = asyncio.ensure_future(waiting)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.settings.liveness_interval)
                if done:
                    return task.result()
                await self._check_exists()
        finally:
            task.cancel()

    async def _check_exists(self) -> None:
        try:
            model = await self._rest.call("GET", f"/api/kernels/{self.kernel_id}", retries=1)
        except _NotFound:
            self._mark_dead("the gateway no longer knows the kernel (culled or deleted)")
            return
        except GatewayError:
            return  # transient; the WebSocket's pings decide about the connection
        if isinstance(model, dict) and model.get("execution_state") == "dead":
            self._mark_dead("the gateway reports the kernel dead")

    async def _stage(self, buffers: list[bytes]) -> dict[str, Any]:
        """Send the buffers in chunks the server accepts; the kernel keeps them under a key."""
        self._stage_seq += 1
        key = f"{self._session}-{self._stage_seq}"
        chunk = self.settings.max_message - _HEADROOM
        sent: list[str] = []
        for index, buf in enumerate(buffers):
            view = memoryview(buf).cast("B")
            for start in range(0, max(len(view), 1), chunk):
                stage = {"key": key, "index": index}
                sent.append(await self._send(
                    "shell", "execute_request",
                    {"code": "__kernelexec_gw__.stage()", "silent": True, "store_history": False,
                     "user_expressions": {}, "allow_stdin": False, "stop_on_error": False,
                     "kernelexec_stage": stage},
                    [bytes(view[start : start + chunk])],
                ))
        for msg_id in sent:
            reply = await self._watch(self._wait_reply(msg_id))
            if reply.content.get("status") != "ok":
                msg = (
                    f"staging a large input in gateway kernel {self.kernel_id} failed: "
                    f"{reply.content.get('ename')}: {reply.content.get('evalue')} "
                    "(was runtime_bootstrap_code() executed first?)"
                )
                raise GatewayError(msg)
        return {"key": key, "count": len(buffers)}

    @property
    def description(self) -> str:
        return f"{self.settings.url} kernel {self.kernel_id}"


_BLOBS_COMM_ID = "kernelexec-gw-blobs"
# Blobs across machines. A blob ref {"$kx": "blob", "path", "size"} names a file on the
# machine that wrote it, so refs never cross the WebSocket. Going in, the handle reads each
# referenced file and sends its bytes as a buffer of the execute_request, the ref becoming
# {"$kx": "blob", "gw": INDEX, "size", "req": REQ_ID}; the kernel side (before(), an IPython
# pre_execute hook) writes the buffer to a blob file of the kernel's machine and restores a
# path ref, which the runtime reads as usual (and after(), the post_execute hook, removes).
# Coming out, after() and the event wrapper read the
# kernel's output blob files, remove them, and send their bytes as comm_msg buffers with
# "gw" refs; the handle writes them to blob files of this machine (named for the request,
# owned by the reader as usual). The runtime is unchanged.


def _walk_refs(value: Any, fix: Any, req_id: str | None = None) -> Any:
    """``value`` with blob refs replaced by ``fix(ref, req_id)``; copies only what changes."""
    if isinstance(value, dict):
        if value.get("$kx") == "blob":
            return fix(value, req_id)
        rid = value.get("req_id")
        rid = rid if isinstance(rid, str) else req_id
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            new = _walk_refs(item, fix, rid)
            if new is not item:
                changed = changed if changed is not None else dict(value)
                changed[key] = new
        return changed if changed is not None else value
    if isinstance(value, list):
        out: list[Any] | None = None
        for index, item in enumerate(value):
            new = _walk_refs(item, fix, req_id)
            if new is not item:
                out = out if out is not None else list(value)
                out[index] = new
        return out if out is not None else value
    return value


def _blobs_to_buffers(extra: dict[str, Any], buffers: list[bytes]) -> tuple[Any, bool]:
    from .. import blobs

    found = False

    def fix(ref: dict[str, Any], req_id: str | None) -> dict[str, Any]:
        nonlocal found
        if "path" not in ref:
            return ref
        try:
            data = blobs.read_blob(ref)
        except (OSError, ValueError):
            return ref  # the runtime reports the unreadable blob for this message
        found = True
        buffers.append(data)
        return {"$kx": "blob", "gw": len(buffers) - 1, "size": len(data),
                "req": blobs.safe_req_id(req_id)}

    new = _walk_refs(extra, fix)
    if isinstance(new, dict) and new.get("op") == "init" and isinstance(new.get("node"), dict):
        new = {**new, "node": {**new["node"], "blob_dir": None}}  # the kernel's own
    return new, found


def _has_gw_refs(value: Any) -> bool:
    if isinstance(value, dict):
        if value.get("$kx") == "blob":
            return "gw" in value
        return any(_has_gw_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_gw_refs(v) for v in value)
    return False


def _buffers_to_blobs(value: Any, buffers: list[bytes]) -> None:
    """Replace "gw" refs in place by refs to new local blob files holding the buffers."""
    from .. import blobs

    if isinstance(value, dict):
        if value.get("$kx") == "blob" and "gw" in value:
            ref = blobs.write_blob(buffers[int(value["gw"])], str(value.get("req") or "_"))
            value.clear()
            value.update(ref)
            return
        for item in value.values():
            _buffers_to_blobs(item, buffers)
    elif isinstance(value, list):
        for item in value:
            _buffers_to_blobs(item, buffers)


def _wire_size(content: dict[str, Any], buffers: Iterable[bytes]) -> int:
    return len(_dumps(content)) + sum(memoryview(b).nbytes for b in buffers) + 1024


# --------------------------------------------------------------------------------------
# bootstrapping the runtime in a stock remote kernel

#: The in-kernel modules whose imports (within kernelexec) are followed to build the bundle.
RUNTIME_ROOTS = ("kernelexec.runtime", "kernelexec.kernel")

_GATEWAY_HELPER = r'''
class _KernelexecGateway:
    # The kernel side of kernelexec.kernels.gateway: staged buffers, blobs as buffers.

    def __init__(self):
        self.staged = {}
        self.inputs = []
        self.shell = None

    def register(self, shell):
        # before()/after() run around every execute (pre_/post_execute fire even when silent)
        self.shell = shell
        shell.events.register("pre_execute", self.before)
        shell.events.register("post_execute", self.after)

    def unregister(self):
        if self.shell is not None:
            self.shell.events.unregister("pre_execute", self.before)
            self.shell.events.unregister("post_execute", self.after)
            self.shell = None

    def _parent(self):
        kernel = get_ipython().kernel
        try:
            return kernel.get_parent("shell")
        except TypeError:
            return kernel.get_parent()

    def stage(self):
        parent = self._parent()
        info = parent["content"]["kernelexec_stage"]
        parts = self.staged.setdefault(info["key"], {}).setdefault(info["index"], [])
        parts.extend(bytes(b) for b in parent["buffers"])

    def before(self):
        # staged chunks back into the buffers; buffer blobs into this machine's blob files
        parent = self._parent()
        content = parent["content"]
        info = content.pop("kernelexec_staged", None)
        if info is not None:
            parts = self.staged.pop(info["key"], {})
            joined = [b"".join(parts.get(i, ())) for i in range(info["count"])]
            parent["buffers"][:] = [memoryview(b) for b in joined]
        if content.pop("kernelexec_gw_blobs", False):
            from kernelexec import blobs
            buffers = parent["buffers"]

            def to_file(ref):
                new = blobs.write_blob(buffers[ref["gw"]], ref.get("req"))
                self.inputs.append(new["path"])
                return new

            self._walk(content.get("kernelexec"), to_file)

    def after(self):
        # input blob files go; output blob files travel as buffers of one comm_msg
        import os
        for path in self.inputs:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.inputs = []
        buffers = []
        for item in get_ipython().payload_manager.read_payload():
            if item.get("source") == "kernelexec":
                self._walk(item.get("data"), self._packer(buffers))
        if buffers:
            parent = self._parent()
            data = {"msg_id": parent["header"]["msg_id"], "count": len(buffers)}
            self._send("kernelexec-gw-blobs", data, parent, buffers)

    def wrap(self, runtime):
        # events with blob refs carry the blobs as their own buffers
        channel = runtime.channel
        original = channel.event

        def event(ev):
            buffers = []
            self._walk(ev, self._packer(buffers))
            if not buffers:
                return original(ev)
            return self._send("kernelexec-events", ev, channel.parent, buffers)

        channel.event = event

    def _send(self, comm_id, data, parent, buffers):
        kernel = get_ipython().kernel
        content = {"comm_id": comm_id, "data": data}
        kernel.session.send(kernel.iopub_socket, "comm_msg", content, parent=parent,
                            ident=("comm-" + comm_id).encode(), buffers=buffers)

    def _packer(self, buffers):
        import os
        from kernelexec import blobs

        def pack(ref):
            path = ref.get("path")
            if not isinstance(path, str):
                return ref
            data = blobs.read_blob(ref)
            try:
                os.unlink(path)
            except OSError:
                pass
            parsed = blobs.parse_name(os.path.basename(path))
            buffers.append(data)
            return {"$kx": "blob", "gw": len(buffers) - 1, "size": len(data),
                    "req": parsed[1] if parsed else "_"}
        return pack

    def _walk(self, value, fix):
        if isinstance(value, dict):
            if value.get("$kx") == "blob":
                new = fix(value)
                if new is not value:
                    value.clear()
                    value.update(new)
                return
            for item in value.values():
                self._walk(item, fix)
        elif isinstance(value, list):
            for item in value:
                self._walk(item, fix)
'''

_BOOTSTRAP = r'''
def _kernelexec_bootstrap(bundle, digest):
    import atexit, base64, json, os, shutil, sys, tempfile, zlib
    files = json.loads(zlib.decompress(base64.b64decode(bundle)))
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):  # left by kernels that died without atexit (os._exit, kill)
        parts = name.split("-")
        if name.startswith("kernelexec-gw-") and len(parts) > 3 and parts[2].isdigit():
            path = os.path.join(tmp, name)
            try:
                if os.stat(path).st_uid == os.getuid():
                    os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                shutil.rmtree(path, True)
            except OSError:
                pass
    root = tempfile.mkdtemp(prefix=f"kernelexec-gw-{os.getpid()}-{digest[:8]}-")
    atexit.register(shutil.rmtree, root, True)
    for rel, data in files.items():
        path = os.path.join(root, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
    for name in [m for m in sys.modules if m == "kernelexec" or m.startswith("kernelexec.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    ip = get_ipython()
    kernel = getattr(ip, "kernel", None)
    if kernel is not None and hasattr(kernel, "_execute_sleep"):
        kernel._execute_sleep = 0.0
    try:  # as kernelexec.kernel does for local kernels, where ipykernel has what it needs
        from ipykernel.iostream import OutStream
        from kernelexec import kernel as tuning
        fields = ("_buffers", "_flush_pending", "_subprocess_flush_pending")
        if isinstance(sys.stdout, OutStream) and all(hasattr(sys.stdout, f) for f in fields):
            getattr(tuning, "_skip_empty_flushes", lambda: None)()
        if kernel is not None and hasattr(tuning, "wire_pack"):
            kernel.session.pack = tuning.wire_pack  # lone surrogates, NaN: as local kernels
    except Exception:
        pass
    try:
        ip.history_manager.enabled = False
    except Exception:
        pass
    previous = ip.user_ns.get("__kernelexec_gw__")
    if previous is not None and hasattr(previous, "unregister"):
        previous.unregister()
    helper = ip.user_ns["__kernelexec_gw__"] = _KernelexecGateway()
    helper.register(ip)
    try:
        import kernelexec.runtime as runtime
    except ModuleNotFoundError as exc:
        if exc.name != "kernelexec.runtime":
            raise
        return
    helper.wrap(runtime.install(ip))
'''


def _imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    # a package's __init__ is shipped for itself: only its module-level imports count
    nodes = tree.body if path.name == "__init__.py" else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name == "kernelexec" or name.startswith("kernelexec.")}


def _module_path(root: Path, module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (root / rel / "__init__.py", root.joinpath(rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def bundle_files(roots: Iterable[str] = RUNTIME_ROOTS) -> dict[str, bytes]:
    """The kernelexec files a remote kernel needs: the roots, what they import within
    kernelexec (followed transitively), their packages' ``__init__`` and data files."""
    root = Path(__file__).resolve().parent.parent
    files: dict[str, bytes] = {}
    todo = [m for m in roots if _module_path(root, m)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(root, module)
        if path is None:
            continue
        rel = path.relative_to(root.parent).as_posix()
        files[rel] = path.read_bytes()
        if path.name == "__init__.py":
            for data in path.parent.iterdir():
                if data.is_file() and data.suffix not in (".py", ".pyc", ".pyi"):
                    files[data.relative_to(root.parent).as_posix()] = data.read_bytes()
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports_of(path, module))
    return files


def runtime_bootstrap_code(roots: Iterable[str] = RUNTIME_ROOTS) -> str:
    """Code to execute once in a stock remote kernel (after start and every restart).

    It writes the in-kernel kernelexec modules into a private temporary directory of the
    kernel's machine (removed when the kernel exits), puts it first on sys.path, tunes the
    kernel (no post-execute sleep, no history), defines ``__kernelexec_gw__`` (reassembly
    of staged buffers) and ``__kernelexec__ = kernelexec.runtime.install(get_ipython())``.
    """
    files = bundle_files(roots)
    payload = _dumps({k: base64.b64encode(v).decode("ascii") for k, v in sorted(files.items())})
    bundle = base64.b64encode(zlib.compress(payload, 9)).decode("ascii")
    digest = f"{zlib.crc32(payload):08x}"
    return (
        f"{_GATEWAY_HELPER}\n{_BOOTSTRAP}\n"
        f"_kernelexec_bootstrap({bundle!r}, {digest!r})\n"
        "del _kernelexec_bootstrap, _KernelexecGateway\n"
    )

