"""The ``kernelexec_request`` shell message (kernelexec/kernel/app.py) and its fallback.

kernelexec's kernel announces the message in kernel_info_reply and answers it without busy/idle
status; a stock ipykernel does not, and gets the same op as an execute_request of
``__kernelexec__.handle()``. Both run a real worker on a real kernel.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from kernelexec.config import PoolConfig
from kernelexec.handles.base import LaunchSpec
from kernelexec.handles.local import LocalKernel, default_launch_spec
from kernelexec.worker import BOOTSTRAP_CODE, Job, Worker

pytestmark = pytest.mark.asyncio(loop_scope="module")

STOCK = LaunchSpec(
    argv=(sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"),
    description="stock ipykernel",
)
CODE = "node.send({'payload': 'early'})\nmsg['payload'] += 1\nreturn msg"


class RecordingKernel(LocalKernel):
    """A LocalKernel that also records the type of every IOPub message and the code of every
    execute_request."""

    def __init__(self, launch: LaunchSpec) -> None:
        super().__init__(launch)
        self.iopub_types: list[str] = []
        self.executed: list[str] = []

    async def execute(
        self, code: str, extra: dict[str, Any], buffers: list[bytes] | None = None
    ) -> dict[str, Any]:
        self.executed.append(code)
        return await super().execute(code, extra, buffers)

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        self.iopub_types.append(msg["header"]["msg_type"])
        super()._on_iopub(msg)


async def started_worker(launch: LaunchSpec, tmp_path: Path) -> tuple[Worker, RecordingKernel]:
    kernel = RecordingKernel(launch)
    config = PoolConfig.from_dict("requests", {"code": CODE, "setup": "import math"})
    worker = Worker(config, kernel, index=0, workdir=str(tmp_path))
    await worker.start()
    return worker, kernel


async def run_one(worker: Worker, req_id: str, payload: int) -> dict[str, Any]:
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    events: list[dict[str, Any]] = []
    worker.on_event = events.append
    [result] = await worker.run([Job(req_id, {"payload": payload}, future)])
    assert [e["outputs"] for e in events if e.get("type") == "send"] == [[[{"payload": "early"}]]]
    return result


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ours(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Worker, Any]]:
    worker, kernel = await started_worker(default_launch_spec(), tmp_path_factory.mktemp("ours"))
    yield worker, kernel
    await worker.stop()


async def test_kernelexecs_kernel_announces_and_answers_kernelexec_requests(
    ours: tuple[Worker, RecordingKernel],
) -> None:
    worker, kernel = ours
    assert kernel._speaks_requests
    kernel.iopub_types.clear()
    result = await run_one(worker, "r1", 41)
    assert result["error"] is None and result["outputs"] == [[{"payload": 42}]]
    # the node.send() event on IOPub, and no busy/idle status around the request
    assert kernel.iopub_types == ["comm_msg"]


async def test_kernelexecs_kernel_installs_its_runtime_with_the_first_request(
    ours: tuple[Worker, RecordingKernel],
) -> None:
    """No bootstrap cell: the kernel said its first kernelexec_request installs the runtime
    (KERNEL_INFO ``installs_runtime``), and the init op did."""
    worker, kernel = ours
    assert kernel.installs_runtime
    assert BOOTSTRAP_CODE not in kernel.executed
    assert (await run_one(worker, "first", 1))["outputs"] == [[{"payload": 2}]]


async def test_a_kernelexec_request_reports_user_errors_like_an_execute(
    ours: tuple[Worker, RecordingKernel],
) -> None:
    worker, _ = ours
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    [result] = await worker.run([Job("bad", {"payload": "text"}, future)])
    assert result["error"]["type"] == "TypeError"
    assert result["error"]["line"] == 2  # the user's own line number


async def test_execute_requests_still_publish_busy_and_idle(
    ours: tuple[Worker, RecordingKernel],
) -> None:
    _, kernel = ours
    kernel.iopub_types.clear()
    reply = await kernel.execute("x = 1", {})
    assert reply["status"] == "ok"
    deadline = time.monotonic() + 30  # IOPub may trail the reply (a generous deadline)
    while kernel.iopub_types.count("status") < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert kernel.iopub_types.count("status") == 2


async def test_a_stock_ipykernel_gets_execute_requests(tmp_path: Path) -> None:
    worker, kernel = await started_worker(STOCK, tmp_path)
    try:
        assert not kernel._speaks_requests and not kernel.installs_runtime
        assert kernel.executed[0] == BOOTSTRAP_CODE  # the runtime comes in a cell
        result = await run_one(worker, "s1", 1)
        assert result["error"] is None and result["outputs"] == [[{"payload": 2}]]
    finally:
        await worker.stop()


async def test_stdin_works_right_after_start() -> None:
    """The first stdin request (context access, input()) right after a kernel start is
    answered: start() waits until the stdin connection is up, not only shell and IOPub."""
    for _ in range(12):
        kernel = LocalKernel(default_launch_spec())

        async def answer(prompt: str) -> str:
            return f"answer to {prompt}"

        kernel.on_stdin = answer
        await kernel.start()
        try:
            code = "__kx_answer = input('q')"
            reply = await asyncio.wait_for(kernel.execute(code, {}), 10)
            assert reply["status"] == "ok", reply
        finally:
            await kernel.shutdown()
