"""Protocol 1.1 batching: a WebSocket message may carry a JSON array of frames, both ways.

The client sends a burst as one array and gets every answer; the bridge coalesces the frames
of one event-loop turn into one message (fewer messages than frames); a 1.0 client still
gets one object per message and may still send single frames.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from server_support import Client, start_server

from kernelexec.protocol import PROTOCOL_VERSION
from kernelexec.server import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TALK = """\
node.send({'payload': 'early'})
return msg
"""
BURST = 300


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await server.stop("tests done")


async def configured(client: Client, **pools: str) -> None:
    for node_id, code in pools.items():
        await client.send(type="configure", node_id=node_id, config={"code": code, "workers": 2})
    for node_id in pools:
        state = await client.state(node_id, "ready", "error")
        assert state["state"] == "ready", state


def executes(node_id: str, prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {"type": "execute", "node_id": node_id, "req_id": f"{prefix}{i}", "msg": {"payload": i}}
        for i in range(n)
    ]


async def answers(client: Client, req_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every result/error frame of ``req_ids``; fails on a second answer to one of them."""
    got: dict[str, dict[str, Any]] = {}
    wanted = set(req_ids)
    while len(got) < len(wanted):
        frame = await client.next(
            lambda f: f["type"] in ("result", "error") and f.get("req_id") in wanted
        )
        assert frame["req_id"] not in got, f"two answers for {frame['req_id']}"
        got[frame["req_id"]] = frame
    return got


async def alive(client: Client) -> None:
    await client.send(type="ping", id="still-there")
    assert (await client.next(lambda f: f["type"] == "pong"))["id"] == "still-there"


async def test_the_spec_version_is_at_least_1_1() -> None:
    major, minor = (int(part) for part in PROTOCOL_VERSION.split("."))
    assert (major, minor) >= (1, 1)


async def test_a_burst_in_one_array_gets_every_result_in_fewer_messages(server: Server) -> None:
    client = await Client.connect(server.port)
    await configured(client, echo="return msg")
    frames = executes("echo", "b", BURST)
    before = client.messages
    await client.send_raw(json.dumps(frames))  # one WebSocket message, BURST frames
    got = await answers(client, [f["req_id"] for f in frames])
    for i in range(BURST):
        result = got[f"b{i}"]
        assert result["type"] == "result" and result["error"] is None, result
        assert result["outputs"] == [[{"payload": i}]]
    assert client.messages - before < BURST, "the bridge did not coalesce the results"
    assert client.arrays >= 1
    await alive(client)
    client.close()


async def test_send_frames_still_come_before_their_result(server: Server) -> None:
    client = await Client.connect(server.port)
    await configured(client, talk=TALK)
    frames = executes("talk", "t", 50)
    await client.send_raw(json.dumps(frames))
    await answers(client, [f["req_id"] for f in frames])
    for frame in frames:
        mine = [f["type"] for f in client.seen if f.get("req_id") == frame["req_id"]]
        assert mine == ["send", "result"], (frame["req_id"], mine)
    client.close()


async def test_frames_of_an_array_are_handled_in_order_and_one_bad_frame_is_only_one_error(
    server: Server,
) -> None:
    client = await Client.connect(server.port)
    batch = [
        {"type": "ping", "id": "a"},
        {"type": "ping"},
        "not a frame",
        {"type": "launch_missiles"},
        {"type": "ping", "id": "b"},
    ]
    await client.send_raw(json.dumps(batch))
    seen = [await client.next(lambda f: True) for _ in range(5)]
    assert [f["type"] for f in seen] == ["pong", "error", "error", "error", "pong"]
    assert (seen[0]["id"], seen[4]["id"]) == ("a", "b")
    codes = [f["error"]["code"] for f in seen[1:4]]
    assert codes == ["BAD_FRAME", "BAD_FRAME", "UNKNOWN_TYPE"]
    client.close()


async def test_a_1_0_client_gets_single_frames_and_may_send_arrays_anyway(
    server: Server,
) -> None:
    client = await Client.connect(server.port, hello=False)
    await client.send(type="hello", protocol_version="1.0", client="old node")
    assert (await client.next(lambda f: True))["type"] == "welcome"
    await configured(client, old="return msg")
    frames = executes("old", "o", 100)
    for frame in frames:  # a 1.0 client sends one frame per message
        await client.send(**frame)
    got = await answers(client, [f["req_id"] for f in frames])
    assert all(got[f["req_id"]]["error"] is None for f in frames)
    assert client.arrays == 0, "a 1.0 client got an array of frames"
    assert client.messages == len(client.seen)
    client.close()


async def test_a_frame_before_hello_inside_an_array_is_refused_like_alone(server: Server) -> None:
    client = await Client.connect(server.port, hello=False)
    hello = {"type": "hello", "protocol_version": PROTOCOL_VERSION, "client": "array"}
    await client.send_raw(json.dumps([{"type": "list_kernels", "node_id": None}, hello]))
    first = await client.next(lambda f: True)
    assert first["type"] == "error" and "hello" in first["error"]["message"]
    assert (await client.next(lambda f: True))["type"] == "welcome"
    await alive(client)
    client.close()


async def test_a_lone_surrogate_costs_one_character_not_the_batch(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send_raw('[{"type":"ping","id":"a\\ud800"},{"type":"ping","id":"b"}]')
    first = await client.next(lambda f: f["type"] == "pong")
    second = await client.next(lambda f: f["type"] == "pong")
    assert (first["id"], second["id"]) == ("a\ufffd", "b")
    client.close()
