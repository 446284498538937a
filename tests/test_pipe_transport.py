"""The protocol over the socket pair a Node-RED node hands the bridge it starts (--node-fd).

The Node-RED tests (nodered-node/test) all speak to their bridges this way; here the Python
side alone: the handshake, a message, the limit, the end of the connection, a bad fd.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import psutil
import pytest
import pytest_asyncio
from node_end import NodeEnd, started_bridge
from server_support import bridge_env, still_running

from kernelexec.protocol import load_spec

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def node_end() -> AsyncIterator[NodeEnd]:
    async with started_bridge() as end:
        yield end


async def greeted(end: NodeEnd) -> None:
    await end.greet()


async def test_the_protocol_runs_over_the_socket_without_a_token(node_end: NodeEnd) -> None:
    await greeted(node_end)
    node_end.send({"type": "configure", "node_id": "n1", "config": {"code": "return msg"}})
    assert (await node_end.frame("pool_state"))["state"] in ("starting", "ready")
    node_end.send({"type": "execute", "node_id": "n1", "req_id": "r1", "msg": {"payload": 7}})
    result = await node_end.frame("result")
    assert result["req_id"] == "r1" and result["outputs"] == [[{"payload": 7}]]


async def test_the_end_of_the_connection_closes_its_pools(node_end: NodeEnd) -> None:
    await greeted(node_end)
    node_end.send({"type": "configure", "node_id": "n1", "config": {"code": "return msg"}})
    node_end.send({"type": "execute", "node_id": "n1", "req_id": "r1", "msg": {}})
    await node_end.frame("result")
    kernels = psutil.Process(node_end.proc.pid).children(recursive=True)
    kernels = [p for p in kernels if "kernelexec.kernel" in p.cmdline()]  # not the template
    assert kernels
    assert node_end.writer is not None
    node_end.writer.close()
    assert await still_running(kernels, timeout=30) == []
    assert node_end.proc.poll() is None  # the bridge itself goes on (stdin, signals end it)


async def test_a_message_over_the_limit_closes_the_connection(node_end: NodeEnd) -> None:
    await greeted(node_end)
    node_end.send_raw(b"{}", size=2 * int(load_spec()["max_frame_bytes"]) + 1)
    assert node_end.reader is not None
    await asyncio.wait_for(node_end.reader.read(), 30)  # whatever was on its way, then EOF
    assert node_end.reader.at_eof()  # the bridge closed the connection


async def test_a_descriptor_that_is_not_a_socket_is_refused_at_start() -> None:
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kernelexec", "serve", "--port", "0", "--node-fd", str(read_fd)],
            pass_fds=(read_fd,),
            capture_output=True,
            env={**os.environ, **bridge_env()},
            timeout=60,
        )
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert proc.returncode == 1
    assert f"--node-fd {read_fd}" in proc.stderr.decode() and "socket" in proc.stderr.decode()
