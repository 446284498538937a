"""Protocol edge cases on a real bridge: handshake, bad frames, sizes, unknown nodes.

None of these frames may crash the connection: each gets an ``error`` frame (or the documented
answer) and the connection keeps working (checked with a ping afterwards).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from server_support import Client, start_server

from kernelexec.protocol import PROTOCOL_VERSION, load_spec
from kernelexec.server import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

SPEC = load_spec()


def assert_spec_frame(frame: dict[str, Any]) -> None:
    """A server frame has a spec type and every field the spec lists for it."""
    assert frame["type"] in SPEC["server_frames"], frame
    fields = SPEC["server_frames"][frame["type"]]["fields"]
    missing = {name for name, doc in fields.items() if "left out" not in doc} - set(frame)
    assert not missing, (frame, missing)
    if frame["type"] == "error":
        assert frame["error"]["code"] in SPEC["error_codes"]
        assert set(frame["error"]) == {"code", "type", "message", "traceback", "line"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    server = await start_server(max_frame_bytes=64 * 1024)
    yield server
    await server.stop("tests done")


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: Server) -> AsyncIterator[Client]:
    client = await Client.connect(server.port)
    try:
        yield client
        await alive(client)
        for frame in client.seen:
            assert_spec_frame(frame)
    finally:
        client.close()


async def alive(client: Client) -> None:
    await client.send(type="ping", id="still-there")
    assert (await client.next(lambda f: f["type"] == "pong"))["id"] == "still-there"


async def error_for(client: Client, raw: str | bytes) -> dict[str, Any]:
    await client.send_raw(raw)
    return await client.next(lambda f: f["type"] == "error", timeout=30)


async def test_welcome_names_version_server_pid_and_blob_dir(server: Server) -> None:
    client = await Client.connect(server.port, hello=False)
    await client.send(type="hello", protocol_version=PROTOCOL_VERSION, client="t")
    welcome = await client.next(lambda f: True)
    assert welcome["type"] == "welcome"
    assert welcome["protocol_version"] == PROTOCOL_VERSION
    assert welcome["server"].startswith("kernelexec/")
    assert isinstance(welcome["pid"], int) and welcome["blob_dir"]
    client.close()


async def test_major_version_mismatch_is_refused_and_closed(server: Server) -> None:
    client = await Client.connect(server.port, hello=False)
    await client.send(type="hello", protocol_version="99.0", client="future")
    error = await client.next(lambda f: True)
    assert error["error"]["code"] == "VERSION_MISMATCH"
    assert "99.0" in error["error"]["message"] and PROTOCOL_VERSION in error["error"]["message"]
    assert await client.ws.read_message() is None
    assert client.ws.close_code == 1002 and "version" in (client.ws.close_reason or "")
    client.close()


async def test_a_node_red_package_of_another_version_is_named_in_a_warning(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    ours = server.bridge.server.partition("/")[2]
    for client_name in (f"node-red-kernelexec/{ours}", "node-red-kernelexec/9.9.9"):
        client = await Client.connect(server.port, hello=False)
        await client.send(type="hello", protocol_version=PROTOCOL_VERSION, client=client_name)
        assert (await client.next(lambda f: True))["type"] == "welcome"
        client.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if "Node-RED package is version" in w] == [
        f"The Node-RED package is version 9.9.9 but this bridge runs kernelexec {ours}: install "
        "the kernelexec bundled with the Node-RED package (the node does it for the environment "
        "it manages)"
    ]


async def test_minor_version_difference_is_welcome(server: Server) -> None:
    client = await Client.connect(server.port, hello=False)
    major = PROTOCOL_VERSION.split(".")[0]
    await client.send(type="hello", protocol_version=f"{major}.99", client="newer minor")
    assert (await client.next(lambda f: True))["type"] == "welcome"
    client.close()


async def test_frames_before_hello_are_refused_but_ping_works(server: Server) -> None:
    client = await Client.connect(server.port, hello=False)
    error = await error_for(client, json.dumps({"type": "list_kernels", "node_id": None}))
    assert error["error"]["code"] == "BAD_FRAME" and "hello" in error["error"]["message"]
    await alive(client)
    client.close()


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ("{not json", "BAD_FRAME", "not valid JSON"),
        ("[1, 2]", "BAD_FRAME", "not a JSON object"),
        ('"hello"', "BAD_FRAME", "not a JSON object"),
        ("{}", "UNKNOWN_TYPE", "unknown frame type"),
        ('{"type": "launch_missiles"}', "UNKNOWN_TYPE", "launch_missiles"),
        ('{"type": "ping"}', "BAD_FRAME", "'id' is missing"),
        ('{"type": "ping", "id": 7}', "BAD_FRAME", "expected str"),
        ('{"type": "hello", "protocol_version": "one", "client": "x"}', "BAD_FRAME", "MAJOR.MINOR"),
        ('{"type": "configure", "node_id": "n", "config": []}', "BAD_FRAME", "expected dict"),
        ('{"type": "execute", "node_id": "n", "req_id": true, "msg": {}}', "BAD_FRAME", "req_id"),
        ('{"type": "execute", "node_id": "n", "req_id": "r", "msg": null}', "BAD_FRAME", "msg"),
        ('{"type": "close"}', "BAD_FRAME", "node_id"),
        ('{"type": "context_reply", "ctx_id": "c999"}', "BAD_FRAME", "unknown or expired"),
    ],
)
async def test_bad_frames_get_error_frames(client: Client, raw: str, code: str, words: str) -> None:
    error = await error_for(client, raw)
    assert error["error"]["code"] == code
    assert words in error["error"]["message"]


async def test_binary_frames_are_parsed_like_text(client: Client) -> None:
    await client.send_raw(json.dumps({"type": "ping", "id": "bin"}).encode())
    assert (await client.next(lambda f: f["type"] == "pong"))["id"] == "bin"


async def test_errors_carry_the_req_id_and_node_id_they_can(client: Client) -> None:
    error = await error_for(client, '{"type": "execute", "node_id": "n9", "req_id": "r9"}')
    assert (error["req_id"], error["node_id"]) == ("r9", "n9")


async def test_unknown_node_is_not_configured(client: Client) -> None:
    await client.send(type="execute", node_id="ghost", req_id="r1", msg={})
    error = await client.result("r1")
    assert error["type"] == "error" and error["error"]["code"] == "NOT_CONFIGURED"
    assert error["node_id"] == "ghost" and "configure" in error["error"]["message"]
    await client.send(type="close", node_id="ghost")
    error = await client.next(lambda f: f["type"] == "error")
    assert error["error"]["code"] == "NOT_CONFIGURED"


async def test_oversized_frame_is_refused_and_the_connection_lives(client: Client) -> None:
    big = json.dumps({"type": "ping", "id": "x" * (100 * 1024)})
    error = await error_for(client, big)
    assert error["error"]["code"] == "FRAME_TOO_LARGE" and "65536" in error["error"]["message"]
    padding = "x" * (100 * 1024)
    frame = {"type": "execute", "node_id": 'n"1', "req_id": "big-1", "msg": {"p": padding}}
    error = await error_for(client, json.dumps(frame))
    assert error["error"]["code"] == "FRAME_TOO_LARGE"
    assert (error["req_id"], error["node_id"]) == ("big-1", 'n"1')  # read from the head
    # the limit counts UTF-8 bytes, not characters: 40 K chars of "é" are 80 KiB
    wide = json.dumps({"type": "ping", "id": "é" * (40 * 1024)}, ensure_ascii=False)
    assert (await error_for(client, wide))["error"]["code"] == "FRAME_TOO_LARGE"
    fits = json.dumps({"type": "ping", "id": "é" * (30 * 1024)}, ensure_ascii=False)
    await client.send_raw(fits)
    assert (await client.next(lambda f: f["type"] in ("pong", "error")))["type"] == "pong"


async def test_huge_frame_closes_the_connection_with_1009(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send_raw("x" * (200 * 1024))
    assert await client.ws.read_message() is None
    assert client.ws.close_code == 1009
    client.close()


async def test_bad_config_fails_the_pool_with_bad_config(client: Client) -> None:
    await client.send(type="configure", node_id="bad", config={"workers": 0})
    state = await client.state("bad", "error")
    assert state["error"]["code"] == "BAD_CONFIG" and "workers" in state["error"]["message"]
    result = await client.execute("bad", "rb", {"payload": 1})
    assert result["type"] == "result" and result["error"]["code"] == "BAD_CONFIG"
    await client.send(type="configure", node_id="bad2", config={"colour": "red"})
    state = await client.state("bad2", "error")
    assert "colour" in state["error"]["message"]
    for node_id in ("bad", "bad2"):
        await client.send(type="close", node_id=node_id)
        assert (await client.next(lambda f: f["type"] == "closed"))["node_id"] == node_id


async def test_list_kernels_without_pools_is_empty(client: Client) -> None:
    await client.send(type="list_kernels", node_id=None)
    assert (await client.next(lambda f: f["type"] == "kernels"))["kernels"] == []


@pytest.mark.slow
async def test_frames_above_tornados_default_buffer_are_read() -> None:
    """tornado's streams stop at 100 MB by default; max_frame_bytes is larger (256 MiB)."""
    server = await start_server(max_frame_bytes=SPEC["max_frame_bytes"])
    client = await Client.connect(server.port)
    try:
        padding = "x" * (120 << 20)
        await client.send_raw(json.dumps({"type": "list_kernels", "node_id": None, "pad": padding}))
        frame = await client.next(lambda f: True, timeout=60)
        assert frame == {"type": "kernels", "kernels": []}
    finally:
        client.close()
        await server.stop("test done")
