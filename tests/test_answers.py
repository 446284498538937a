"""The answer socket (kernelexec/kernel/answers.py): a local hot kernel writes a plain result
to the node itself, and the bridge then sends none; everything else still comes from the
bridge. A real bridge on the socket pair Node-RED gives it, real kernels, and a listener in a
0700 directory playing the node's side (nodered-node/lib/answers.js is the real one, tested
with Node-RED in nodered-node/test)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from node_end import HEADER, NodeEnd, started_bridge
from server_support import Client, start_server

from kernelexec.config import EnvConfig, PoolConfig
from kernelexec.kernel.answers import MAX_FRAME, answerable, delivered
from kernelexec.protocol import PROTOCOL_VERSION
from kernelexec.worker import answer_offer

TOKEN = "a" * 48


class AnswerListener:
    """The node's answer socket: every frame each connection sends, in order."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="kx-answers-")  # mode 0700
        self.path = os.path.join(self.dir, "answers")
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.server: asyncio.AbstractServer | None = None
        self.connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def offer(self) -> dict[str, str]:
        return {"path": self.path, "token": TOKEN}

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._connected, self.path)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            while True:
                head = await reader.readexactly(HEADER.size)
                body = await reader.readexactly(HEADER.unpack(head)[0])
                await self.frames.put(json.loads(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def send(self, *frames: dict[str, Any]) -> None:
        """Write frames to the kernel that connected last, in one write (as the node does)."""
        writer = list(self.connections.values())[-1]
        writer.write(b"".join(HEADER.pack(len(b)) + b for b in map(_json_bytes, frames)))

    async def introduced(self) -> int:
        """The next kernel's introduction and its ready frame; its pid."""
        hello = await self.next()
        assert hello["token"] == TOKEN and hello["node_id"] == "n1"
        assert await self.next() == {"type": "ready"}
        return int(hello["pid"])

    async def next(self, timeout: float = 60.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.connections.values():
            writer.close()  # its reader sees the end: the task ends
        await asyncio.gather(*self.connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
        shutil.rmtree(self.dir, ignore_errors=True)


def _json_bytes(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode()


def direct(req_id: str, msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "execute", "node_id": "n1", "req_id": req_id, "msg": msg}


@pytest_asyncio.fixture
async def listener() -> AsyncIterator[AnswerListener]:
    answers = AnswerListener()
    await answers.start()
    try:
        yield answers
    finally:
        await answers.close()


@pytest_asyncio.fixture
async def node_end() -> AsyncIterator[NodeEnd]:
    async with started_bridge() as end:
        yield end


async def configured(
    end: NodeEnd, code: str, *, setup: str = "", timeout: float = 0, **greeting: Any
) -> None:
    await end.greet(**greeting)
    config = {"code": code, "setup": setup, "timeout": timeout}
    end.send({"type": "configure", "node_id": "n1", "config": config})
    while (await end.frame("pool_state"))["state"] != "ready":
        pass


def execute(end: NodeEnd, req_id: str, msg: dict[str, Any]) -> None:
    end.send({"type": "execute", "node_id": "n1", "req_id": req_id, "msg": msg})


@pytest.mark.asyncio
async def test_a_plain_result_comes_from_the_kernel_and_not_from_the_bridge(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    code = "if msg.get('send'):\n    node.send({'payload': 'early'})\nreturn msg"
    await configured(node_end, code, answers=listener.offer)
    hello = await listener.next()  # the kernel says who it is
    assert hello["token"] == TOKEN and hello["node_id"] == "n1" and hello["pid"] > 0
    assert await listener.next() == {"type": "ready"}  # no setup: it takes requests at once
    execute(node_end, "r1", {"payload": 1})
    answer = await listener.next()
    assert answer["type"] == "result" and answer["node_id"] == "n1" and answer["req_id"] == "r1"
    assert answer["outputs"] == [[{"payload": 1}]] and answer["error"] is None
    assert "delivered" not in answer and set(answer["timing"]) == {"queued_ms", "exec_ms"}
    # a message with a node.send goes through the bridge (its send frame comes first); the
    # bridge handles r1's RESULT before r2's, so a result frame for r1 would come before it
    execute(node_end, "r2", {"payload": 2, "send": True})
    frames = await node_end.frames_until("result")
    assert [f["type"] for f in frames if f["type"] in ("send", "result")] == ["send", "result"]
    assert frames[-1]["req_id"] == "r2" and frames[-1]["sent"] == 1
    assert listener.frames.empty()


@pytest.mark.asyncio
async def test_a_result_too_large_for_the_socket_comes_from_the_bridge(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    await configured(node_end, "return msg", answers=listener.offer)
    await listener.next()  # the kernel's introduction
    await listener.next()  # ready
    big = "x" * (MAX_FRAME + 1)  # a string: inline, no blob file
    execute(node_end, "r1", {"payload": big})
    result = await node_end.frame("result")
    assert result["req_id"] == "r1" and result["outputs"] == [[{"payload": big}]]
    execute(node_end, "r2", {"payload": 2})  # the socket still serves
    assert (await listener.next())["req_id"] == "r2"


@pytest.mark.asyncio
async def test_without_a_socket_to_connect_to_every_result_comes_from_the_bridge(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    offer = {"path": listener.path + "-missing", "token": TOKEN}
    await configured(node_end, "return msg", answers=offer)
    for n in range(3):
        execute(node_end, f"r{n}", {"payload": n})
        assert (await node_end.frame("result"))["outputs"] == [[{"payload": n}]]


@pytest.mark.asyncio
async def test_a_malformed_offer_is_refused_with_what_to_send(node_end: NodeEnd) -> None:
    node_end.send({
        "type": "hello",
        "protocol_version": PROTOCOL_VERSION,
        "client": "test",
        "answers": {"path": "relative/answers", "token": TOKEN},
    })  # fmt: skip
    error = await node_end.frame("error")
    assert "hello: answers" in error["error"]["message"]
    assert "absolute socket path" in error["error"]["message"]


@pytest.mark.asyncio
async def test_an_offer_over_the_websocket_is_ignored(listener: AnswerListener) -> None:
    """Only the node that started the bridge (the socket pair) may name a path for kernels."""
    server = await start_server()
    client = await Client.connect(server.port, hello=False)
    try:
        hello = {"protocol_version": PROTOCOL_VERSION, "client": "pytest"}
        await client.send(type="hello", answers=listener.offer, **hello)
        assert (await client.next(lambda f: f["type"] in ("welcome", "error")))["type"] == "welcome"
        await client.configure("n1", code="return msg")
        result = await client.execute("n1", "r1", {"payload": 1})
        assert result["outputs"] == [[{"payload": 1}]]
        assert listener.frames.empty()
    finally:
        client.close()
        await server.stop("test done")


def test_only_local_unsandboxed_hot_unordered_kernels_get_the_offer() -> None:
    offer = {"path": "/tmp/x/answers", "token": TOKEN}
    plain = PoolConfig(node_id="n", answers=offer)
    assert answer_offer(plain, fork=False) == offer
    assert answer_offer(plain, fork=True) is None  # cold: a child per message
    assert answer_offer(PoolConfig(node_id="n"), fork=False) is None  # no offer
    assert answer_offer(plain.replace(keep_order=True), fork=False) is None  # results in order
    for env in (
        EnvConfig(memory_limit="512M"),
        EnvConfig(cpu_limit=0.5),
        EnvConfig(network=False),
        EnvConfig(user="nobody"),
    ):
        assert answer_offer(plain.replace(env=env), fork=False) is None, env


def test_a_delivered_result_goes_down_the_pipe_without_what_the_node_has() -> None:
    result: Any = {
        "req_id": "r",
        "outputs": [[{"payload": "x" * 1000}]],
        "logs": [{"level": "info", "text": "t"}],
        "status": [{"text": "s"}],
        "stdout": "printed",
        "error": None,
        "done": True,
        "sent": 0,
        "exec_ms": 1.5,
    }
    slim = delivered(result)
    assert slim["outputs"] == [] and slim["logs"] == [] and slim["stdout"] == ""
    assert slim["status"] == [] and slim["delivered"] is True
    assert (slim["req_id"], slim["error"], slim["exec_ms"], slim["done"]) == ("r", None, 1.5, True)
    assert result["outputs"] and "delivered" not in result  # the node's frame is not touched


def test_what_the_node_may_have_first() -> None:
    result: Any = {"req_id": "r", "outputs": [[]], "sent": 0}
    assert answerable({}, result)
    assert not answerable({}, {**result, "sent": 1})  # its send frames come through the bridge
    assert not answerable({}, {**result, "status_events": 1})
    assert not answerable({}, {**result, "blobs": [{"name": "f", "size": 1}]})
    assert not answerable({"blobs": [{"name": "f", "size": 1}]}, result)  # input files


SEND_OR_DIE = """
import os
if msg.get('die'):
    os._exit(3)
if msg.get('send'):
    node.send({'payload': 'early'})
msg['payload'] = msg['payload'] + base
return msg
"""


@pytest.mark.asyncio
async def test_a_message_the_node_writes_to_the_kernel_runs_after_setup_and_answers_there(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    await configured(node_end, SEND_OR_DIE, setup="base = 40", answers=listener.offer)
    await listener.introduced()  # ready comes after the setup ran
    listener.send(direct("d1", {"payload": 2}))
    answer = await listener.next()
    assert answer["req_id"] == "d1" and answer["outputs"] == [[{"payload": 42}]]
    # with a send, the bridge brings the send frame and then the result; nothing more here
    listener.send(direct("d2", {"payload": 1, "send": True}))
    frames = await node_end.frames_until("result")
    assert [f["type"] for f in frames if f["type"] in ("send", "result")] == ["send", "result"]
    assert frames[-1]["req_id"] == "d2"
    assert frames[-1]["outputs"] == [[{"payload": 41, "send": True}]]
    # the bridge's own path still works, and it sent nothing for d1
    execute(node_end, "r3", {"payload": 0, "send": True})
    frames = await node_end.frames_until("result")
    assert [f.get("req_id") for f in frames if f["type"] == "result"] == ["r3"]
    assert listener.frames.empty()


@pytest.mark.asyncio
async def test_a_kernel_that_dies_on_a_direct_message_fails_it_and_says_the_next_never_started(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    await configured(node_end, SEND_OR_DIE, setup="base = 0", answers=listener.offer)
    pid = await listener.introduced()
    listener.send(direct("d1", {"payload": 1, "die": True}), direct("d2", {"payload": 2}))
    frames = await node_end.frames_until("kernel_lost")
    results = [f for f in frames if f["type"] == "result"]
    assert [(r["req_id"], r["error"]["code"]) for r in results] == [("d1", "KERNEL_DIED")]
    assert frames[-1] == {"type": "kernel_lost", "node_id": "n1", "pid": pid, "started": "d1"}
    # d2 never started: the node sends it to the bridge, which starts a fresh kernel for it
    execute(node_end, "d2", {"payload": 2})
    assert await listener.introduced() != pid
    answer = await listener.next()  # a plain result of the fresh kernel: on the socket
    assert answer["req_id"] == "d2" and answer["outputs"] == [[{"payload": 2}]]


@pytest.mark.asyncio
async def test_a_direct_message_past_the_timeout_fails_with_timeout(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    code = "if msg.get('spin'):\n    while True:\n        pass\nreturn msg"
    await configured(node_end, code, timeout=0.3, answers=listener.offer)
    pid = await listener.introduced()
    listener.send(direct("d1", {"spin": True}))
    answer = await listener.next()  # the kernel's own timeout stopped the code
    assert answer["req_id"] == "d1" and answer["error"]["code"] == "TIMEOUT"
    listener.send(direct("d2", {"payload": 5}))
    assert (await listener.next())["outputs"] == [[{"payload": 5}]]  # the same kernel goes on
    assert pid > 0


@pytest.mark.asyncio
async def test_a_direct_message_that_ignores_the_interrupt_restarts_the_kernel(
    node_end: NodeEnd, listener: AnswerListener
) -> None:
    code = (
        "import signal, threading\n"
        "if msg.get('stuck'):\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGALRM})\n"
        "    threading.Event().wait()  # never set: stuck until the kernel is killed\n"
        "return msg"
    )
    await configured(node_end, code, timeout=0.2, answers=listener.offer)
    pid = await listener.introduced()
    listener.send(direct("d1", {"stuck": True}))
    result = await node_end.frame("result")  # the bridge's backstop: interrupt, then restart
    assert result["req_id"] == "d1" and result["error"]["code"] == "TIMEOUT"
    assert "did not stop when interrupted" in result["error"]["message"]
    assert await listener.introduced() != pid  # the fresh kernel connects, ready again
    listener.send(direct("d2", {"payload": 1}))
    assert (await listener.next())["outputs"] == [[{"payload": 1}]]
