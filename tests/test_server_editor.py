"""The ``inspect`` frame: completion and hover from a node's kernel, for the Node-RED editor.

A real bridge and a real hot kernel that ran the node's setup: the names the setup imported
complete, the runtime's names (node, context, flow, global_, env) complete, hover help comes
back; a node without a pool, a bad op or a cursor outside the code get error frames.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from server_support import Client, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client() -> AsyncIterator[Client]:
    server = await start_server()
    client = await Client.connect(server.port)
    state = await client.configure("ed", setup="import json as js", code="return msg")
    assert state["state"] == "ready", state
    yield client
    await client.send(type="close", node_id="ed", removed=True)
    await client.next(lambda f: f["type"] == "closed")
    client.close()
    await server.stop("tests done")


async def ask(client: Client, req_id: str, op: str, code: str, cursor: int) -> dict[str, object]:
    await client.send(
        type="inspect", node_id="ed", req_id=req_id, op=op, code=code, cursor_pos=cursor
    )
    return await client.next(lambda f: f.get("req_id") == req_id)


async def test_completes_what_the_setup_imported(client: Client) -> None:
    reply = await ask(client, "c1", "complete", "x = js.du", 9)
    assert reply["type"] == "inspect_reply" and reply["error"] is None, reply
    content = reply["reply"]
    assert isinstance(content, dict)
    replaced = [content["cursor_start"], content["cursor_end"]]
    assert "dumps" in content["matches"] and replaced == [7, 9], content


async def test_completes_the_runtime_names(client: Client) -> None:
    for prefix, name in (("nod", "node"), ("glo", "global_"), ("flo", "flow"), ("en", "env")):
        reply = await ask(client, f"r-{name}", "complete", prefix, len(prefix))
        content = reply["reply"]
        assert isinstance(content, dict) and name in content["matches"], (name, reply)


async def test_hover_help(client: Client) -> None:
    reply = await ask(client, "h1", "inspect", "js.dumps(msg)", 5)
    content = reply["reply"]
    assert isinstance(content, dict) and content["found"] is True, reply
    assert "Serialize" in content["data"]["text/plain"]


async def test_bad_requests_get_error_frames(client: Client) -> None:
    reply = await ask(client, "b1", "explain", "x", 1)
    assert reply["type"] == "error" and "'complete' nor 'inspect'" in reply["error"]["message"]
    reply = await ask(client, "b2", "complete", "x", 5)
    assert reply["type"] == "error" and "outside the code" in reply["error"]["message"]
    await client.send(
        type="inspect", node_id="ghost", req_id="b3", op="complete", code="x", cursor_pos=1
    )
    error = await client.next(lambda f: f.get("req_id") == "b3")
    assert error["error"]["code"] == "NOT_CONFIGURED"
