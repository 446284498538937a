"""The bridge with real pools and kernels: execute, events, context, kernels, ownership."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from server_support import (
    TOKEN,
    Client,
    http_get,
    start_server,
    still_running,
    wait_for_file,
)

from kernelexec.server import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

TALK = """\
node.send({'payload': 'early-1'})
node.send({'payload': 'early-2'})
node.status({'fill': 'green', 'shape': 'dot', 'text': 'ok'})
node.warn('careful')
msg['payload'] = msg['payload'] * 2
return msg
"""
COUNT = """\
n = flow.get('count') or 0
flow.set('count', n + 1)
msg['payload'] = [n, sorted(global_.keys())]
return msg
"""
BOOM = "x = 1\nraise ValueError('bad ' + str(msg['payload']))\n"
SLOW = """\
import os, time
if msg.get('until'):  # runs until the test creates that file
    while not os.path.exists(msg['until']):
        time.sleep(0.005)
else:
    time.sleep(float(msg.get('sleep', 0.5)))
return msg
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await server.stop("tests done")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server: Server) -> AsyncIterator[Client]:
    client = await Client.connect(server.port)
    client.context = {"global:site": "lab", "global:owner": "me"}
    for node_id, code in (("echo", "return msg"), ("talk", TALK), ("count", COUNT),
                          ("boom", BOOM), ("slow", SLOW)):  # fmt: skip
        await client.send(type="configure", node_id=node_id, config={"code": code})
    for node_id in ("echo", "talk", "count", "boom", "slow"):
        state = await client.state(node_id, "ready", "error")
        assert state["state"] == "ready", state
    yield client
    client.close()


async def until_true(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll the in-process bridge until ``check()`` holds (a generous deadline)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the bridge did not get there in time"
        await asyncio.sleep(0.01)


async def load_reported(server: Server, node_id: str) -> None:
    """Wait until the node's pool is idle and its last load report has been sent."""
    entry = server.bridge.registry.get(node_id)
    assert entry is not None

    def settled() -> bool:
        frame = entry.state_frame()
        return frame["busy"] == 0 and frame["queued"] == 0 and not entry.load_report_pending

    await until_true(settled)


def frames_of(client: Client, req_id: str) -> list[dict[str, Any]]:
    return [f for f in client.seen if f.get("req_id") == req_id]


async def test_echo_result(client: Client) -> None:
    result = await client.execute("echo", "e1", {"payload": 41, "topic": "t", "text": "😀 ü"})
    assert result["type"] == "result" and result["error"] is None
    assert result["node_id"] == "echo" and result["done"] is True
    assert result["outputs"] == [[{"payload": 41, "topic": "t", "text": "😀 ü"}]]
    assert set(result["timing"]) == {"queued_ms", "exec_ms"}


async def test_sends_status_and_logs_come_before_the_result(client: Client) -> None:
    result = await client.execute("talk", "t1", {"payload": 21})
    assert result["outputs"] == [[{"payload": 42}]]
    frames = frames_of(client, "t1")
    sends = [f for f in frames if f["type"] == "send"]
    assert [s["outputs"] for s in sends] == [[[{"payload": "early-1"}]], [[{"payload": "early-2"}]]]
    assert frames[-1] is result and result["sent"] == 2
    assert all(s["node_id"] == "talk" for s in sends)
    status = await client.next(lambda f: f["type"] == "status" and f["node_id"] == "talk")
    assert status["status"]["text"] == "ok"
    warning = [f for f in frames if f["type"] == "log"] or result["logs"]
    assert any(w["level"] == "warn" and w["text"] == "careful" for w in warning)


async def test_context_round_trips_through_node_red(client: Client) -> None:
    first = await client.execute("count", "c1", {})
    second = await client.execute("count", "c2", {})
    assert first["error"] is None, first["error"]
    assert first["outputs"][0][0]["payload"] == [0, ["owner", "site"]]
    assert second["outputs"][0][0]["payload"][0] == 1
    assert client.context is not None and client.context["flow:count"] == 2
    requests = [f for f in client.seen if f["type"] == "context_request"]
    assert {(r["scope"], r["op"]) for r in requests} >= {("flow", "get"), ("flow", "set"),
                                                         ("global", "keys")}  # fmt: skip
    assert all(r["node_id"] == "count" for r in requests)


async def test_a_refused_context_request_raises_in_the_code(client: Client) -> None:
    assert client.context is not None
    client.context["!error"] = "the context store is read-only"
    try:
        result = await client.execute("count", "c3", {})
    finally:
        del client.context["!error"]
    assert result["error"] is not None and result["error"]["line"] == 1
    assert "the context store is read-only" in result["error"]["message"]


async def test_user_error_is_a_result_with_the_user_line(client: Client) -> None:
    result = await client.execute("boom", "b1", {"payload": 7})
    assert result["type"] == "result"
    error = result["error"]
    assert error["code"] == "USER_ERROR" and error["type"] == "ValueError"
    assert "bad 7" in error["message"] and error["line"] == 2


async def test_requests_run_side_by_side_on_different_nodes(
    client: Client, tmp_path: Path
) -> None:
    until = str(tmp_path / "release-s1")
    await client.send(type="execute", node_id="slow", req_id="s1", msg={"until": until})
    echo = await client.execute("echo", "e2", {"payload": 1})
    assert echo["error"] is None
    assert not any(f.get("req_id") == "s1" and f["type"] == "result" for f in client.seen)
    Path(until).touch()
    assert (await client.result("s1"))["error"] is None


async def test_duplicate_running_req_id_is_refused(client: Client, tmp_path: Path) -> None:
    until = str(tmp_path / "release-d1")  # d1 runs until the second d1 has been refused
    await client.send(type="execute", node_id="slow", req_id="d1", msg={"until": until})
    await client.send(type="execute", node_id="slow", req_id="d1", msg={"until": until})
    error = await client.next(lambda f: f["type"] == "error" and f["req_id"] == "d1")
    assert error["error"]["code"] == "BAD_FRAME" and "unique" in error["error"]["message"]
    Path(until).touch()
    result = await client.next(lambda f: f["type"] == "result" and f["req_id"] == "d1")
    assert result["error"] is None


async def test_pool_state_is_not_sent_per_message(server: Server, client: Client) -> None:
    before = len(client.seen)
    for i in range(60):
        await client.send(type="execute", node_id="echo", req_id=f"burst{i}", msg={"i": i})
    for i in range(60):
        assert (await client.result(f"burst{i}"))["error"] is None
    await load_reported(server, "echo")  # the last throttled load report has been sent
    await client.send(type="ping", id="sync")
    await client.next(lambda f: f["type"] == "pong")
    states = [f for f in client.seen[before:] if f["type"] == "pool_state"]
    assert len(states) <= 8, states
    for state in states[-1:]:
        assert state["busy"] == 0 and state["queued"] == 0


async def test_load_changes_are_reported_then_settle(client: Client, tmp_path: Path) -> None:
    client.backlog.clear()
    before = len(client.seen)
    until = str(tmp_path / "release-q")  # the load lasts until the test has seen its report
    for i in range(4):
        await client.send(type="execute", node_id="slow", req_id=f"q{i}", msg={"until": until})
    loaded = await client.state("slow", "ready")
    assert loaded["busy"] == 1 and loaded["total"] == 1  # (the pool batches the queue)
    Path(until).touch()
    for i in range(4):
        assert (await client.result(f"q{i}"))["error"] is None
    idle = await client.next(
        lambda f: f["type"] == "pool_state" and f["node_id"] == "slow" and f["busy"] == 0
    )
    assert idle["queued"] == 0 and idle["state"] == "ready"
    states = [f for f in client.seen[before:] if f["type"] == "pool_state"]
    assert len(states) <= 8  # 1.2 s of load: about one report per 250 ms at most


async def test_list_kernels(client: Client) -> None:
    await client.send(type="list_kernels", node_id="echo")
    kernels = (await client.next(lambda f: f["type"] == "kernels"))["kernels"]
    assert len(kernels) == 1 and kernels[0]["node_id"] == "echo"
    assert psutil.pid_exists(kernels[0]["pid"]) and kernels[0]["connection_file"].endswith(".json")
    await client.send(type="list_kernels", node_id=None)
    every = (await client.next(lambda f: f["type"] == "kernels"))["kernels"]
    assert {"echo", "talk", "count", "boom", "slow"} <= {k["node_id"] for k in every}


async def test_cold_pools_run_messages_but_list_no_attachable_kernel(client: Client) -> None:
    state = await client.configure("cold", code="return msg", mode="cold")
    assert state["state"] == "ready"
    result = await client.execute("cold", "cold1", {"payload": "fresh"})
    assert result["error"] is None and result["outputs"] == [[{"payload": "fresh"}]]
    await client.send(type="list_kernels", node_id="cold")
    assert (await client.next(lambda f: f["type"] == "kernels"))["kernels"] == []
    await client.send(type="close", node_id="cold")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "cold")


async def test_metrics_report_each_pool(server: Server, client: Client) -> None:
    await client.execute("boom", "m1", {"payload": 0})
    for i in range(3):
        await client.execute("echo", f"m-echo{i}", {})
    response = await http_get(server.port, "/metrics", {"Authorization": f"token {TOKEN}"})
    text = response.body.decode()
    assert response.headers["Content-Type"].startswith("text/plain")

    def value(name: str, node_id: str) -> float:
        match = re.search(rf'^{name}{{node_id="{node_id}"}} (\S+)$', text, re.M)
        assert match, (name, node_id)
        return float(match.group(1))

    assert value("kernelexec_messages_total", "echo") >= 3
    assert value("kernelexec_errors_total", "boom") >= 1
    assert value("kernelexec_errors_total", "echo") == 0
    assert value("kernelexec_timeouts_total", "echo") == 0
    assert value("kernelexec_kernel_restarts_total", "echo") == 0
    assert value("kernelexec_workers", "talk") == 1
    assert value("kernelexec_busy_workers", "echo") == 0
    assert value("kernelexec_queue_depth", "echo") == 0
    assert value("kernelexec_pool_ready", "echo") == 1
    assert value("kernelexec_execution_seconds_count", "echo") >= 3
    assert 'kernelexec_execution_seconds_bucket{le="0.01",node_id="echo"}' in text
    assert re.search(r"^kernelexec_connections \d", text, re.M)


async def test_setup_failure_leaves_other_pools_alone(client: Client) -> None:
    config = {"setup": "raise RuntimeError('no database')", "code": "return msg"}
    state = await client.configure("nosetup", **config)
    assert state["state"] == "error" and state["error"]["code"] == "SETUP_FAILED"
    assert "no database" in state["error"]["message"]
    result = await client.execute("nosetup", "ns1", {})
    assert result["error"]["code"] == "SETUP_FAILED"
    assert (await client.execute("echo", "ns2", {"payload": 3}))["error"] is None
    await client.send(type="close", node_id="nosetup")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "nosetup")


async def test_messages_sent_while_the_pool_starts_wait_for_it(client: Client) -> None:
    await client.send(type="configure", node_id="fresh", config={"code": "return msg"})
    await client.send(type="execute", node_id="fresh", req_id="f1", msg={"payload": "early"})
    result = await client.result("f1")
    assert result["error"] is None and result["outputs"] == [[{"payload": "early"}]]
    await client.send(type="close", node_id="fresh")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "fresh")


async def test_messages_beyond_the_queue_limit_are_refused_while_the_pool_starts(
    client: Client, tmp_path: Path
) -> None:
    """Setup blocks reading a FIFO until the test writes it: 2 messages wait for the start
    (queue_limit 2), the next ones are refused at once with QUEUE_FULL, naming the node and the
    limit; the two waiting ones run once the start finishes."""
    go = tmp_path / "go"
    os.mkfifo(go)
    setup = f"open({str(go)!r}).read()"
    config = {"code": "return msg", "setup": setup, "queue_limit": 2}
    await client.send(type="configure", node_id="full-start", config=config)
    await client.state("full-start", "starting")
    for i in range(4):
        await client.send(type="execute", node_id="full-start", req_id=f"fs{i}", msg={"i": i})
    refused = [await client.result(f"fs{i}") for i in (2, 3)]
    for frame in refused:
        assert frame["error"]["code"] == "QUEUE_FULL"
        assert "full-start" in frame["error"]["message"]
        assert "queueLimit 2" in frame["error"]["message"]
    await asyncio.to_thread(go.write_text, "go")  # opens once the kernel's setup reads it
    waited = [await client.result(f"fs{i}") for i in (0, 1)]
    assert [r["error"] for r in waited] == [None, None]
    await client.send(type="close", node_id="full-start")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "full-start")


async def kernel_pids(client: Client, node_id: str) -> list[int]:
    await client.send(type="list_kernels", node_id=node_id)
    kernels = (await client.next(lambda f: f["type"] == "kernels"))["kernels"]
    return [k["pid"] for k in kernels]


async def test_reconfigure_replaces_the_pool(client: Client) -> None:
    assert (await client.configure("re", code="return msg"))["state"] == "ready"
    old = await kernel_pids(client, "re")
    assert old
    await client.send(type="execute", node_id="re", req_id="f2", msg={})
    state = await client.configure("re", code="msg['payload'] = 'v2'\nreturn msg")
    assert state["state"] == "ready"
    assert (await client.result("f2"))["type"] == "result"  # the old pool answered or closed
    assert (await client.execute("re", "f3", {}))["outputs"] == [[{"payload": "v2"}]]
    assert not await still_running([psutil.Process(p) for p in old if psutil.pid_exists(p)])
    await client.send(type="close", node_id="re")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "re")


async def test_close_answers_closed_and_stops_the_kernels(client: Client) -> None:
    assert (await client.configure("shut", code="return msg"))["state"] == "ready"
    pids = await kernel_pids(client, "shut")
    assert pids
    await client.send(type="close", node_id="shut")
    closed = await client.next(lambda f: f["type"] == "closed")
    assert closed["node_id"] == "shut"
    assert not await still_running([psutil.Process(p) for p in pids if psutil.pid_exists(p)])
    await client.send(type="execute", node_id="shut", req_id="f4", msg={})
    assert (await client.result("f4"))["error"]["code"] == "NOT_CONFIGURED"


async def test_another_connection_cannot_drive_my_pool(server: Server, client: Client) -> None:
    other = await Client.connect(server.port)
    try:
        await other.send(type="execute", node_id="echo", req_id="x1", msg={})
        error = await other.result("x1")
        assert error["type"] == "error" and error["error"]["code"] == "NOT_CONFIGURED"
        assert "another" in error["error"]["message"]
    finally:
        other.close()


async def test_closing_the_connection_closes_its_pools(server: Server) -> None:
    mine = await Client.connect(server.port)
    state = await mine.configure("leaver", code="return msg", workers=2)
    assert state["state"] == "ready"
    pids = await kernel_pids(mine, "leaver")
    assert len(pids) == 2
    await mine.send(type="execute", node_id="leaver", req_id="l1", msg={})
    mine.close()
    assert not await still_running([psutil.Process(p) for p in pids], timeout=30)
    deadline = time.monotonic() + 30
    while server.bridge.registry.get("leaver") is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.bridge.registry.get("leaver") is None


async def test_context_request_nobody_answers_times_out_clearly() -> None:
    server = await start_server(context_timeout=0.5)
    client = await Client.connect(server.port)
    try:
        state = await client.configure("deaf", code="return {'payload': flow.get('x')}")
        assert state["state"] == "ready"
        result = await client.execute("deaf", "q1", {})
        request = next(f for f in client.seen if f["type"] == "context_request")
        assert request["ctx_id"] and request["key"] == "x"
        assert result["error"] is not None
        assert "did not answer" in result["error"]["message"]
        late = {"type": "context_reply", "ctx_id": request["ctx_id"], "value": 1, "error": None}
        await client.send(**late)
        error = await client.next(lambda f: f["type"] == "error")
        assert "expired" in error["error"]["message"]
    finally:
        client.close()
        await server.stop("test done")


@pytest.mark.parametrize("when", ["as-it-starts", "during-setup"])
async def test_close_while_starting_leaves_no_kernel(
    server: Server, client: Client, tmp_path: Path, when: str
) -> None:
    """The start can never finish (its setup blocks), so the close always lands while the
    pool is starting: right after the ``starting`` frame (the kernel process is being
    spawned or greeted), or once the kernel is up and inside its setup (a file says so)."""
    node_id = f"brief-{when}"
    in_setup = tmp_path / "in-setup"
    setup = f"import pathlib, time\npathlib.Path({str(in_setup)!r}).touch()\ntime.sleep(600)"
    before = set(p.pid for p in psutil.Process().children(recursive=True))
    config = {"code": "return msg", "setup": setup}
    await client.send(type="configure", node_id=node_id, config=config)
    await client.state(node_id, "starting")
    await client.send(type="execute", node_id=node_id, req_id=f"br-{when}", msg={})
    if when == "during-setup":
        await wait_for_file(in_setup)
    await client.send(type="close", node_id=node_id)
    result = await client.result(f"br-{when}")
    assert result["type"] == "result" and result["error"]["code"] == "POOL_CLOSED"
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == node_id)
    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not await still_running(new)


async def test_a_reconnecting_node_waits_for_its_old_pool_to_stop(server: Server) -> None:
    config = {
        "stop": "import pathlib, time\ntime.sleep(1)\npathlib.Path('stopped').write_text('y')",
        "setup": "import pathlib\nSTOPPED_BEFORE = pathlib.Path('stopped').exists()",
        "code": "msg['payload'] = STOPPED_BEFORE\nreturn msg",
    }
    first = await Client.connect(server.port)
    assert (await first.configure("again", **config))["state"] == "ready"
    assert (await first.execute("again", "a1", {}))["outputs"] == [[{"payload": False}]]
    old = server.bridge.registry.get("again")
    assert old is not None
    first.close()
    await until_true(lambda: old.state == "closed")  # the bridge noticed; the stop code runs
    second = await Client.connect(server.port)
    try:
        assert (await second.configure("again", **config))["state"] == "ready"
        assert (await second.execute("again", "a2", {}))["outputs"] == [[{"payload": True}]]
    finally:
        second.close()


HUGE = """\
big = 'x' * 2_000_000
if msg['what'] == 'result':
    return {'payload': big}
if msg['what'] == 'send':
    node.send({'payload': big})
if msg['what'] == 'context':
    flow.set('big', big)
return msg
"""


async def test_frames_too_large_for_the_client_become_errors(client: Client) -> None:
    """The client refuses frames above max_frame_bytes by closing the connection: the bridge
    reports them instead, so one node's huge output costs no other node anything."""
    assert (await client.configure("huge", code=HUGE))["state"] == "ready"
    result = await client.execute("huge", "h1", {"what": "result"})
    assert result["type"] == "result" and result["error"]["code"] == "FRAME_TOO_LARGE"
    result = await client.execute("huge", "h2", {"what": "send"})
    assert result["error"] is None and result["outputs"] == [[{"what": "send"}]]
    report = next(f for f in frames_of(client, "h2") if f["type"] == "log")
    assert report["level"] == "error" and "max_frame_bytes" in report["text"]
    result = await client.execute("huge", "h3", {"what": "context"})
    assert "max_frame_bytes" in result["error"]["message"]
    assert (await client.execute("echo", "h4", {"payload": "still here"}))["error"] is None


async def test_a_deleted_node_loses_its_working_directory_a_closed_one_keeps_it(
    client: Client,
) -> None:
    from kernelexec.envs import node_workdir

    code = "save_file('kept.txt', 'data')\nresult = 'saved'"
    for node_id, removed in (("keeps", False), ("deleted", True)):
        assert (await client.configure(node_id, code=code))["state"] == "ready"
        result = await client.execute(node_id, f"w-{node_id}", {})
        assert result["error"] is None
        assert (node_workdir(node_id) / "kept.txt").read_text() == "data"
        await client.send(type="close", node_id=node_id, removed=removed)
        await client.next(lambda f, n=node_id: f["type"] == "closed" and f["node_id"] == n)
    assert (node_workdir("keeps") / "kept.txt").exists()
    assert not node_workdir("deleted").exists()


async def test_a_pool_serves_from_its_first_kernel_while_the_others_start(
    client: Client, tmp_path: Path
) -> None:
    """The first kernel up answers; the second, held in its setup by a FIFO, joins later."""
    claimed, gate = tmp_path / "claimed", tmp_path / "gate"
    os.mkfifo(gate)
    setup = (  # the first kernel to get here goes on; the other waits for the test
        "import os\n"
        f"try:\n    os.close(os.open({str(claimed)!r}, os.O_CREAT | os.O_EXCL))\n"
        f"except FileExistsError:\n    open({str(gate)!r}).read()\n"
    )
    config = {"code": "return msg", "workers": 2, "setup": setup}
    await client.send(type="configure", node_id="early", config=config)
    first = await client.next(lambda f: f["type"] == "pool_state" and f["node_id"] == "early"
                              and f["state"] in ("ready", "error"))  # fmt: skip
    assert first["state"] == "ready" and first["starting"] == 1 and first["total"] == 2, first
    result = await client.execute("early", "e1", {"payload": "first"})
    assert result["error"] is None and result["outputs"] == [[{"payload": "first"}]]
    # the held kernel's setup reads this, then ends (in a thread: opening a FIFO to write
    # waits for its reader, and the bridge runs on this loop)
    await asyncio.to_thread(gate.write_text, "go")
    everyone = await client.state("early", "ready", "error")
    assert everyone["state"] == "ready" and everyone["starting"] == 0 and everyone["total"] == 2
    await client.send(type="close", node_id="early")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "early")
