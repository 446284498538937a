"""20 nodes x 2 workers on one bridge: one node's crash and another's timeout disturb no one."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from server_support import Client, start_server

from kernelexec.server import Server

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

NODES = [f"n{i:02d}" for i in range(18)]
WORK = "import time\ntime.sleep(msg.get('sleep', 0))\nmsg['payload'] = node.id\nreturn msg\n"
CRASH = "import os\nif msg.get('crash'):\n    os._exit(3)\nreturn msg\n"
SLEEP = "import time\ntime.sleep(msg.get('sleep', 0))\nreturn msg\n"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await server.stop("tests done")


async def kernels(client: Client) -> dict[str, list[int]]:
    await client.send(type="list_kernels", node_id=None)
    frame = await client.next(lambda f: f["type"] == "kernels")
    pids: dict[str, list[int]] = {}
    for kernel in frame["kernels"]:
        pids.setdefault(kernel["node_id"], []).append(kernel["pid"])
    return {node_id: sorted(p) for node_id, p in pids.items()}


async def test_twenty_pools_side_by_side(server: Server) -> None:
    client = await Client.connect(server.port)
    try:
        started = time.monotonic()
        configs = {n: {"code": WORK, "workers": 2} for n in NODES}
        configs["crasher"] = {"code": CRASH, "workers": 2}
        configs["sleeper"] = {"code": SLEEP, "workers": 2, "timeout": 1}
        for node_id, config in configs.items():
            await client.send(type="configure", node_id=node_id, config=config)
        for node_id in configs:
            state = await client.state(node_id, "ready", "error", timeout=120)
            assert state["state"] == "ready" and state["total"] == 2, state
        print(f"20 pools x 2 kernels ready in {time.monotonic() - started:.1f} s")
        before = await kernels(client)
        assert len(before) == 20 and all(len(p) == 2 for p in before.values())

        await client.send(type="execute", node_id="crasher", req_id="crash", msg={"crash": True})
        await client.send(type="execute", node_id="sleeper", req_id="hang", msg={"sleep": 30})
        for node_id in NODES:
            for i in range(3):
                msg = {"sleep": 0.2}
                await client.send(type="execute", node_id=node_id, req_id=f"{node_id}-{i}", msg=msg)
        for result in [await client.result(f"{n}-{i}") for n in NODES for i in range(3)]:
            assert result["type"] == "result" and result["error"] is None, result
            assert result["outputs"] == [[{"sleep": 0.2, "payload": result["node_id"]}]]

        crash = await client.result("crash")
        assert crash["error"]["code"] == "KERNEL_DIED", crash["error"]
        hang = await client.result("hang")
        assert hang["error"]["code"] == "TIMEOUT", hang["error"]
        for node_id in ("crasher", "sleeper"):  # both serve again
            again = await client.execute(node_id, f"{node_id}-again", {"sleep": 0})
            assert again["error"] is None, again["error"]

        after = await kernels(client)
        assert {n: after[n] for n in NODES} == {n: before[n] for n in NODES}
        assert after["crasher"] != before["crasher"]
        print(f"whole test body {time.monotonic() - started:.1f} s")
    finally:
        client.close()
