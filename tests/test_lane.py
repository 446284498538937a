"""The lane (kernelexec/kernel/lane.py): run ops down a pipe into the kernel's own loop.

tests/test_pool.py runs every pool semantic on the lane and on the Jupyter path; here: the
framing, the answer frames, a request the dead kernel never read, and the per-node choice.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from server_support import wait_for_file

from kernelexec.config import PoolConfig
from kernelexec.errors import ConfigError
from kernelexec.kernel.framing import framed
from kernelexec.kernel.lane import RequestPipe, RequestReader, answer_frame, request_frame
from kernelexec.kernel.resultpipe import ResultPipe, ResultWriter
from kernelexec.pool import MemoryHooks, make_pool

pytestmark = pytest.mark.asyncio


async def test_frames_of_any_size_arrive_whole_and_in_order() -> None:
    """A frame larger than the pipe waits for the reader instead of blocking the loop."""
    pipe = RequestPipe()
    sizes = [0, 10, 3 << 20, 5, 1 << 20]
    got: list[dict[str, Any]] = []
    all_in = asyncio.Event()

    def handle(frame: dict[str, Any]) -> None:
        got.append(frame)
        if len(got) == len(sizes):
            all_in.set()

    reader = RequestReader.adopt(os.dup(pipe.read_fd), handle)
    assert reader is not None
    try:
        for seq, size in enumerate(sizes):
            await pipe.send(request_frame(seq, {"op": "run", "text": "x" * size}))
        await asyncio.wait_for(all_in.wait(), 30)
        assert [frame["lane"] for frame in got] == list(range(len(sizes)))
        assert [len(frame["request"]["text"]) for frame in got] == sizes
    finally:
        reader.close()
        pipe.close()


async def test_a_frame_that_is_not_json_is_skipped_and_the_next_one_read() -> None:
    pipe = RequestPipe()
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reader = RequestReader.adopt(os.dup(pipe.read_fd), got.put_nowait)
    assert reader is not None
    try:
        await pipe.send(framed(b"{not json"))
        await pipe.send(request_frame(2, {"op": "run"}))
        assert (await asyncio.wait_for(got.get(), 30))["lane"] == 2
    finally:
        reader.close()
        pipe.close()


async def test_a_lone_surrogate_travels_as_U_FFFD() -> None:
    frame = request_frame(1, {"op": "run", "text": "a\ud800b"})
    assert "a\ufffdb".encode() in frame


async def test_answers_reach_their_waiter_and_strays_are_dropped() -> None:
    pipe = ResultPipe()
    pipe.attach()
    writer = ResultWriter(pipe.write_fd)
    loop = asyncio.get_running_loop()
    try:
        ok, interrupted = loop.create_future(), loop.create_future()
        pipe.answer_waiters.update({1: ok, 2: interrupted})
        writer.answer(answer_frame(7, {"results": ["stray"]}))  # nobody waits for 7
        writer.answer(answer_frame(1, {"results": [], "ran": 0}))
        writer.answer(answer_frame(2, None))
        reply = await asyncio.wait_for(ok, 10)
        assert reply == {
            "status": "ok",
            "payload": [{"source": "kernelexec", "data": {"results": [], "ran": 0}}],
        }
        reply = await asyncio.wait_for(interrupted, 10)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    finally:
        pipe.close()


async def test_a_request_the_dead_kernel_never_read_does_not_run_on_the_next(
    tmp_path: Path,
) -> None:
    """A request still in the pipe when its kernel dies is dropped with the kernel: the
    fresh kernel must not run it (it would run a message twice, or one nobody waits for)."""
    journal, running, release = tmp_path / "ran.txt", tmp_path / "running", tmp_path / "go"
    code = f"""
import os, pathlib
with open({str(journal)!r}, "a") as f:
    f.write(str(msg["payload"]) + "\\n")
if msg["payload"] == "die":
    pathlib.Path({str(running)!r}).touch()
    while not os.path.exists({str(release)!r}):
        pass
    os._exit(1)
return msg
"""
    pool = make_pool(PoolConfig.from_dict("lane-dead", {"code": code}), MemoryHooks())
    await pool.start()
    try:
        worker = pool.workers[0]
        assert worker._lane, "the pool should take the lane"
        dying = asyncio.ensure_future(pool.submit("die", {"payload": "die"}))
        await wait_for_file(running)
        stale = {"op": "run", "batch": [{"req_id": "stale", "msg": {"payload": "stale"}}]}
        lane = worker.kernel.request_pipe
        assert lane is not None
        await lane.send(request_frame(lane.next_seq(), stale))  # the kernel is busy: it waits
        release.touch()
        result = await asyncio.wait_for(dying, 60)
        assert result["error"]["code"] == "KERNEL_DIED"
        after = await asyncio.wait_for(pool.submit("after", {"payload": "after"}), 60)
        assert after["error"] is None and after["outputs"] == [[{"payload": "after"}]]
        assert journal.read_text().split() == ["die", "after"]
    finally:
        await pool.close()


async def test_the_message_path_is_checked() -> None:
    assert PoolConfig.from_dict("n", {}).message_path == "lane"
    assert PoolConfig.from_dict("n", {"message_path": "jupyter"}).message_path == "jupyter"
    with pytest.raises(ConfigError, match=r"message_path.*'lane' or 'jupyter'"):
        PoolConfig.from_dict("n", {"message_path": "zmq"})
