"""Faults while other messages are in flight, on a real `kernelexec serve` process.

After each fault: every message got exactly one answer, the node works again, and once the
bridge is stopped no process of ours (stress_support.KERNEL_PATTERN) and no new
/dev/shm/kernelexec-* file is left. Figures: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from server_support import Client, bridge_env, still_running
from stress_support import StressBridge, blob_files, take_blobs

from kernelexec.kernel import blobs

pytestmark = pytest.mark.asyncio(loop_scope="function")

MiB = 1 << 20


@pytest_asyncio.fixture
async def bridge() -> AsyncIterator[StressBridge]:
    """A bridge process per test; afterwards nothing of it may be left."""
    files_before = blob_files()
    bridge = StressBridge()
    try:
        yield bridge
    finally:
        code, err, procs, files = await bridge.stop_and_wait_clean(files_before)
        assert code == (-9 if bridge.killed else 0), err[-2000:]
        assert not procs, f"processes left behind: {procs}"
        assert not files, f"blob files left behind: {files}"


async def results(client: Client, req_ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
    """Exactly one result per req_id (a second one would show up in client.seen)."""
    out = {}
    for req_id in req_ids:
        frame = await client.result(req_id, timeout)
        take_blobs(frame)
        out[req_id] = frame
    return out


def answers_per_req(client: Client, req_ids: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(req_ids, 0)
    for frame in client.seen:
        if frame["type"] in ("result", "error") and frame.get("req_id") in counts:
            counts[frame["req_id"]] += 1
    return counts


async def works(client: Client, node_id: str, tag: str = "again") -> None:
    result = await client.execute(node_id, f"{node_id}-{tag}", {"payload": tag})
    assert result["error"] is None, result["error"]


SLEEPY = """\
import os, pathlib, time
if msg.get('mark'):  # tells the test which kernel runs a message: a file named by its pid
    (pathlib.Path(msg['mark']) / str(os.getpid())).touch()
if msg.get('hold'):  # and holds the message until the test creates that file
    while not os.path.exists(msg['hold']):
        time.sleep(0.005)
time.sleep(msg.get('sleep', 0.2))
msg['pid'] = os.getpid()
return msg
"""


async def wait_for_files(directory: Path, names: set[str] | int, timeout: float = 60.0) -> None:
    """Wait until ``directory`` holds the files ``names`` (or that many files)."""
    deadline = time.monotonic() + timeout
    while True:
        present = {p.name for p in directory.iterdir()}
        if names <= present if isinstance(names, set) else len(present) >= names:
            return
        assert time.monotonic() < deadline, f"{directory} holds {present}, want {names}"
        await asyncio.sleep(0.02)


async def test_kill_9_of_a_kernel_with_messages_in_flight(
    bridge: StressBridge, tmp_path: Path
) -> None:
    client = await bridge.connect()
    state = await client.configure("k9", code=SLEEPY, workers=2)
    assert state["state"] == "ready", state
    await client.send(type="list_kernels", node_id="k9")
    kernels = (await client.next(lambda f: f["type"] == "kernels"))["kernels"]
    victim = kernels[0]["pid"]
    req_ids = [f"k9-{i}" for i in range(40)]
    marks, release = tmp_path / "running", tmp_path / "release"
    marks.mkdir()
    for req_id in req_ids:
        msg = {"payload": req_id, "mark": str(marks), "hold": str(release)}
        await client.send(type="execute", node_id="k9", req_id=req_id, msg=msg)
    await wait_for_files(marks, {str(victim)})  # the victim runs a message (held)
    os.kill(victim, signal.SIGKILL)
    release.touch()
    got = await results(client, req_ids)
    assert set(answers_per_req(client, req_ids).values()) == {1}
    died = [r for r in got.values() if r["error"] and r["error"]["code"] == "KERNEL_DIED"]
    ok = [r for r in got.values() if r["error"] is None]
    assert died, "the messages on the killed kernel fail with KERNEL_DIED"
    assert len(died) + len(ok) == len(req_ids), [r["error"] for r in got.values()]
    assert all(r["outputs"][0][0]["payload"] == r["req_id"] for r in ok)
    for i in range(4):  # both workers serve again, the dead one replaced
        await works(client, "k9", f"after{i}")
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"


async def test_kill_9_of_the_bridge_leaves_no_kernel(bridge: StressBridge, tmp_path: Path) -> None:
    """The bridge dies hard with messages in flight: its kernels notice and exit."""
    client = await bridge.connect()
    await client.configure("kb", code=SLEEPY, workers=2)
    for i in range(10):
        msg = {"mark": str(tmp_path), "hold": str(tmp_path / "never")}
        await client.send(type="execute", node_id="kb", req_id=f"kb-{i}", msg=msg)
    await wait_for_files(tmp_path, 2)  # both kernels run a message (held until they die)
    kernels = bridge.kernel_pids()
    assert len(kernels) >= 2
    await client.send(type="list_kernels", node_id="kb")
    listed = (await client.next(lambda f: f["type"] == "kernels"))["kernels"]
    files = [k["connection_file"] for k in listed]
    for path in list(files):
        info = json.loads(Path(path).read_text())
        if info["transport"] == "ipc":
            files += [f"{info['ip']}-{info[p]}" for p in info if p.endswith("_port")]
    assert all(os.path.exists(f) for f in files)
    bridge.killed = True
    bridge.proc.kill()
    with pytest.raises(ConnectionError):
        await client.result("kb-0", timeout=30)
    # the Node-RED node then starts a new bridge; its start sweeps dead writers' blob files
    gone_by = time.monotonic() + 30
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in kernels):
        assert time.monotonic() < gone_by, "kernels outlived their bridge by 30 s"
        await asyncio.sleep(0.2)
    # nobody else will remove their connection files and ipc sockets (regression: they piled up)
    assert [f for f in files if os.path.exists(f)] == []
    # nor the dead bridge's runtime file (for kernelexec attach, it holds the token): the next
    # bridge to start removes it (regression: one more file per crash)
    runtime_dir = bridge_env()["KERNELEXEC_RUNTIME_DIR"]
    published = Path(runtime_dir) / f"kernelexec-bridge-{bridge.proc.pid}.json"
    assert published.exists()
    successor = StressBridge()
    try:
        assert not published.exists()
    finally:
        successor.stop()


async def test_timeout_in_the_middle_of_64_mib_buffer_transfers(bridge: StressBridge) -> None:
    """A 64 MiB input blob, code that keeps sending 64 MiB output blobs until the alarm fires
    (often while one is being written): every output file is removed, the kernel survives."""
    client = await bridge.connect()
    code = (
        "data = msg['payload']\n"
        "assert len(data) == 64 * 2**20\n"
        "while True:\n"
        "    node.send({'payload': data[::-1]})\n"
    )
    await client.configure("tb", code=code, timeout=1.5, workers=1)
    await client.configure("echo", code="return msg")
    payload = os.urandom(MiB) * 64
    sent_blobs = 0
    for i in range(3):
        req_id = f"tb-{i}"
        entry = blobs.write_blob(payload, req_id)
        await client.send(type="execute", node_id="tb", req_id=req_id,
                          msg={"payload": blobs.index_ref(0)}, blobs=[entry])
        echo = await client.execute("echo", f"echo-{i}", {"payload": i})  # another node, meanwhile
        assert echo["error"] is None
        while True:
            frame = await client.next(
                lambda f, r=req_id: f.get("req_id") == r and f["type"] in ("send", "result")
            )
            # every file a send frame names is still there to read (the runtime keeps the files
            # it handed over, see test_blobs_sent_before_a_failure_stay_readable)
            datas = take_blobs(frame)
            if frame["type"] == "result":
                break
            assert all(len(d) == 64 * MiB and d[:16] == payload[::-1][:16] for d in datas)
            sent_blobs += len(datas)
        blobs.remove_table([entry], req_id)  # the writer of an input removes it when it ends
        assert frame["error"] and frame["error"]["code"] == "TIMEOUT", frame["error"]
    assert sent_blobs >= 3
    await works(client, "echo")


async def test_code_that_forks_and_hangs_is_stopped_with_all_its_children(
    bridge: StressBridge,
) -> None:
    code = """\
import os, subprocess, time
if msg['payload'] == 'fork':
    kids = [subprocess.Popen(['sleep', '1000']).pid,
            subprocess.Popen(['sh', '-c', 'sleep 1001 & sleep 1002; wait']).pid,
            subprocess.Popen(['sleep', '1003'], start_new_session=True).pid]
    pid = os.fork()
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
    kids.append(pid)
    flow.set('kids', kids)
    time.sleep(1000)
return msg
"""
    client = await bridge.connect()
    client.context = {}
    await client.configure("fk", code=code, timeout=2)
    result = await client.execute("fk", "fk-1", {"payload": "fork"})
    assert result["error"]["code"] == "TIMEOUT", result["error"]
    kids = client.context["flow:kids"]
    sleepers = [
        p for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[-1:] and (p.info["cmdline"] or [""])[-1] in
        ("1000", "1001", "1002", "1003")
    ]  # fmt: skip
    processes = sleepers + [psutil.Process(k) for k in kids if psutil.pid_exists(k)]
    # SIGKILLed before the result left, but a loaded machine may not have run their exit yet:
    # wait for it (a process that was never killed stays and fails the assertion)
    alive = [p.pid for p in await still_running(processes, timeout=10)]
    assert not alive, f"children of the timed-out code still alive: {alive}"
    await works(client, "fk")


@pytest.fixture
def memory_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The env option of a memory-limited node. A root bridge fences kernels in only as
    another user (docs/environments.md), who needs an interpreter and directories it can
    reach: a managed environment and a working directory under a 0755 directory, set here in
    the environment the bridge fixture (requested after this one) starts from, and the
    runtime directory."""
    if os.geteuid() != 0:
        yield {"memory_limit": "300M"}
        return
    user = request.getfixturevalue("test_user")
    shared = Path(tempfile.mkdtemp(prefix="kx-stress-fenced-"))
    shared.chmod(0o755)
    for name, var in (("envs", "KERNELEXEC_ENV_DIR"), ("work", "KERNELEXEC_WORK_DIR")):
        (shared / name).mkdir(mode=0o755)
        monkeypatch.setenv(var, str(shared / name))
    runtime = Path(bridge_env()["KERNELEXEC_RUNTIME_DIR"])  # holds the pools' runtime dirs
    runtime.chmod(0o711)  # the user passes through to its own (the bridge file stays 0600)
    python = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else "python3"
    yield {"memory_limit": "300M", "user": user, "python": python, "requirements": ["six"]}
    runtime.chmod(0o700)
    shutil.rmtree(shared, ignore_errors=True)


async def test_code_that_fills_memory_under_a_memory_limit(
    memory_env: dict[str, Any], bridge: StressBridge
) -> None:
    """env.memory_limit (cgroup, else RLIMIT_AS): a clear error, the node works again."""
    code = (
        "if msg['payload'] == 'fill':\n"
        "    hog = []\n"
        "    while True:\n"
        "        hog.append(bytearray(16 * 2**20))\n"
        "return msg\n"
    )
    client = await bridge.connect()
    state = await client.configure("mem", code=code, env=memory_env)
    if state["state"] == "error" and state["error"]["code"] == "ENV_FAILED":
        pytest.skip(f"no memory limit on this host: {state['error']['message']}")
    assert state["state"] == "ready", state
    await client.configure("bystander", code=SLEEPY)
    await client.send(type="execute", node_id="bystander", req_id="by-1", msg={"sleep": 1})
    result = await client.execute("mem", "mem-1", {"payload": "fill"})
    error = result["error"]
    assert error is not None
    if error["code"] == "KERNEL_DIED":  # cgroup: the OOM killer, and the bridge says so
        assert "memory limit" in error["message"] and "300M" in error["message"], error
    else:  # RLIMIT_AS: a MemoryError in the user's code
        assert error["code"] == "USER_ERROR" and error["type"] == "MemoryError", error
    assert (await client.result("by-1"))["error"] is None
    await works(client, "mem")


HOSTILE_OUTPUT = [
    "sys.stdout.close()",
    "sys.stderr.close()",
    "os.close(1)",
    "os.close(2)",
    "sys.stdout = open(os.devnull, 'w')",
    "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)",
]


async def test_code_that_closes_or_redirects_its_output(bridge: StressBridge) -> None:
    """Later messages still run and their print() output is still captured (one node, so one
    kernel, per way of doing it)."""
    client = await bridge.connect()
    nodes = {f"out{i}": hostile for i, hostile in enumerate(HOSTILE_OUTPUT)}
    for node_id, hostile in nodes.items():
        code = (
            "import os, sys\n"
            f"if msg['payload'] == 'hostile':\n    {hostile}\n"
            "print('still printing', msg['payload'])\n"
            "return msg\n"
        )
        await client.send(type="configure", node_id=node_id, config={"code": code})
    for node_id in nodes:
        assert (await client.state(node_id, "ready", "error"))["state"] == "ready"
    for node_id, hostile in nodes.items():
        first = await client.execute(node_id, f"{node_id}-1", {"payload": "hostile"})
        assert first["error"] is None or first["error"]["code"] == "USER_ERROR", first["error"]
        for i in range(3):
            later = await client.execute(node_id, f"{node_id}-{i + 2}", {"payload": i})
            assert later["error"] is None, (hostile, later["error"])
            assert later["outputs"] == [[{"payload": i}]], hostile
            assert later["stdout"] == f"still printing {i}\n", (hostile, later)


async def test_setup_that_raises_fails_messages_clearly_then_a_fixed_setup_works(
    bridge: StressBridge,
) -> None:
    client = await bridge.connect()
    state = await client.configure("st", setup="x = 1\nraise RuntimeError('no database')")
    assert state["state"] == "error" and state["error"]["code"] == "SETUP_FAILED", state
    assert "no database" in state["error"]["message"] and state["error"]["line"] == 2
    result = await client.execute("st", "st-1", {"payload": 1})
    assert result["error"]["code"] == "SETUP_FAILED", result["error"]
    first = set(bridge.kernel_pids())
    deadline = time.monotonic() + 60  # a retry (backoff 1 s, then 2 s...) restarts the kernel
    while set(bridge.kernel_pids()) <= first:
        assert time.monotonic() < deadline, "no retry of the failed setup within 60 s"
        await asyncio.sleep(0.05)
    state = await client.configure("st", setup="x = 1")
    assert state["state"] == "ready", state
    await works(client, "st")


async def test_stop_code_that_hangs_does_not_hold_shutdown(bridge: StressBridge) -> None:
    stop = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(1000)\n"
    )
    client = await bridge.connect()
    await client.configure("hang", stop=stop, workers=2)
    await client.send(type="execute", node_id="hang", req_id="h-1", msg={"payload": 1})
    await client.send(type="close", node_id="hang")
    await client.next(lambda f: f["type"] == "closed", timeout=60)  # not held by the stop code
    assert (await client.result("h-1"))["type"] == "result"
    # and a whole-bridge shutdown with such a node still finishes in bounded time
    await client.configure("hang2", stop=stop)
    bridge.close_clients()
    code, _out, err = bridge.stop(timeout=60)  # bounded: it raises past the deadline
    assert code == 0, err[-2000:]


async def test_blobs_sent_before_a_failure_stay_readable(bridge: StressBridge) -> None:
    """node.send() of a big Buffer, then the code raises (or times out): the sent message's
    blob file is the reader's, so it must still be there when the node reads it after the
    result (regression: the runtime removed every file of a failed request)."""
    code = (
        "import time\n"
        "node.send({'payload': bytes(range(256)) * 4096})\n"
        "if msg['payload'] == 'raise':\n"
        "    raise ValueError('after the send')\n"
        "time.sleep(100)\n"
    )
    client = await bridge.connect()
    await client.configure("sb", code=code, timeout=1)
    for how, code_name in (("raise", "USER_ERROR"), ("hang", "TIMEOUT")):
        req_id = f"sb-{how}"
        await client.send(type="execute", node_id="sb", req_id=req_id, msg={"payload": how})
        result = await client.result(req_id)
        assert result["error"]["code"] == code_name, result["error"]
        sent = [f for f in client.seen if f["type"] == "send" and f.get("req_id") == req_id]
        assert len(sent) == 1
        assert take_blobs(sent[0]) == [bytes(range(256)) * 4096]


async def test_configure_storm_leaves_no_kernel_behind(bridge: StressBridge) -> None:
    """A node reconfigured 30 times, each time while the previous pool may still be starting
    (what a redeploy storm does): in the end only the last pool's kernels are alive."""
    client = await bridge.connect()
    for i in range(30):
        config = {"code": f"return {{'payload': {i}}}", "workers": 2, "setup": "x = 1"}
        await client.send(type="configure", node_id="storm", config=config)
        await asyncio.sleep((i % 7) * 0.05)  # 0 to 300 ms: cancels starts at every stage
    result = await client.execute("storm", "storm-last", {"payload": None})
    assert result["outputs"] == [[{"payload": 29}]], json.dumps(result)
    deadline = time.monotonic() + 30
    while len(bridge.kernel_pids()) != 2:
        assert time.monotonic() < deadline, f"kernels alive: {len(bridge.kernel_pids())}, want 2"
        await asyncio.sleep(0.2)
