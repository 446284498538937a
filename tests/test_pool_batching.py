"""How a pool batches a waiting burst: large batches for fast code, small ones for slow code
(real kernels; the batch sizes are read from the worker's run calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kernelexec import pool as pool_module
from kernelexec.config import PoolConfig
from kernelexec.pool import MemoryHooks, Pool, make_pool

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def started(code: str, **fields: Any) -> Pool:
    config = PoolConfig.from_dict("batching", {"code": code, **fields})
    pool = make_pool(config, MemoryHooks())
    await pool.start()
    return pool


def record_batches(pool: Pool) -> list[int]:
    sizes: list[int] = []
    for worker in pool.workers:
        run = worker.run

        async def counted(jobs: list[Any], run: Any = run) -> list[dict[str, Any]]:
            sizes.append(len(jobs))
            result: list[dict[str, Any]] = await run(jobs)
            return result

        worker.run = counted  # type: ignore[method-assign]
    return sizes


async def test_a_burst_of_fast_messages_goes_in_large_batches() -> None:
    pool = await started("return msg")
    try:
        sizes = record_batches(pool)
        results = await asyncio.gather(*(pool.submit(f"f{i}", {"payload": i}) for i in range(600)))
        assert [r["outputs"][0][0]["payload"] for r in results] == list(range(600))
        assert sum(sizes) == 600
        # until a batch has shown how fast the code is, FIRST_BATCH; then up to MAX_BATCH
        assert sizes[0] == pool_module.FIRST_BATCH
        assert max(sizes) == pool_module.MAX_BATCH
    finally:
        await pool.close()


async def test_a_timeout_keeps_batches_at_the_timed_cap() -> None:
    pool = await started("return msg", timeout=5)
    try:
        sizes = record_batches(pool)
        results = await asyncio.gather(*(pool.submit(f"t{i}", {"payload": i}) for i in range(200)))
        assert all(r["error"] is None for r in results)
        assert max(sizes) == pool_module.MAX_TIMED_BATCH
    finally:
        await pool.close()


async def test_slow_code_goes_in_small_batches() -> None:
    pool = await started("import time\ntime.sleep(0.02)\nreturn msg")
    try:
        sizes = record_batches(pool)
        first = await asyncio.gather(*(pool.submit(f"s{i}", {"payload": i}) for i in range(4)))
        assert all(r["error"] is None for r in first)
        sizes.clear()
        results = await asyncio.gather(*(pool.submit(f"u{i}", {"payload": i}) for i in range(30)))
        assert all(r["error"] is None for r in results)
        # ~20 ms a message: a batch holds about BATCH_SECONDS of work, not MAX_BATCH messages
        limit = int(pool_module.BATCH_SECONDS / 0.02) + 1
        assert sizes and max(sizes) <= limit, sizes
    finally:
        await pool.close()
