"""The bridge's HTTP surface on a real server: health, token, origin, 404s, metrics access."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from server_support import TOKEN, Client, http_get, start_server, ws_url
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from kernelexec.server import Server
from kernelexec.server.hosts import HostPolicy

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await server.stop("tests done")


async def test_healthz_needs_no_token_and_is_small_json(server: Server) -> None:
    response = await http_get(server.port, "/healthz")
    assert response.code == 200
    body = json.loads(response.body)
    assert body["status"] == "ok" and body["protocol_version"]
    assert TOKEN not in response.body.decode()


async def test_healthz_shows_no_pid_without_the_token(server: Server) -> None:
    """Nothing that identifies the bridge process without the token; pid and counts with it."""
    anonymous = json.loads((await http_get(server.port, "/healthz")).body)
    assert set(anonymous) == {"status", "protocol_version"}
    assert str(os.getpid()) not in json.dumps(anonymous)
    wrong = json.loads((await http_get(server.port, "/healthz", {"Authorization": "token x"})).body)
    assert "pid" not in wrong
    auth = {"Authorization": f"token {TOKEN}"}
    known = json.loads((await http_get(server.port, "/healthz", auth)).body)
    assert known["pid"] == os.getpid() and known["pools"] == 0


def _host_cases(port: int) -> list[tuple[str, bool]]:
    return [
        (f"evil.example:{port}", False),
        ("evil.example", False),
        (f"127.0.0.1.evil.example:{port}", False),
        (f"localhost.:{port}", False),
        (f"127.0.0.1:{port + 1}", False),
        ("", False),
        (f"127.0.0.1:{port}", True),
        (f"localhost:{port}", True),
        (f"LOCALHOST:{port}", True),
        (f"[::1]:{port}", True),
        ("127.0.0.1", True),
    ]


async def test_endpoints_refuse_a_foreign_host_header(server: Server) -> None:
    """DNS rebinding: /healthz, /metrics and /ws answer only the bridge's own address."""
    auth = {"Authorization": f"token {TOKEN}"}
    for host, allowed in _host_cases(server.port):
        headers = {**auth, "Host": host}
        health = await http_get(server.port, "/healthz", headers)
        metrics = await http_get(server.port, "/metrics", headers)
        ws = await ws_status(server, ws_url(server.port, TOKEN), {"Host": host})
        if allowed:
            assert (health.code, metrics.code, ws) == (200, 200, 101), host
        else:
            assert (health.code, metrics.code, ws) == (403, 403, 403), host
            assert "Host header" in json.loads(health.body)["message"]
            assert b"pid" not in health.body


async def test_host_policy_of_a_remote_bridge() -> None:
    """--allow-remote: its own address answers; a wildcard bind takes IP literals, no names."""
    remote = HostPolicy("192.0.2.7", 8000)
    assert remote.allows("192.0.2.7:8000") and remote.allows("localhost:8000")
    assert not remote.allows("evil.example:8000") and not remote.allows("192.0.2.8:8000")
    every = HostPolicy("0.0.0.0", 8000)
    assert every.allows("192.0.2.8:8000") and every.allows("[2001:db8::1]:8000")
    assert not every.allows("evil.example:8000")
    named = HostPolicy("bridge.internal", 8000)
    assert named.allows("bridge.internal:8000") and not named.allows("evil.example:8000")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 401),
        ({"Authorization": "token wrong"}, 403),
        ({"Authorization": f"token {TOKEN}x"}, 403),
        ({"Authorization": "token"}, 401),
        ({"Authorization": f"token {TOKEN}"}, 200),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ],
)
async def test_metrics_needs_the_token(server: Server, headers: dict[str, str], code: int) -> None:
    response = await http_get(server.port, "/metrics", headers)
    assert response.code == code
    if code == 401:
        assert response.headers["WWW-Authenticate"].startswith("token")
    if code != 200:
        assert json.loads(response.body)["message"]


async def test_query_token_is_for_the_websocket_only(server: Server) -> None:
    response = await http_get(server.port, f"/metrics?token={TOKEN}")
    assert response.code == 401


async def test_unknown_path_is_a_json_404(server: Server) -> None:
    response = await http_get(server.port, "/nope", {"Authorization": f"token {TOKEN}"})
    assert response.code == 404
    assert "/ws" in json.loads(response.body)["message"]


async def ws_status(server: Server, url: str, headers: dict[str, str]) -> int:
    try:
        ws = await websocket_connect(HTTPRequest(url, headers=headers))
    except HTTPClientError as exc:
        return exc.code
    ws.close()
    return 101


@pytest.mark.parametrize(
    ("token", "headers", "code"),
    [
        (None, {}, 401),
        ("wrong", {}, 403),
        (TOKEN, {}, 101),
        (None, {"Authorization": f"token {TOKEN}"}, 101),
        (TOKEN, {"Origin": "http://evil.example.com"}, 403),
        (TOKEN, {"Origin": "http://localhost:1"}, 403),
        (TOKEN, {"Origin": "null"}, 403),
    ],
)
async def test_websocket_refusals(
    server: Server, token: str | None, headers: dict[str, str], code: int
) -> None:
    assert await ws_status(server, ws_url(server.port, token), headers) == code


async def test_websocket_accepts_its_own_origin(server: Server) -> None:
    origin = {"Origin": f"http://127.0.0.1:{server.port}"}
    assert await ws_status(server, ws_url(server.port, TOKEN), origin) == 101


async def test_healthz_counts_connections(server: Server) -> None:
    client = await Client.connect(server.port)
    try:
        auth = {"Authorization": f"token {TOKEN}"}
        body = json.loads((await http_get(server.port, "/healthz", auth)).body)
        assert body["connections"] >= 1
    finally:
        client.close()


async def test_no_token_ever_reaches_the_logs(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wrong-but-secret-0123"
    with caplog.at_level("DEBUG"):
        assert (await http_get(server.port, f"/metrics?token={secret}")).code == 401
        assert (await http_get(server.port, f"/nope?token={secret}")).code == 404
        assert await ws_status(server, ws_url(server.port, secret), {}) == 403
        assert await ws_status(server, ws_url(server.port, TOKEN), {}) == 101
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/metrics" in text and "/ws" in text  # the requests were logged...
    assert secret not in text and TOKEN not in text  # ...without their tokens


async def test_websocket_stream_has_tcp_nodelay(server: Server) -> None:
    client = await Client.connect(server.port)
    try:
        open_ = [s for s in server.bridge.sessions if s.transport.ws_connection is not None]
        assert open_
        for session in open_:
            stream = session.transport.ws_connection.stream
            assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()
