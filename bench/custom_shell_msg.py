"""Experiment: what a custom shell message would save against an execute_request per message.

kernelexec runs every batch as an execute_request of the constant cell
``__kernelexec__.handle()``. ipykernel also dispatches any shell message type registered in
``kernel.shell_handlers``; a ``kernelexec_request`` handled there skips IPython's run_cell
(transformers, compile, pre/post-execute events, the execute bookkeeping). This script measures
both on one tuned local kernel, interleaved, with the same runtime and message:

    .venv/bin/python bench/custom_shell_msg.py

It is a measurement only: kernelexec does not use the custom message (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kernelexec.kernels.local import LocalKernel, default_launch_spec
from kernelexec.worker import BOOTSTRAP_CODE, HANDLE_CODE

REGISTER = """
_kx_kernel = get_ipython().kernel
async def _kx_request(stream, ident, parent):
    answer = __kernelexec__.dispatch(parent["content"].get("kernelexec") or {})
    content = {"status": "ok", "payload": [{"source": "kernelexec", "data": answer}]}
    _kx_kernel.session.send(stream, "kernelexec_reply", content, parent, ident=ident)
_kx_kernel.shell_handlers["kernelexec_request"] = _kx_request
"""
NODE = {"node_id": "x", "name": "", "outputs": 1, "code": "return msg", "workdir": "/tmp",
        "blob_dir": "/dev/shm", "fork": False}  # fmt: skip
RUN = {"op": "run", "batch": [{"req_id": "1", "msg": {"payload": 1}, "timeout": 0}]}


async def custom(kernel: LocalKernel) -> dict[str, Any]:
    channels = kernel._require_channels()
    msg = channels.session.msg("kernelexec_request", {"kernelexec": RUN})
    future = kernel._expect(msg["header"]["msg_id"])
    await channels.send(channels.shell, msg)
    return await kernel._await_reply(future, 10.0)


async def main(rounds: int = 6, per_round: int = 100) -> None:
    kernel = LocalKernel(default_launch_spec())
    await kernel.start()
    try:
        await kernel.execute(BOOTSTRAP_CODE, {})
        await kernel.execute(HANDLE_CODE, {"op": "init", "node": NODE})
        await kernel.execute(REGISTER, {})
        times: dict[str, list[float]] = {"execute_request": [], "kernelexec_request": []}
        for _ in range(rounds):
            for _ in range(per_round):
                began = time.perf_counter()
                await kernel.execute(HANDLE_CODE, RUN)
                times["execute_request"].append(time.perf_counter() - began)
            for _ in range(per_round):
                began = time.perf_counter()
                await custom(kernel)
                times["kernelexec_request"].append(time.perf_counter() - began)
        for label, values in times.items():
            values.sort()
            p50, low = values[len(values) // 2] * 1e3, values[0] * 1e3
            print(f"{label:20s} p50 {p50:.3f} ms  min {low:.3f} ms  (n={len(values)})")
    finally:
        await kernel.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
