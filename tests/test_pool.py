"""Hot and cold pools on real kernels: semantics, order, limits, faults, blobs, clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from server_support import wait_for_file

from kernelexec.config import PoolConfig
from kernelexec.errors import SetupError
from kernelexec.handles import forking
from kernelexec.handles.local import LocalKernel, kernel_environment
from kernelexec.handles.template import TEMPLATE_COMM
from kernelexec.kernel import blobs
from kernelexec.kernel.clone import can_clone_siblings
from kernelexec.pool import MemoryHooks, Pool, make_pool

pytestmark = pytest.mark.asyncio(loop_scope="module")


#: The message path of the pools the tests start (set by the ``kernel_start`` fixture).
PATHS = {"message_path": "lane"}


@pytest_asyncio.fixture(
    loop_scope="module", scope="module", params=["launched", "forked", "jupyter"], autouse=True
)
async def kernel_start(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Every test here runs on kernels jupyter_client launches and on kernels forked from a
    kernel template, as a bridge does (handles/forking.py), both taking the lane
    (kernelexec/kernel/lane.py); and once more on launched kernels reached by the Jupyter path
    (``message_path: jupyter``, a kernelexec_request on the shell channel)."""
    if request.param == "forked":
        assert forking.start_template(kernel_environment()) is not None
    PATHS["message_path"] = "jupyter" if request.param == "jupyter" else "lane"
    yield str(request.param)
    PATHS["message_path"] = "lane"
    forking.stop_template()


def config_of(node_id: str, fields: dict[str, Any]) -> PoolConfig:
    return PoolConfig.from_dict(node_id, {**PATHS, **fields})


async def started(code: str, **fields: Any) -> tuple[Pool, MemoryHooks]:
    hooks = MemoryHooks()
    config = config_of(fields.pop("node_id", "n1"), {"code": code, **fields})
    pool = make_pool(config, hooks)
    await pool.start()
    return pool, hooks


async def closed(pool: Pool) -> None:
    pids = [w.kernel.pid for w in pool.workers]
    await pool.close()
    for pid in pids:
        assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def echo(kernel_start: str) -> AsyncIterator[Pool]:
    pool, _ = await started("return msg", node_id="echo")
    yield pool
    await closed(pool)


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until ``check()`` holds or the (generous) deadline passes."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Preforks:
    """Test instrumentation of a cold pool's (only) worker: each finished prefork (the idle
    fork of the next message's child) is recorded with the number of messages the pool had
    answered when it began, so a test waits for "the spare forked after message n"."""

    def __init__(self, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done: list[int] = []
        self._changed = asyncio.Event()
        original = pool.workers[0].prefork

        async def prefork() -> None:
            answered = pool.stats().messages
            await original()
            self.done.append(answered)
            self._changed.set()

        monkeypatch.setattr(pool.workers[0], "prefork", prefork)

    async def after(self, answered: int, timeout: float = 30.0) -> None:
        """Wait until a prefork that began once ``answered`` messages were answered is done."""
        deadline = time.monotonic() + timeout
        while answered not in self.done:
            self._changed.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"no prefork after message {answered}; saw {self.done}"
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


def payloads(result: dict[str, Any], port: int = 0) -> list[Any]:
    return [m.get("payload") for m in result["outputs"][port]]


async def test_kernels_start_the_way_the_parameter_says(echo: Pool, kernel_start: str) -> None:
    kernel = echo.workers[0].kernel
    assert isinstance(kernel, LocalKernel) and kernel._km is not None
    forked = isinstance(kernel._km.provisioner, forking.ForkProvisioner)
    assert forked == (kernel_start == "forked")
    assert echo.workers[0]._lane == (kernel_start != "jupyter")  # the runtime took the lane
    process = psutil.Process(kernel.pid)
    assert process.ppid() == os.getpid()  # a forked kernel too is this process's own child
    assert process.cmdline()[1:3] == ["-m", "kernelexec.kernel"]  # and looks like a kernel
    assert process.name() != TEMPLATE_COMM.decode()


async def test_return_dict_goes_to_output_1(echo: Pool) -> None:
    result = await echo.submit("r1", {"payload": 41, "topic": "t"})
    assert result["error"] is None
    assert result["outputs"][0] == [{"payload": 41, "topic": "t"}]
    assert result["node_id"] == "echo" and result["timing"]["exec_ms"] >= 0


async def test_list_sends_one_entry_per_output_and_nested_lists() -> None:
    code = "return [None, [{'payload': 1}, {'payload': 2}], msg]"
    pool, _ = await started(code, outputs=3)
    try:
        result = await pool.submit("r", {"payload": "x"})
        assert result["error"] is None
        assert result["outputs"][0] == []
        assert payloads(result, 1) == [1, 2]
        assert payloads(result, 2) == ["x"]
    finally:
        await closed(pool)


async def test_hot_state_lives_on_and_setup_runs_once() -> None:
    setup = "import os\ncount = 0\nSETUP_PID = os.getpid()"
    code = "global count\ncount += 1\nmsg['payload'] = [count, SETUP_PID]\nreturn msg"
    pool, _ = await started(code, setup=setup)
    try:
        first = await pool.submit("a", {})
        second = await pool.submit("b", {})
        assert payloads(first)[0][0] == 1
        assert payloads(second)[0][0] == 2
        assert payloads(first)[0][1] == payloads(second)[0][1] == pool.workers[0].kernel.pid
    finally:
        await closed(pool)


async def test_cold_messages_never_see_each_other() -> None:
    setup = "import os\nseen = []\nPARENT = os.getpid()"
    code = (
        "import os\nseen.append(msg['payload'])\n"
        "msg['payload'] = [list(seen), os.getpid()]\nreturn msg"
    )
    pool, _ = await started(code, setup=setup, mode="cold")
    try:
        results = [await pool.submit(f"c{i}", {"payload": i}) for i in range(3)]
        seen = [payloads(r)[0][0] for r in results]
        pids = {payloads(r)[0][1] for r in results}
        assert seen == [[0], [1], [2]]
        assert len(pids) == 3 and pool.workers[0].kernel.pid not in pids
    finally:
        await closed(pool)


async def test_keep_order_with_several_workers() -> None:
    code = "import time, random\ntime.sleep(random.random() * 0.05)\nreturn msg"
    pool, _ = await started(code, workers=3, keep_order=True)
    try:
        order: list[int] = []

        async def one(i: int) -> None:
            result = await pool.submit(f"k{i}", {"payload": i})
            order.append(payloads(result)[0])

        await asyncio.gather(*(one(i) for i in range(30)))
        assert order == list(range(30))
    finally:
        await closed(pool)


async def test_queue_limit_refuses_clearly_and_loses_nothing() -> None:
    pool, _ = await started("import time\ntime.sleep(0.2)\nreturn msg", queue_limit=2)
    try:
        results = await asyncio.gather(*(pool.submit(f"q{i}", {"payload": i}) for i in range(8)))
        codes = [r["error"]["code"] if r["error"] else "ok" for r in results]
        assert codes.count("QUEUE_FULL") >= 4 and "ok" in codes
        assert len(results) == 8
        refused = next(r for r in results if r["error"])
        assert "queueLimit 2" in refused["error"]["message"]
    finally:
        await closed(pool)


async def test_timeout_interrupts_and_keeps_the_kernel() -> None:
    setup = "import os\nMARK = os.getpid()"
    code = (
        "if msg['payload'] == 'spin':\n    while True:\n        pass\n"
        "msg['payload'] = MARK\nreturn msg"
    )
    pool, _ = await started(code, setup=setup, timeout=1.0)  # "ok" must fit in it, loaded
    try:
        pid = pool.workers[0].kernel.pid
        result = await pool.submit("t1", {"payload": "spin"})
        assert result["error"]["code"] == "TIMEOUT"
        after = await pool.submit("t2", {"payload": "ok"})
        assert after["error"] is None and payloads(after) == [pid]
    finally:
        await closed(pool)


async def test_timeout_restarts_a_kernel_that_ignores_interrupts() -> None:
    code = (
        "import signal, time\n"
        "if msg['payload'] == 'stuck':\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT})\n"
        "    time.sleep(60)\n"
        "return msg"
    )
    pool, _ = await started(code, timeout=1.0)  # s2 must fit in it, loaded
    try:
        pid = pool.workers[0].kernel.pid
        result = await pool.submit("s1", {"payload": "stuck"})
        assert result["error"]["code"] == "TIMEOUT"
        assert "restarted" in result["error"]["message"]
        after = await pool.submit("s2", {"payload": 1})
        assert after["error"] is None and pool.workers[0].kernel.pid != pid
        assert pool.stats().restarts == 1
    finally:
        await closed(pool)


async def test_timeout_stops_processes_the_code_started() -> None:
    code = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "msg['payload'] = p.pid\n"
        "node.send(msg)\n"
        "time.sleep(60)\n"
    )
    pool, hooks = await started(code, timeout=0.5)
    try:
        result = await pool.submit("p1", {})
        assert result["error"]["code"] == "TIMEOUT"
        sends = [e for _, e in hooks.events if e.get("type") == "send"]
        child = sends[0]["outputs"][0][0]["payload"]
        await until(lambda: not alive(child))  # killed at the timeout; dying takes a moment
        assert not alive(child)
    finally:
        await closed(pool)


async def test_dead_kernel_fails_only_its_message_and_is_replaced() -> None:
    code = "import os\nif msg['payload'] == 'die':\n    os._exit(3)\nreturn msg"
    pool, _ = await started(code)
    try:
        result = await pool.submit("d1", {"payload": "die"})
        assert result["error"]["code"] == "KERNEL_DIED"
        assert "exit code 3" in result["error"]["message"]
        after = await pool.submit("d2", {"payload": "fine"})
        assert after["error"] is None and payloads(after) == ["fine"]
    finally:
        await closed(pool)


async def test_setup_failure_is_one_clear_error_and_fails_messages_fast() -> None:
    hooks = MemoryHooks()
    config = config_of(
        "bad", {"code": "return msg", "setup": "x = 1\nraise ValueError('no db')"}
    )
    pool = make_pool(config, hooks)
    try:
        with pytest.raises(SetupError) as caught:
            await pool.start()
        assert "no db" in caught.value.message
        assert "line 2" in (caught.value.traceback or "")
        result = await asyncio.wait_for(pool.submit("m", {}), 5)
        assert result["error"]["code"] == "SETUP_FAILED"
        assert [s["state"] for _, s in hooks.states][-1] == "error"
    finally:
        await closed(pool)


async def test_user_error_points_at_the_users_line(echo: Pool) -> None:
    pool, _ = await started("x = 1\ny = 2\nraise KeyError('nope')\nreturn msg")
    try:
        result = await pool.submit("e", {})
        error = result["error"]
        assert error["code"] == "USER_ERROR" and error["type"] == "KeyError"
        assert error["line"] == 3 and "line 3" in error["traceback"]
    finally:
        await closed(pool)


async def test_send_from_a_thread_after_return_and_context() -> None:
    code = (
        "import threading, time\n"
        "context.set('n', context.get('n', 0) + 1)\n"
        "def later():\n"
        "    time.sleep(0.1)\n"
        "    node.send({'payload': 'later'})\n"
        "threading.Thread(target=later).start()\n"
        "msg['payload'] = context.get('n')\n"
        "return msg"
    )
    pool, hooks = await started(code)
    try:
        first = await pool.submit("x1", {})
        second = await pool.submit("x2", {})
        assert payloads(first) == [1] and payloads(second) == [2]
        await until(lambda: len([e for _, e in hooks.events if e.get("type") == "send"]) >= 2)
        sends = [e for _, e in hooks.events if e.get("type") == "send"]
        assert [s["outputs"][0][0]["payload"] for s in sends] == ["later", "later"]
    finally:
        await closed(pool)


async def test_big_buffers_travel_through_shm_and_are_removed() -> None:
    pool, _ = await started("msg['payload'] = msg['payload'][::-1]\nreturn msg")
    try:
        data = os.urandom(3 * 1024 * 1024)
        entry = blobs.write_blob(data, "b1")
        result = await pool.submit("b1", {"payload": blobs.index_ref(0)}, [entry])
        out = result["outputs"][0][0]["payload"]
        assert out == blobs.index_ref(0)
        got = blobs.read_blob(result[blobs.TABLE][0], "b1")
        assert got == data[::-1]
        blobs.remove_table([entry, *result[blobs.TABLE]], "b1")
    finally:
        await closed(pool)


async def test_close_runs_stop_code_and_leaves_no_process(tmp_path: Any) -> None:
    marker = tmp_path / "stopped"
    pool, _ = await started(
        "return msg", stop=f"open({str(marker)!r}, 'w').write('bye')", workers=2
    )
    await closed(pool)
    assert marker.read_text() == "bye"
    result = await pool.submit("late", {})
    assert result["error"]["code"] == "POOL_CLOSED"


async def test_idle_workers_get_work_before_anyone_batches(tmp_path: Path) -> None:
    # a barrier: each message waits (up to 20 s) until both run, so neither finishes and
    # frees its worker before the other has been handed out
    code = (
        "import os, pathlib, time\n"
        f"here = pathlib.Path({str(tmp_path)!r})\n"
        "(here / msg['req']).touch()\n"
        "deadline = time.monotonic() + 20\n"
        "while len(list(here.glob('w*'))) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.005)\n"
        "msg['payload'] = os.getpid()\nreturn msg"
    )
    pool, _ = await started(code, workers=2)
    try:
        both = await asyncio.gather(
            pool.submit("w1", {"req": "w1"}), pool.submit("w2", {"req": "w2"})
        )
        assert {payloads(r)[0] for r in both} == {w.kernel.pid for w in pool.workers}
    finally:
        await closed(pool)


async def test_close_during_a_long_message_is_prompt_and_runs_stop_code(tmp_path: Any) -> None:
    marker = tmp_path / "stopped"
    began = tmp_path / "began"
    stop = f"open({str(marker)!r}, 'w').write('bye')"
    code = f"import time\nopen({str(began)!r}, 'w').close()\ntime.sleep(60)\nreturn msg"
    pool, _ = await started(code, stop=stop)
    running = asyncio.ensure_future(pool.submit("long", {}))
    await wait_for_file(began)  # the message runs
    await closed(pool)
    result = await running
    # prompt: a close that waited for the message would have let it return msg (no error)
    assert result["error"]["code"] == "POOL_CLOSED"
    assert marker.read_text() == "bye"


async def test_live_link_reloads_code_and_keeps_setup_state(tmp_path: Any) -> None:
    script = tmp_path / "node.py"
    setup = "# %% setup\nimport os\ncount = 0\n"
    script.write_text(setup + "# %% node\nglobal count\ncount += 1\nreturn {'payload': count}\n")
    pool, hooks = await started("return msg", notebook=str(script))
    try:
        assert payloads(await pool.submit("l1", {})) == [1]
        script.write_text(
            setup + "# %% node\nglobal count\ncount += 10\nreturn {'payload': count}\n"
        )
        await until(lambda: any("reloaded (code)" in str(e.get("text")) for _, e in hooks.events))
        assert payloads(await pool.submit("l2", {})) == [11]  # setup state kept: 1 + 10
    finally:
        await closed(pool)


async def test_live_link_to_a_broken_notebook_is_a_clear_config_error(tmp_path: Any) -> None:
    script = tmp_path / "broken.py"
    script.write_text("# %% node\nreturn (\n")
    hooks = MemoryHooks()
    config = config_of("nb", {"notebook": str(script)})
    pool = make_pool(config, hooks)
    try:
        with pytest.raises(Exception, match="not valid Python"):
            await pool.start()
        result = await pool.submit("m", {})
        assert result["error"]["code"] == "BAD_CONFIG"
    finally:
        await closed(pool)


async def test_a_burst_of_node_sends_loses_nothing() -> None:
    code = "for i in range(5000):\n    node.send({'payload': i})\nreturn None"
    pool, hooks = await started(code)
    try:
        result = await pool.submit("burst", {})
        assert result["error"] is None and result["sent"] == 5000
        sends = [e for _, e in hooks.events if e.get("type") == "send"]
        assert [s["outputs"][0][0]["payload"] for s in sends] == list(range(5000))
    finally:
        await closed(pool)


async def test_cold_pool_forks_ahead_when_idle_and_stays_isolated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = "import os\nstate.append(1)\nmsg['payload'] = [len(state), os.getpid()]\nreturn msg"
    pool, _ = await started(code, setup="state = []", mode="cold")
    preforks = Preforks(pool, monkeypatch)
    try:
        seen = []
        for i in range(4):
            if i:
                await preforks.after(i)  # idle: the next child has been forked ahead
            result = await pool.submit(f"p{i}", {})
            assert result["error"] is None
            seen.append(payloads(result)[0])
        assert [count for count, _ in seen] == [1, 1, 1, 1]
        assert len({pid for _, pid in seen}) == 4
        await preforks.after(4)  # a spare child exists, forked with the old code
        await pool.update_code(code.replace("return msg", "msg['new'] = True\nreturn msg"))
        result = await pool.submit("after-change", {})
        assert result["outputs"][0][0].get("new") is True  # a spare forked before is not used
    finally:
        await closed(pool)


async def test_a_cold_message_that_follows_at_once_finds_its_process_forked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after a cold message's answer the kernel forks the next message's child, without
    waiting for the pool to be idle: with the idle prefork switched off, the next message
    still runs in a process that was forked before it was sent, with SIGINT as a message's own
    fork has it (the kernel ignores it when idle, and blocks it while it forks a spare)."""
    code = (
        "import os, signal\n"
        "handler = signal.getsignal(signal.SIGINT)\n"
        "blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        "msg['payload'] = [os.getpid(), handler is signal.default_int_handler and not blocked]\n"
        "return msg"
    )
    pool, _ = await started(code, mode="cold")

    async def no_prefork() -> None:
        return None

    monkeypatch.setattr(pool.workers[0], "prefork", no_prefork)
    kernel = psutil.Process(pool.workers[0].kernel.pid)
    try:
        ran, interruptible = payloads(await pool.submit("first", {}))[0]
        assert interruptible
        others: list[int] = []
        expected = 2 if can_clone_siblings() else 1  # the spare, and the zygote it came from

        def spare_forked() -> bool:
            others[:] = [p.pid for p in kernel.children() if p.pid != ran and alive(p.pid)]
            return len(others) == expected

        await until(spare_forked)
        assert len(others) == expected, "no child was forked after the first message's answer"
        second, interruptible = payloads(await pool.submit("second", {}))[0]
        assert second in others and interruptible
    finally:
        await closed(pool)


async def test_cold_children_are_the_kernels_cloned_from_one_zygote() -> None:
    """Each message's process is the kernel's child, cloned from a zygote (kernel/zygote.py):
    one more child of the kernel, in a process group of its own, the same for every message
    and none of them; a code change replaces it."""
    code = "import os\nmsg['payload'] = [os.getpid(), os.getppid()]\nreturn msg"
    pool, _ = await started(code, mode="cold")
    kernel = psutil.Process(pool.workers[0].kernel.pid)
    ran: list[int] = []
    settled: list[set[int]] = []

    def children() -> set[int]:
        return {p.pid for p in kernel.children() if alive(p.pid)}

    try:
        for i in range(3):
            pid, parent = payloads(await pool.submit(f"z{i}", {}))[0]
            assert parent == kernel.pid
            ran.append(pid)
            await until(lambda: len(children()) == 2)  # the zygote and the next spare
            settled.append(children())
        zygotes = set.intersection(*settled)
        assert len(zygotes) == 1, f"no one process in every settled tree: {settled}"
        [zygote] = zygotes
        assert zygote not in ran and os.getpgid(zygote) == zygote
        assert [s - zygotes for s in settled[:2]] == [{ran[1]}, {ran[2]}]
        await pool.update_code(code + "\n# changed")
        assert payloads(await pool.submit("after", {}))[0][1] == kernel.pid
        await until(lambda: zygote not in children())
        assert zygote not in children(), "the zygote with the old code is still there"
    finally:
        await closed(pool)


async def test_no_cold_child_outlives_a_killed_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children that answered (killed LINGER later), a spare (copying or waiting) and one
    forked back to back: when the kernel dies -9, every one of them exits by itself."""
    pool, _ = await started("return msg", mode="cold")
    preforks = Preforks(pool, monkeypatch)
    kernel = psutil.Process(pool.workers[0].kernel.pid)
    try:
        for i in range(3):  # back to back: children linger while the next ones fork
            assert (await pool.submit(f"b{i}", {}))["error"] is None
        children = kernel.children(recursive=True)
        await preforks.after(3)  # idle: a spare has been forked (it may still be copying)
        children += kernel.children(recursive=True)
        assert children, "the cold kernel had children to leave behind"
        kernel.kill()
        _, left = psutil.wait_procs(children, timeout=30)
        assert not left, f"children left after the kernel's death: {left}"
    finally:
        await closed(pool)


async def test_status_set_during_a_message_arrives_before_its_result() -> None:
    """node.status() then return: the status event is delivered before the result, as the
    function node shows a status set before its message leaves; without a req_id on it."""
    pool, hooks = await started("node.status(text=str(msg['payload']))\nreturn msg")
    try:
        for i in range(50):
            hooks.events.clear()
            result = await pool.submit(f"s{i}", {"payload": i})
            assert result["error"] is None and "status_events" not in result
            statuses = [e for _, e in hooks.events if e["type"] == "status"]
            assert statuses == [{"type": "status", "status": {"text": str(i)}}], (i, statuses)
    finally:
        await closed(pool)
