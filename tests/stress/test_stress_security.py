"""Claims of docs/security.md that other tests do not already back: what other local users
and web pages can reach, and where secrets go. Real bridge process, real kernels."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import zmq
from jupyter_client.session import Session
from server_support import TOKEN, Client, ws_url
from stress_support import StressBridge, blob_files, take_blobs
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from kernelexec.config import PoolConfig
from kernelexec.kernel import blobs

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bridge() -> AsyncIterator[StressBridge]:
    """A bridge started with umask 000 and DEBUG logging: files must still be private and the
    token must still stay out of the logs."""
    files_before = blob_files()
    old = os.umask(0)
    try:
        bridge = StressBridge(env={"KERNELEXEC_GATEWAY_TOKEN": "gw-secret-123"})
    finally:
        os.umask(old)
    try:
        yield bridge
    finally:
        code, err, procs, files = await bridge.stop_and_wait_clean(files_before)
        assert code == 0 and not procs and not files, (err[-1000:], procs, files)
        assert TOKEN not in err and "gw-secret-123" not in err


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(bridge: StressBridge) -> Client:
    client = await bridge.connect()
    code = (
        "import os, stat\n"
        "msg['env'] = {k: v for k, v in os.environ.items() if 'TOKEN' in k or 'KEY' in k}\n"
        "msg['umask'] = os.umask(0o022); os.umask(msg['umask'])\n"
        "msg['big'] = bytes(1 << 20)\n"
        "return msg\n"
    )
    state = await client.configure("sec", code=code)
    assert state["state"] == "ready", state
    return client


async def kernel_info(client: Client) -> dict[str, object]:
    await client.send(type="list_kernels", node_id="sec")
    kernels = (await client.next(lambda f: f["type"] == "kernels"))["kernels"]
    assert len(kernels) == 1
    info: dict[str, object] = kernels[0]
    return info


async def test_blob_files_are_private_even_under_umask_000(client: Client) -> None:
    await client.send(type="execute", node_id="sec", req_id="b1", msg={"payload": 1})
    result = await client.result("b1")
    assert result["error"] is None, result["error"]
    assert result["outputs"][0][0]["umask"] == 0, "the kernel really runs with umask 000"
    assert result["outputs"][0][0]["big"] == blobs.index_ref(0)
    mode = stat.S_IMODE(os.stat(blobs.entry_path(result[blobs.TABLE][0], "b1")).st_mode)
    take_blobs(result)
    assert mode == 0o600, oct(mode)


async def test_connection_file_and_ipc_sockets_are_owner_only(client: Client) -> None:
    info = await kernel_info(client)
    path = Path(str(info["connection_file"]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the HMAC key
    connection = json.loads(path.read_text())
    assert connection["signature_scheme"] == "hmac-sha256"
    assert len(connection["key"]) >= 32
    if connection["transport"] == "ipc":
        sockets = list(Path(connection["ip"]).parent.glob(Path(connection["ip"]).name + "-*"))
        assert sockets, connection["ip"]
        assert stat.S_IMODE(Path(connection["ip"]).parent.stat().st_mode) & 0o077 == 0


async def test_a_kernel_ignores_messages_without_the_hmac_key(
    client: Client, tmp_path: Path
) -> None:
    """Someone who can reach the kernel's sockets but lacks the key cannot run code."""
    info = await kernel_info(client)
    connection = json.loads(Path(str(info["connection_file"])).read_text())
    marker = tmp_path / "pwned"
    shell_url = (
        f"ipc://{connection['ip']}-{connection['shell_port']}"
        if connection["transport"] == "ipc"
        else f"tcp://{connection['ip']}:{connection['shell_port']}"
    )
    context = zmq.Context()
    try:
        for key in (b"", uuid.uuid4().hex.encode()):  # unsigned, then signed with a wrong key
            session = Session(key=key, signature_scheme="hmac-sha256", username="attacker")
            sock = context.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(shell_url)
            code = f"open({str(marker)!r}, 'w').write('x')"
            session.send(sock, "execute_request", {"code": code, "silent": False})
            answered = sock.poll(3000)
            sock.close()
            assert not answered, "the kernel answered a message with a bad signature"
    finally:
        context.term()
    assert not marker.exists(), "code with a bad signature ran"
    await client.send(type="execute", node_id="sec", req_id="after-hmac", msg={"payload": 2})
    assert (await client.result("after-hmac"))["error"] is None


async def test_bridge_and_gateway_tokens_do_not_reach_user_code(client: Client) -> None:
    """User code is trusted like the function node's, but it needs neither the bridge's token
    (it would let it drive every other node's kernels) nor the gateway token."""
    await client.send(type="execute", node_id="sec", req_id="env1", msg={"payload": 1})
    result = await client.result("env1")
    take_blobs(result)
    seen = result["outputs"][0][0]["env"]
    assert "KERNELEXEC_TOKEN" not in seen, seen
    assert "KERNELEXEC_GATEWAY_TOKEN" not in seen, seen
    assert TOKEN not in json.dumps(result)


async def test_gateway_token_is_not_in_the_config_repr() -> None:
    """A pool config that ends up in a log line or a traceback does not show the token."""
    config = PoolConfig.from_dict("n", {"env": {"gateway_url": "http://gw", "gateway_token": "s3"}})
    assert config.env.gateway_token == "s3"
    assert "s3" not in repr(config) and "s3" not in str(config)


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        "file://",
        "https://localhost",
    ],
)
async def test_a_web_page_cannot_open_the_socket_even_with_the_token(
    bridge: StressBridge, origin: str
) -> None:
    """A page in the user's browser sends its own Origin; the bridge refuses any but its own."""
    request = HTTPRequest(ws_url(bridge.port, TOKEN), headers={"Origin": origin})
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(request)
    assert refused.value.code == 403


async def test_brute_forcing_the_token_gets_nowhere(bridge: StressBridge) -> None:
    """Wrong tokens are refused (403) one after another; the right one still gets in."""
    for i in range(50):
        request = HTTPRequest(ws_url(bridge.port, f"{TOKEN[:-2]}{i:02d}"))
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(request)
        assert refused.value.code == 403
    again = await Client.connect(bridge.port)
    again.close()


async def test_the_token_is_not_on_the_command_line() -> None:
    """The Node-RED node passes the token in the environment; `ps` shows no token."""
    bridge = StressBridge()
    try:
        cmdline = Path(f"/proc/{bridge.proc.pid}/cmdline").read_bytes().decode()
        assert TOKEN not in cmdline
        environ = Path(f"/proc/{bridge.proc.pid}/environ")
        assert stat.S_IMODE(environ.stat().st_mode) & 0o044 == 0, "environ readable by others"
    finally:
        bridge.stop()
    await asyncio.sleep(0)


async def test_refuses_a_non_loopback_address_without_allow_remote() -> None:
    """Also covered by tests/test_server_lifecycle.py; repeated here for the claim's wording."""
    proc = subprocess.run(
        [sys.executable, "-m", "kernelexec", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "KERNELEXEC_TOKEN": TOKEN},
    )  # fmt: skip
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr
