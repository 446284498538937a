"""Where a hot message's time goes, layer by layer (one message in flight, no Node-RED).

On one hot kernel started by ``make_pool`` (1 worker, ``return msg``):

    jupyter   execute_request ``pass`` on the same kernel: a Jupyter cell's round trip alone
              (client -> zmq -> ipykernel shell -> run_cell -> reply), kernelexec's tuned kernel
    runtime   execute_request ``__kernelexec__.handle()`` with a ``run`` op of one message:
              the in-kernel runtime on the path stock kernels get (decode, call, encode)
    request   ``kernelexec_request`` with the same op: the Jupyter path kernelexec's kernel
              gets (no run_cell, no busy/idle status)
    lane      the same op down the lane (kernelexec/kernel/lane.py): a pipe into the kernel's loop,
              the answer up the result pipe
    pool_jupyter  ``pool.submit`` on a pool with ``message_path: jupyter``
    pool      ``pool.submit`` (the lane): adds the pool's queue, the worker's bookkeeping

The floor for comparison: the same message through bench/floor_worker.py over a pipe.

    .venv/bin/python bench/breakdown.py [--count 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from engine_bench import FloorClient, make_kernelexec, small_msg, summary  # noqa: E402

from kernelexec.worker import HANDLE_CODE  # noqa: E402


async def timed(count: int, step: Any) -> list[float]:
    samples = []
    for i in range(count):
        t0 = time.perf_counter_ns()
        await step(i)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples


async def run(count: int) -> dict[str, Any]:
    pool = await make_kernelexec("hot")
    pool_jupyter = await make_kernelexec("hot", "jupyter")
    floor = FloorClient()
    await floor.start()
    kernel = pool.workers[0].kernel
    exec_ms: list[float] = []

    async def jupyter(i: int) -> None:
        await kernel.execute("pass", {})

    async def runtime(i: int) -> None:
        batch = [{"req_id": f"b-{i}", "msg": small_msg(i), "timeout": 0}]
        reply = await kernel.execute(HANDLE_CODE, {"op": "run", "batch": batch})
        assert reply.get("status") == "ok", reply

    async def request(i: int) -> None:
        batch = [{"req_id": f"q-{i}", "msg": small_msg(i), "timeout": 0}]
        reply = await kernel.request({"op": "run", "batch": batch})
        assert reply.get("status") == "ok", reply

    async def lane(i: int) -> None:
        batch = [{"req_id": f"l-{i}", "msg": small_msg(i), "timeout": 0}]
        reply = await kernel.lane_request({"op": "run", "batch": batch})
        assert reply.get("status") == "ok", reply

    async def submit_jupyter(i: int) -> None:
        result = await pool_jupyter.submit(f"j-{i}", small_msg(i))
        assert not result.get("error"), result

    async def submit(i: int) -> None:
        result = await pool.submit(f"p-{i}", small_msg(i))
        assert not result.get("error"), result
        exec_ms.append(result["timing"]["exec_ms"])

    async def pipe(i: int) -> None:
        await floor.submit(f"f-{i}", small_msg(i))

    steps = {
        "floor": pipe,
        "jupyter": jupyter,
        "runtime": runtime,
        "request": request,
        "lane": lane,
        "pool_jupyter": submit_jupyter,
        "pool": submit,
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for step in steps.values():
            await timed(100, step)
        for _round in range(4):  # interleaved rounds, as in the other benchmarks
            for name, step in steps.items():
                samples[name] += await timed(count // 4, step)
    finally:
        await floor.close()
        await pool.close()
        await pool_jupyter.close()
    out = {name: summary(values) for name, values in samples.items()}
    out["pool_exec_ms"] = summary(exec_ms)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    result = asyncio.run(run(args.count))
    for name, s in result.items():
        print(f"{name:14s} p50 {s['p50']:7.3f} ms  p90 {s['p90']:7.3f}  p99 {s['p99']:7.3f}")
    print(
        f"kernelexec_request saves {result['runtime']['p50'] - result['request']['p50']:.3f} ms "
        f"against the execute_request; the lane saves "
        f"{result['request']['p50'] - result['lane']['p50']:.3f} ms more; the pool adds "
        f"{result['pool']['p50'] - result['lane']['p50']:.3f} ms"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
