"""A real IPython kernel with the kernelexec runtime installed, driven like the worker does.

Used by tests/test_runtime_kernel.py: ops go as execute_requests with a "kernelexec" field,
answers come back in the reply payload, events as IOPub comm_msgs, context requests as
stdin input_requests answered by ``on_context``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import KernelManager
from jupyter_core.utils import ensure_event_loop

BOOTSTRAP = (
    "import kernelexec.kernel.runtime as r; __kernelexec__ = r.install(get_ipython()); del r"
)
HANDLE = "__kernelexec__.handle()"
COMM_ID = "kernelexec-events"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MemoryStore:
    """Answers context requests the way the bridge's in-memory store does."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        scope = self.data.setdefault(request["scope"], {})
        if request["op"] == "get":
            return {"value": scope.get(request["key"]), "error": None}
        if request["op"] == "set":
            scope[request["key"]] = request["value"]
            return {"value": None, "error": None}
        return {"value": sorted(scope), "error": None}


class KernelSession:
    """One kernel process (ipykernel_launcher) with the runtime installed."""

    def __init__(self, cwd: str) -> None:
        self.km = KernelManager(shutdown_wait_time=2.0)
        self.km._kernel_spec = KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="kexec-test",
            language="python",
            interrupt_mode="signal",
        )
        env = {**os.environ, "PYTHONPATH": ROOT}
        env.pop("JPY_PARENT_PID", None)
        self.km.start_kernel(env=env, cwd=cwd)
        self._loop = ensure_event_loop()  # the loop the blocking manager runs on
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.events: list[dict[str, Any]] = []
        self.streams: list[str] = []
        #: msg_ids of the requests whose IOPub ``status: idle`` has arrived (their last message).
        self.idle: set[str] = set()
        self.last_msg_id = ""
        self.on_context: Callable[[dict[str, Any]], dict[str, Any]] = MemoryStore()
        reply = self.execute(BOOTSTRAP)
        assert reply["content"]["status"] == "ok", reply["content"]

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)

    def execute(
        self, code: str, extra: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Send one execute_request; serve stdin and collect events until the reply."""
        content: dict[str, Any] = {
            "code": code,
            "silent": True,
            "store_history": False,
            "allow_stdin": True,
            "stop_on_error": False,
            "user_expressions": {},
        }
        if extra is not None:
            content["kernelexec"] = extra
        msg = self.kc.session.msg("execute_request", content)
        self.kc.shell_channel.send(msg)
        msg_id = self.last_msg_id = msg["header"]["msg_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._poll_once(msg_id, deadline)
            if reply is not None:
                self.drain(0.05)
                return reply
        raise TimeoutError(f"no execute_reply within {timeout} s")

    def _poll_once(self, msg_id: str, deadline: float) -> dict[str, Any] | None:
        poller = zmq.Poller()
        for channel in (self.kc.shell_channel, self.kc.iopub_channel, self.kc.stdin_channel):
            poller.register(channel.socket, zmq.POLLIN)
        wait = max(0.0, min(0.1, deadline - time.monotonic()))
        ready = dict(poller.poll(int(wait * 1000)))
        if self.kc.stdin_channel.socket in ready:
            self._serve_stdin()
        if self.kc.iopub_channel.socket in ready:
            self._read_iopub()
        if self.kc.shell_channel.socket in ready:
            reply: dict[str, Any] = self.kc.shell_channel.get_msg(timeout=0)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply
        return None

    def _serve_stdin(self) -> None:
        request = self.kc.stdin_channel.get_msg(timeout=0)
        prompt = json.loads(request["content"]["prompt"])
        self.kc.input(json.dumps(self.on_context(prompt)))

    def _read_iopub(self) -> None:
        while self.kc.iopub_channel.msg_ready():
            msg = self.kc.iopub_channel.get_msg(timeout=0)
            kind = msg["header"]["msg_type"]
            if kind == "comm_msg" and msg["content"].get("comm_id") == COMM_ID:
                self.events.append(msg["content"]["data"])
            elif kind == "stream":
                self.streams.append(msg["content"]["text"])
            elif kind == "status" and msg["content"].get("execution_state") == "idle":
                self.idle.add(msg["parent_header"].get("msg_id", ""))

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.kc.iopub_channel.socket.poll(10):
                self._read_iopub()
            if self.kc.stdin_channel.socket.poll(0):
                self._serve_stdin()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Read IOPub until the last request's ``status: idle``: everything it published
        (streams, events) has been read then."""
        end = time.monotonic() + timeout
        while self.last_msg_id not in self.idle:
            assert time.monotonic() < end, f"no idle status for {self.last_msg_id}"
            self.drain(0.05)

    def wait_events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < end:
            self.drain(0.05)
        return self.events

    def op(self, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Run an op; its answer (the "kernelexec" entry of the reply payload)."""
        reply = self.execute(HANDLE, request, timeout)
        assert reply["content"]["status"] == "ok", reply["content"]
        for item in reply["content"].get("payload") or ():
            if item.get("source") == "kernelexec":
                data: dict[str, Any] = item["data"]
                return data
        raise AssertionError(f"no kernelexec payload in {reply['content']}")

    def run(
        self,
        msgs: list[dict[str, Any]],
        timeout: float = 0,
        prefix: str = "r",
        tables: list[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One batch; ``tables``: the blob table of each message (none by default)."""
        batch = [
            {"req_id": f"{prefix}{i}", "msg": m, "timeout": timeout} for i, m in enumerate(msgs)
        ]
        for item, table in zip(batch, tables or [], strict=False):
            item["blobs"] = table
        results: list[dict[str, Any]] = self.op({"op": "run", "batch": batch})["results"]
        return results

    def init(self, code: str, **node: Any) -> dict[str, Any]:
        info = {
            "node_id": "k1",
            "name": "kt",
            "outputs": 1,
            "code": code,
            "workdir": "",
            "blob_dir": None,
            "fork": False,
            **node,
        }
        self.events.clear()
        return self.op({"op": "init", "node": info})

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        # the blocking manager ran its coroutines on a loop of this thread: close it
        self._loop.close()
        asyncio.set_event_loop(None)
