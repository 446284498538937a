"""What the node's code asks Node-RED besides plain context (issue 18), through a real bridge
and a real kernel, with the test as Node-RED: the fields of the context_request frames, and a
link call that may take longer than the bridge's context timeout."""

from __future__ import annotations

import asyncio

import pytest

from tests.server_support import Client, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONTEXT_TIMEOUT = 0.5


async def test_store_env_and_linkcall_requests_reach_node_red() -> None:
    server = await start_server(context_timeout=CONTEXT_TIMEOUT)
    client = await Client.connect(server.port)
    code = (
        "flow.set(['a', 'b'], [1, 2], store='file')\n"
        "home = env.get('HOME')\n"
        "answer = node.linkcall_sync('slow', {'payload': 1}, timeout=5)\n"
        "return {'payload': [home, answer['payload']]}"
    )
    try:
        assert (await client.configure("asks", code=code))["state"] == "ready"
        await client.send(type="execute", node_id="asks", req_id="q1", msg={})
        answers = {"set": None, "env": "/home/nr", "linkcall": {"payload": 2}}
        for op in ("set", "env", "linkcall"):
            request = await client.next(lambda f: f["type"] == "context_request")
            assert request["op"] == op
            if op == "set":
                assert (request["key"], request["value"]) == (["a", "b"], [1, 2])
                assert (request["scope"], request["store"]) == ("flow", "file")
            if op == "linkcall":
                assert (request["key"], request["timeout"]) == ("slow", 5.0)
                # the answer comes later than the context timeout, within the call's own
                await asyncio.sleep(CONTEXT_TIMEOUT * 2)
            await client.send(
                type="context_reply", ctx_id=request["ctx_id"], value=answers[op], error=None
            )
        result = await client.result("q1")
        assert result["error"] is None, result["error"]
        assert result["outputs"][0][0]["payload"] == ["/home/nr", 2]
    finally:
        client.close()
        await server.stop("test done")
