"""How a pool batches a waiting burst: large batches for fast code, small ones for slow code
(real kernels; the batch sizes are read from the worker's run calls)."""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any

import pytest

from kernelexec import pool as pool_module
from kernelexec.config import PoolConfig
from kernelexec.kernel import blobs
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


CRASH_CODE = """
import os
with open({path!r}, "a") as log:
    log.write(f"{{msg['payload']}}\\n")
if msg["payload"] in {crash!r}:
    os._exit(1)
return msg
"""


async def _crash_burst(tmp_path: Any, crash: set[int], count: int, **fields: Any) -> None:
    """A burst in which the messages ``crash`` kill their kernel: each of those fails (it was
    running), every other gets its own result, and every message's code ran exactly once."""
    ran = tmp_path / "ran.txt"
    running = "before giving a result" if fields.get("mode") == "cold" else "while this message was"
    pool = await started(CRASH_CODE.format(path=str(ran), crash=crash), **fields)
    try:
        sizes = record_batches(pool)
        results = await asyncio.gather(
            *(pool.submit(f"c{i}", {"payload": i}) for i in range(count))
        )
        assert max(sizes) > 1  # the crashes happened inside batches
        for i, result in enumerate(results):
            if i in crash:
                assert result["error"]["code"] == "KERNEL_DIED", result
                assert running in result["error"]["message"]
            else:
                assert result["error"] is None, (i, result["error"])
                assert result["outputs"] == [[{"payload": i}]]
        lines = collections.Counter(ran.read_text().split())
        assert lines == collections.Counter(str(i) for i in range(count))  # exactly once each
        assert pool.stats().restarts == (len(crash) if fields.get("mode") != "cold" else 0)
    finally:
        await pool.close()


async def test_a_message_that_kills_its_kernel_fails_alone(tmp_path: Any) -> None:
    await _crash_burst(tmp_path, {10}, 100)


async def test_two_kernel_deaths_in_one_batch_fail_only_those_two(tmp_path: Any) -> None:
    await _crash_burst(tmp_path, {5, 20}, 60)


async def test_a_kernel_death_in_a_batch_of_two_workers(tmp_path: Any) -> None:
    await _crash_burst(tmp_path, {7, 150}, 300, workers=2)


async def test_cold_mode_fails_only_the_message_whose_process_died(tmp_path: Any) -> None:
    """Cold mode: the message's forked process dies, the kernel lives on (no restart)."""
    await _crash_burst(tmp_path, {3, 12}, 30, mode="cold")


async def _until(condition: Any, what: str, limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"waited {limit} s for {what}"
        await asyncio.sleep(0.01)


async def test_send_bookkeeping_stays_bounded_after_failed_batches(tmp_path: Any) -> None:
    """A message that sent, then killed its kernel, leaves no entry in the worker's send
    counts (they grew by one per failed batch); a late send event of a finished request
    adds none either."""
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        "node.send({'payload': 'early'})\n"
        "if msg['payload'] == 'die':\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        time.sleep(0.005)\n"
        f"    os.remove({str(go)!r})\n"
        "    os._exit(1)\n"
        "return msg\n"
    )
    hooks = MemoryHooks()
    pool = make_pool(PoolConfig.from_dict("bounded", {"code": code}), hooks)
    await pool.start()
    try:
        for round_ in range(3):
            sends = sum(1 for _, event in hooks.events if event.get("type") == "send")
            result = asyncio.ensure_future(pool.submit(f"die{round_}", {"payload": "die"}))
            await _until(
                lambda sends=sends: (
                    sum(1 for _, e in hooks.events if e.get("type") == "send") > sends
                ),
                "the send event of the dying message",
            )
            go.write_text("")
            assert (await result)["error"]["code"] == "KERNEL_DIED"
        worker = pool.workers[0]
        for i in range(1000):  # late events of requests that are over
            worker._on_kernel_event({"type": "send", "req_id": f"late{i}", "outputs": []}, [])
        assert worker._sent_seen == {} and worker._sent_waiters == {}
        ok = await pool.submit("after", {"payload": 1})
        assert ok["error"] is None and ok["outputs"] == [[{"payload": 1}]]
    finally:
        await pool.close()


async def test_an_interrupted_message_fails_and_the_rest_of_its_batch_runs_again(
    tmp_path: Any,
) -> None:
    """The worker's backstop interrupts a message that ignored its timeout: that message
    fails with TIMEOUT, the ones queued behind it in the same batch run (once) instead of
    failing unrun."""
    ran = tmp_path / "ran.txt"
    code = (
        "import time\n"
        f"with open({str(ran)!r}, 'a') as log:\n"
        "    log.write(f\"{msg['payload']}\\n\")\n"
        "if msg['payload'] == 2:\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    except BaseException as exc:  # outlives its own timeout, not the interrupt\n"
        "        if isinstance(exc, KeyboardInterrupt):\n"
        "            raise\n"
        "        time.sleep(60)\n"
        "return msg\n"
    )
    pool = await started(code, timeout=0.3)
    try:
        sizes = record_batches(pool)
        results = await asyncio.gather(*(pool.submit(f"i{i}", {"payload": i}) for i in range(5)))
        assert sizes[0] == 5
        assert results[2]["error"]["code"] == "TIMEOUT"
        for i in (0, 1, 3, 4):
            assert results[i]["error"] is None, (i, results[i]["error"])
            assert results[i]["outputs"] == [[{"payload": i}]]
        assert sorted(ran.read_text().split()) == [str(i) for i in range(5)]
    finally:
        await pool.close()


async def test_a_kernel_death_keeps_the_files_of_finished_and_sent_outputs(tmp_path: Any) -> None:
    """A batch: 'keep' returns a big Buffer, then 'die' sends one, writes another file for
    itself that it never hands over, and kills its kernel. The replacement kernel starts
    before the results are delivered; still the reader finds the finished message's file and
    the sent one, and only the file nobody was told of is gone."""
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        "from kernelexec.kernel import blobs\n"
        "big = bytes(200_000)\n"
        "if msg['payload'] == 'die':\n"
        "    node.send({'payload': big})\n"
        "    blobs.write_blob(big, 'die')  # written for this message, never handed over\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        time.sleep(0.005)\n"
        "    os._exit(1)\n"
        "return {'payload': big}\n"
    )
    hooks = MemoryHooks()
    pool = make_pool(PoolConfig.from_dict("deathfiles", {"code": code}), hooks)
    await pool.start()
    try:
        dead_pid = pool.workers[0].kernel.pid
        assert dead_pid is not None
        keep = asyncio.ensure_future(pool.submit("keep", {"payload": "keep"}))
        die = asyncio.ensure_future(pool.submit("die", {"payload": "die"}))
        await _until(
            lambda: any(e.get("type") == "send" for _, e in hooks.events), "the send event"
        )
        unsent = [p for p in blobs.request_blobs("die", pid=dead_pid)
                  if not any(p.endswith(e["name"]) for _, ev in hooks.events
                             for e in ev.get(blobs.TABLE) or [])]
        assert len(unsent) == 1
        go.write_text("")
        kept, died = await keep, await die
        assert died["error"]["code"] == "KERNEL_DIED"
        assert pool.workers[0].kernel.pid != dead_pid  # the replacement is up
        [entry] = kept[blobs.TABLE]
        assert blobs.read_blob(entry, "keep") == bytes(200_000)
        [send] = [event for _, event in hooks.events if event.get("type") == "send"]
        [sent] = send[blobs.TABLE]
        assert blobs.read_blob(sent, "die") == bytes(200_000)
        assert not os.path.exists(unsent[0])
        blobs.remove_table([entry], "keep")
        blobs.remove_table([sent], "die")
    finally:
        await pool.close()
