"""`python -m kernelexec serve` as a process: ready line, token, binding, clean shutdown on
SIGTERM and on the parent's death, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from server_support import TOKEN, BridgeProcess, Client, bridge_env, gone, http_get

from kernelexec.kernel import blobs

pytestmark = pytest.mark.asyncio(loop_scope="module")


def blob_files_of(pids: list[int]) -> list[str]:
    directory = Path(blobs.blob_dir())
    return [p.name for pid in pids for p in directory.glob(f"kernelexec-{pid}-*")]


async def test_ready_line_without_echoing_a_given_token() -> None:
    bridge = BridgeProcess()
    try:
        ready = bridge.ready
        assert ready == {
            "event": "ready",
            "url": f"http://127.0.0.1:{bridge.port}",
            "port": bridge.port,
            "pid": bridge.proc.pid,
            "token": None,
        }
        response = await http_get(bridge.port, "/metrics", {"Authorization": f"token {TOKEN}"})
        assert response.code == 200
    finally:
        bridge.proc.send_signal(signal.SIGTERM)
        code, out, err = bridge.wait()
    assert code == 0 and out == ""
    assert TOKEN not in err


async def test_generated_token_is_in_the_ready_line_and_on_stderr_once() -> None:
    bridge = BridgeProcess(env={"KERNELEXEC_TOKEN": ""})
    token = bridge.ready["token"]
    try:
        assert isinstance(token, str) and len(token) >= 32
        client = await Client.connect(bridge.port, token=token)
        client.close()
    finally:
        bridge.proc.send_signal(signal.SIGINT)
        code, out, err = bridge.wait()
    assert code == 0 and out == ""
    assert err.count(token) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
async def test_sigint_and_sighup_stop_cleanly(sig: signal.Signals) -> None:
    bridge = BridgeProcess()
    bridge.proc.send_signal(sig)
    code, out, _ = bridge.wait()
    assert code == 0 and out == ""


async def test_remote_address_needs_allow_remote() -> None:
    command = [sys.executable, "-m", "kernelexec", "serve", "--host", "0.0.0.0", "--port", "0"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "--allow-remote" in refused.stderr
    bridge = BridgeProcess("--host", "0.0.0.0", "--allow-remote")
    bridge.proc.send_signal(signal.SIGTERM)
    code, _, err = bridge.wait()
    assert code == 0 and "other machines" in err


async def test_sigterm_fails_running_messages_and_leaves_nothing() -> None:
    bridge = BridgeProcess()
    try:
        client = await Client.connect(bridge.port)
        code = "import time\ntime.sleep(float(msg['sleep']))\nreturn msg"
        for node_id in ("sleepy", "pair"):
            await client.send(
                type="configure", node_id=node_id, config={"code": code, "workers": 2}
            )
        for node_id in ("sleepy", "pair"):
            assert (await client.state(node_id, "ready", "error"))["state"] == "ready"
        await client.send(type="execute", node_id="sleepy", req_id="r1", msg={"sleep": 60})
        await client.send(type="execute", node_id="pair", req_id="r2", msg={"sleep": 0.1})
        assert (await client.result("r2"))["error"] is None
        kernels = bridge.descendants()
        assert len(kernels) >= 4
        bridge.proc.send_signal(signal.SIGTERM)
        result = await client.result("r1")
        assert result["type"] == "result" and result["error"]["code"] == "POOL_CLOSED"
        # at once, not after the pool's grace: that path would answer with the pool's own
        # "was closed (redeploy or stop)", which does not name the signal
        assert "SIGTERM" in result["error"]["message"]
        with pytest.raises(ConnectionError, match="1001"):
            await client.next(lambda f: False, timeout=30)
        client.close()
        code_, out, _ = bridge.wait()
        assert code_ == 0 and out == ""
        assert not gone(kernels)
        assert not blob_files_of([bridge.proc.pid, *(k.pid for k in kernels)])
    finally:
        bridge.kill()


PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    args = [a.replace("{ppid}", str(os.getpid())) for a in sys.argv[1:]]
    bridge = subprocess.Popen(
        [sys.executable, "-m", "kernelexec", "serve", "--port", "0", *args],
        stdin=subprocess.PIPE if "--watch-stdin" in args else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    sys.stdout.write(bridge.stdout.readline().decode())
    sys.stdout.flush()
    time.sleep(600)
    """
)


@pytest.mark.parametrize("args", [["--watch-stdin"], ["--parent-pid", "{ppid}"]])
async def test_parent_killed_with_sigkill_takes_the_bridge_down(args: list[str]) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *args],
        stdout=subprocess.PIPE,
        env={**os.environ, **bridge_env()},
    )
    try:
        assert parent.stdout is not None
        ready = json.loads(parent.stdout.readline())
        bridge = psutil.Process(ready["pid"])
        client = await Client.connect(ready["port"])
        assert (await client.configure("orphan", code="return msg"))["state"] == "ready"
        kernels = bridge.children(recursive=True)
        assert kernels
        parent.kill()
        parent.wait()
        with pytest.raises(ConnectionError):
            await client.next(lambda f: False, timeout=30)
        client.close()
        assert not gone([bridge, *kernels], timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


async def test_a_port_in_use_is_a_clear_error() -> None:
    bridge = BridgeProcess()
    try:
        command = [sys.executable, "-m", "kernelexec", "serve", "--port", str(bridge.port)]
        second = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1 and second.stdout == ""
        assert f"cannot listen on 127.0.0.1:{bridge.port}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.wait()[0] == 0


async def test_runtime_file_lets_attach_find_the_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernelexec.commands import attach

    bridge = BridgeProcess(env={"KERNELEXEC_RUNTIME_DIR": str(tmp_path)})
    path = tmp_path / f"kernelexec-bridge-{bridge.proc.pid}.json"
    try:
        info = {"url": bridge.ready["url"], "token": TOKEN, "pid": bridge.proc.pid}
        assert json.loads(path.read_text()) == info
        assert path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in tmp_path.iterdir()] == [path.name]
        monkeypatch.setenv("KERNELEXEC_RUNTIME_DIR", str(tmp_path))
        assert [b["url"] for b in attach.discover_bridges()] == [info["url"]]
    finally:
        bridge.proc.send_signal(signal.SIGTERM)
        code, _, _ = bridge.wait()
    assert code == 0 and not path.exists()
