"""``kernelexec serve --gateway-url``: nodes without a gateway of their own run on the bridge's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from gateway_fixtures import gateway_kernel_ids, running_gateway
from server_support import Client, start_server

pytestmark = [pytest.mark.gateway, pytest.mark.timeout(120)]

TOKEN = "kernelexec-test-token"


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with running_gateway(TOKEN) as url:
        yield url


async def test_a_bridge_with_a_default_gateway_runs_pools_there(gateway_url: str) -> None:
    server = await start_server(gateway_url=gateway_url, gateway_token=TOKEN)
    try:
        client = await Client.connect(server.port)
        code = "import os\nmsg['payload'] = [msg['payload'] * 2, os.getpid()]\nreturn msg"
        state = await client.configure("remote", code=code)
        assert state["state"] == "ready", state
        assert len(gateway_kernel_ids(gateway_url, TOKEN)) == 1
        result = await client.execute("remote", "g1", {"payload": 21})
        assert result["error"] is None
        assert result["outputs"][0][0]["payload"][0] == 42
        await client.send(type="close", node_id="remote")
        await client.next(lambda f: f["type"] == "closed")
        assert gateway_kernel_ids(gateway_url, TOKEN) == []
        client.close()
    finally:
        await server.stop("test done")


async def test_a_kernel_that_never_answers_the_bootstrap_fails_the_node(gateway_url: str) -> None:
    """The node's pool state becomes "error" (the node shows it in red) with the reason,
    within bootstrap_timeout, instead of staying "starting" forever; its kernel is gone."""
    server = await start_server()
    try:
        client = await Client.connect(server.port)
        env = {"gateway_url": f"{gateway_url}?kernel_name=mute&bootstrap_timeout=2",
               "gateway_token": TOKEN}  # fmt: skip
        state = await client.configure("mute", code="return msg", env=env)  # not "starting"
        assert state["state"] == "error", state
        message = state["error"]["message"]
        assert "did not answer the kernelexec bootstrap within 2 s" in message, message
        assert "bootstrap_timeout" in message, message
        result = await client.execute("mute", "m1", {"payload": 1})
        assert result["error"] is not None
        await client.send(type="close", node_id="mute")
        await client.next(lambda f: f["type"] == "closed")
        deadline = time.monotonic() + 30
        while gateway_kernel_ids(gateway_url, TOKEN) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the gateway kills a kernel that ignores shutdown
        assert gateway_kernel_ids(gateway_url, TOKEN) == []
        client.close()
    finally:
        await server.stop("test done")
