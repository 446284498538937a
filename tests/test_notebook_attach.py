"""kernelexec attach: ask a real bridge for a hot kernel's connection file, then attach."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from server_support import TOKEN, BridgeProcess, Client, gone, start_server

from kernelexec.commands import attach
from kernelexec.server import Server

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bridge() -> AsyncIterator[tuple[Server, Client]]:
    server = await start_server()
    client = await Client.connect(server.port)
    state = await client.configure("hot1", setup="ANSWER = 42", code="return msg", workers=2)
    assert state["state"] == "ready", state
    cold = await client.configure("cold1", code="return msg", mode="cold")
    assert cold["state"] == "ready", cold
    yield server, client
    client.close()
    await server.stop()


async def evaluate(connection_file: str, expression: str) -> Any:
    """The repr of ``expression`` evaluated in the kernel, through a second Jupyter client."""
    kc = AsyncKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        msg_id = kc.execute("", silent=True, user_expressions={"value": expression})
        while True:
            reply = await kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["user_expressions"]["value"]["data"]["text/plain"]
    finally:
        kc.stop_channels()


@pytest.mark.asyncio(loop_scope="module")
async def test_list_kernels_of_a_hot_node(bridge: tuple[Server, Client]) -> None:
    server, _ = bridge
    kernels = await attach.list_kernels(server.url, TOKEN, "hot1")
    assert sorted(k["worker"] for k in kernels) == [0, 1]
    assert all(k["node_id"] == "hot1" and os.path.exists(k["connection_file"]) for k in kernels)
    everything = await attach.list_kernels(server.url, TOKEN, None)
    assert {k["node_id"] for k in everything} == {"hot1"}  # cold pools are not attachable


@pytest.mark.asyncio(loop_scope="module")
async def test_attach_prints_a_file_a_jupyter_client_can_use(
    bridge: tuple[Server, Client], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = bridge
    args = argparse.Namespace(
        node_id="hot1", url=server.url, token=TOKEN, worker=1, list=False
    )  # fmt: skip
    assert await asyncio.to_thread(attach.run, args) == 0
    out, err = capsys.readouterr()
    path = out.strip()
    assert f"jupyter console --existing {path}" in err
    assert await evaluate(path, "ANSWER") == "42"  # setup state is live


@pytest.mark.asyncio(loop_scope="module")
async def test_an_attached_kernel_loads_jupyters_debugger_when_first_asked(
    bridge: tuple[Server, Client],
) -> None:
    """Kernels start without debugpy (kernelexec/kernel/debugging.py) yet announce the
    debugger, and build it on the first debug_request."""
    server, _ = bridge
    [kernel] = [k for k in await attach.list_kernels(server.url, TOKEN, "hot1") if k["worker"] == 0]
    loaded = "'debugpy' in __import__('sys').modules"
    assert await evaluate(kernel["connection_file"], loaded) == "False"
    kc = AsyncKernelClient(connection_file=kernel["connection_file"])
    kc.load_connection_file()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        info_id = kc.kernel_info()
        info = await kc.get_shell_msg(timeout=30)
        assert info["parent_header"]["msg_id"] == info_id
        assert "debugger" in info["content"]["supported_features"]
        request = {"type": "request", "seq": 1, "command": "debugInfo", "arguments": {}}
        msg = kc.session.msg("debug_request", request)
        kc.control_channel.send(msg)
        reply = await kc.get_control_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
        assert reply["content"]["success"] is True, reply["content"]
        assert reply["content"]["body"]["isStarted"] is False
    finally:
        kc.stop_channels()
    assert await evaluate(kernel["connection_file"], loaded) == "True"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("node_id", "token", "worker", "expected"),
    [
        ("cold1", TOKEN, None, "has no attachable kernel"),
        ("nope", TOKEN, None, "has no attachable kernel"),
        ("hot1", TOKEN, 7, "worker 7 of node 'hot1'"),
        ("hot1", "wrong", None, "check --token"),
    ],
)
async def test_attach_errors(
    bridge: tuple[Server, Client],
    capsys: pytest.CaptureFixture[str],
    node_id: str,
    token: str,
    worker: int | None,
    expected: str,
) -> None:
    server, _ = bridge
    args = argparse.Namespace(
        node_id=node_id, url=server.url, token=token, worker=worker, list=False
    )
    assert await asyncio.to_thread(attach.run, args) == 1
    assert expected in capsys.readouterr().err


async def test_no_bridge_listening() -> None:
    with pytest.raises(attach.AttachError, match="cannot connect to the bridge"):
        await attach.list_kernels("http://127.0.0.1:9", TOKEN, "x", timeout=5)


def test_websocket_url() -> None:
    assert attach.websocket_url("http://h:1") == "ws://h:1/ws"
    assert attach.websocket_url("https://h:1/base/") == "wss://h:1/base/ws"
    assert attach.websocket_url("ws://h:1/ws") == "ws://h:1/ws"
    assert attach.websocket_url("h:1") == "ws://h:1/ws"


async def test_cli_against_a_bridge_process() -> None:
    bridge = BridgeProcess("--watch-stdin")
    try:
        client = await Client.connect(bridge.port)
        state = await client.configure("n9", setup="import math", code="return msg")
        assert state["state"] == "ready", state
        env = {**os.environ, "KERNELEXEC_URL": bridge.ready["url"], "KERNELEXEC_TOKEN": TOKEN}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "kernelexec", "attach", "n9"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith(".json") and os.path.exists(done.stdout.strip())
        client.close()
        kernels = bridge.descendants()
        assert kernels
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.wait()[0] == 0
        assert not gone(kernels)
    finally:
        bridge.kill()


@pytest.mark.asyncio(loop_scope="module")
async def test_attach_finds_bridges_by_their_runtime_files(
    bridge: tuple[Server, Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, _ = bridge
    monkeypatch.setenv("KERNELEXEC_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("KERNELEXEC_URL", raising=False)
    monkeypatch.delenv("KERNELEXEC_TOKEN", raising=False)
    args = argparse.Namespace(node_id="hot1", url=None, token=None, worker=None, list=False)
    assert await asyncio.to_thread(attach.run, args) == 1
    assert f"no bridge published a runtime file in {tmp_path}" in capsys.readouterr().err

    def publish(name: str, **info: Any) -> None:
        (tmp_path / f"kernelexec-bridge-{name}.json").write_text(json.dumps(info))

    publish("dead", url="http://127.0.0.1:9", token="x", pid=2**22 + 12345)  # no such process
    publish("refusing", url=server.url, token="wrong-token", pid=os.getpid())
    publish("good", url=server.url, token=TOKEN, pid=os.getpid())
    assert sorted(b["token"] for b in attach.discover_bridges()) == [TOKEN, "wrong-token"]
    assert await asyncio.to_thread(attach.run, args) == 0
    assert os.path.exists(capsys.readouterr().out.strip())
    listing = argparse.Namespace(node_id=None, url=None, token=None, worker=None, list=True)
    assert await asyncio.to_thread(attach.run, listing) == 0
    assert {k["node_id"] for k in json.loads(capsys.readouterr().out)} == {"hot1"}
