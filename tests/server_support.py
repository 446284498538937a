"""Helpers for the bridge tests: a real bridge (in-process or `python -m kernelexec serve`)
and a WebSocket client that speaks the protocol (tornado.websocket.websocket_connect)."""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from kernelexec.protocol import PROTOCOL_VERSION
from kernelexec.server import Bridge, BridgeOptions, Server

TOKEN = "test-token-0123456789"
READ_TIMEOUT = 60.0


async def start_server(**options: Any) -> Server:
    """An in-process bridge on a free loopback port, real pools."""
    opts = BridgeOptions(**{"context_timeout": 5.0, "max_frame_bytes": 1 << 20, **options})
    server = Server(token=TOKEN, bridge=Bridge(options=opts))
    await server.start()
    return server


def ws_url(port: int, token: str | None = None) -> str:
    query = f"?token={token}" if token is not None else ""
    return f"ws://127.0.0.1:{port}/ws{query}"


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    request = HTTPRequest(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        return await AsyncHTTPClient().fetch(request, raise_error=False)
    except HTTPClientError as exc:  # pragma: no cover - raise_error=False returns instead
        assert exc.response is not None
        return exc.response


class Client:
    """A protocol client; frames read but not yet wanted wait in a backlog.

    It speaks the bridge's protocol version, so (1.1 and later) a WebSocket message may
    carry an array of frames: they are taken one by one, in order; ``messages`` counts the
    WebSocket messages and ``arrays`` those that were arrays."""

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.backlog: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.context: dict[str, Any] | None = None
        self.unread: collections.deque[dict[str, Any]] = collections.deque()
        self.messages = 0
        self.arrays = 0

    @classmethod
    async def connect(
        cls, port: int, *, token: str = TOKEN, hello: bool = True, **headers: str
    ) -> Client:
        request = HTTPRequest(ws_url(port), headers={"Authorization": f"token {token}", **headers})
        client = cls(await websocket_connect(request, max_message_size=1 << 30))
        if hello:
            await client.send(type="hello", protocol_version=PROTOCOL_VERSION, client="pytest")
            welcome = await client.next(lambda f: f["type"] in ("welcome", "error"))
            assert welcome["type"] == "welcome", welcome
        return client

    async def send(self, **frame: Any) -> None:
        await self.ws.write_message(json.dumps(frame))

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.write_message(text, binary=isinstance(text, bytes))

    async def _read(self, timeout: float) -> dict[str, Any]:
        if not self.unread:
            message = await asyncio.wait_for(self.ws.read_message(), timeout)
            if message is None:
                raise ConnectionError(f"closed: {self.ws.close_code} {self.ws.close_reason}")
            data = json.loads(message)
            self.messages += 1
            if isinstance(data, list):
                self.arrays += 1
                self.unread.extend(data)
            else:
                self.unread.append(data)
        frame: dict[str, Any] = self.unread.popleft()
        self.seen.append(frame)
        if frame["type"] == "context_request" and self.context is not None:
            await self._answer_context(frame)
        return frame

    async def _answer_context(self, frame: dict[str, Any]) -> None:
        store = self.context
        assert store is not None
        if "!error" in store:  # Node-RED's context store refuses
            error = store["!error"]
            await self.send(type="context_reply", ctx_id=frame["ctx_id"], value=None, error=error)
            return
        key = f"{frame['scope']}:{frame['key']}"
        value = None
        if frame["op"] == "get":
            value = store.get(key)
        elif frame["op"] == "set":
            store[key] = frame["value"]
        else:
            value = sorted(k.split(":", 1)[1] for k in store if k.startswith(frame["scope"]))
        await self.send(type="context_reply", ctx_id=frame["ctx_id"], value=value, error=None)

    async def next(
        self, want: Callable[[dict[str, Any]], bool], timeout: float = READ_TIMEOUT
    ) -> dict[str, Any]:
        """The first frame (backlog first) for which ``want`` is true."""
        for i, frame in enumerate(self.backlog):
            if want(frame):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            frame = await self._read(max(0.01, deadline - time.monotonic()))
            if want(frame):
                return frame
            self.backlog.append(frame)

    async def result(self, req_id: str, timeout: float = READ_TIMEOUT) -> dict[str, Any]:
        return await self.next(
            lambda f: f.get("req_id") == req_id and f["type"] in ("result", "error"), timeout
        )

    async def state(
        self, node_id: str, *states: str, timeout: float = READ_TIMEOUT
    ) -> dict[str, Any]:
        """The next pool_state of ``node_id`` in one of ``states``; "ready" means every kernel
        is up (a pool serves from its first one, docs/protocol.md)."""
        return await self.next(
            lambda f: (
                f["type"] == "pool_state"
                and f["node_id"] == node_id
                and f["state"] in states
                and not (f["state"] == "ready" and f.get("starting"))
            ),
            timeout,
        )

    async def configure(self, node_id: str, **config: Any) -> dict[str, Any]:
        """Configure a pool and wait until it is ready (or failed)."""
        await self.send(type="configure", node_id=node_id, config=config)
        return await self.state(node_id, "ready", "error")

    async def execute(self, node_id: str, req_id: str, msg: dict[str, Any]) -> dict[str, Any]:
        await self.send(type="execute", node_id=node_id, req_id=req_id, msg=msg)
        return await self.result(req_id)

    def close(self) -> None:
        """Send the close frame, then close the socket now: a close handshake left to finish
        on a loop that a module fixture's teardown is about to close leaves the socket to the
        garbage collector, whose ResourceWarning fails whichever test runs then."""
        self.ws.close()
        stream = getattr(self.ws, "stream", None)
        if stream is not None:
            stream.close()


@functools.cache
def _runtime_dir() -> str:
    """A private runtime directory: test bridges publish their files there, not in ~."""
    path = tempfile.mkdtemp(prefix="kernelexec-test-runtime-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def bridge_env() -> dict[str, str]:
    """Environment for a bridge process started by a test."""
    return {"KERNELEXEC_TOKEN": TOKEN, "KERNELEXEC_RUNTIME_DIR": _runtime_dir()}


class BridgeProcess:
    """`python -m kernelexec serve` as a child process; reads its ready line."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        python_options: tuple[str, ...] = (),
    ) -> None:
        full_env = {**os.environ, **bridge_env(), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *python_options, "-m", "kernelexec", "serve", "--port", "0", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            pass_fds=pass_fds,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"bridge did not start: {err.decode(errors='replace')}")
        self.ready: dict[str, Any] = json.loads(line)
        self.port: int = self.ready["port"]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Exit code, the rest of stdout, stderr."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


def gone(processes: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """The processes still alive (not zombies) after waiting up to ``timeout``."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def still_running(
    processes: list[psutil.Process], timeout: float = 10.0
) -> list[psutil.Process]:
    """Like :func:`gone` without blocking the event loop (for in-process bridges)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.1)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kernel_children() -> list[psutil.Process]:
    """Kernel processes below this test process."""
    return [
        p for p in psutil.Process().children(recursive=True) if "kernel" in " ".join(_cmdline(p))
    ]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


async def wait_for_file(path: os.PathLike[str] | str, timeout: float = 60.0) -> None:
    """Wait until ``path`` exists: the event a test's user code signals by writing a file.

    A poll with a generous deadline (a loaded 2-core machine starts a kernel in seconds)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:.0f} s"
        await asyncio.sleep(0.02)
