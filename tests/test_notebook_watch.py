"""Live link: watch_notebook reports which parts of a node changed on disk."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import nbformat.v4 as v4
import pytest

from kernelexec.notebook import NodeCode, NotebookChange, load_node_code, watch_notebook

INTERVAL = 0.05


def save(path: Path, setup: str, code: str, *, extra_output: bool = False) -> None:
    node = v4.new_code_cell(f"%%node\n{code}")
    if extra_output:
        node.outputs = [v4.new_output("stream", name="stdout", text="ran\n")]
    nb = v4.new_notebook(cells=[v4.new_code_cell(setup, metadata={"tags": ["setup"]}), node])
    tmp = path.with_suffix(".tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)  # like Jupyter's atomic save
    stamp = path.stat().st_mtime_ns + 1_000_000  # coarse file system clocks: force a new mtime
    os.utime(path, ns=(stamp, stamp))


class Recorder:
    def __init__(self) -> None:
        self.changes: asyncio.Queue[NotebookChange] = asyncio.Queue()

    async def __call__(self, change: NotebookChange) -> None:
        await self.changes.put(change)

    async def next(self) -> NotebookChange:
        return await asyncio.wait_for(self.changes.get(), 30)

    async def quiet(self, caplog: pytest.LogCaptureFixture) -> bool:
        """Once the watcher has read the save and found the node unchanged (its debug
        line), whether nothing was reported."""
        await until(lambda: "saved without a change to its node" in caplog.text)
        return self.changes.empty()


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until ``check()`` holds or the (generous) deadline passes."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(INTERVAL)


async def start(tmp_path: Path) -> tuple[Path, Recorder, asyncio.Task[None]]:
    path = tmp_path / "live.ipynb"
    save(path, "import math", "return msg")
    rec = Recorder()
    return path, rec, watch_notebook(path, rec, interval=INTERVAL)


async def test_code_only_change_keeps_setup(tmp_path: Path) -> None:
    path, rec, task = await start(tmp_path)
    try:
        save(path, "import math", "msg['payload'] = 2\nreturn msg")
        change = await rec.next()
        assert change.changed == {"code"} and change.action == "code"
        assert change.old is not None and change.old.code == "return msg"
        assert change.new == load_node_code(path)
    finally:
        task.cancel()


async def test_setup_change_means_restart(tmp_path: Path) -> None:
    path, rec, task = await start(tmp_path)
    try:
        save(path, "import json", "return msg")
        change = await rec.next()
        assert change.changed == {"setup"} and change.action == "restart"
        save(path, "import os", "return None")
        change = await rec.next()
        assert change.changed == {"setup", "code"} and change.action == "restart"
    finally:
        task.cancel()


async def test_saving_only_outputs_reports_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kernelexec.notebook")
    path, rec, task = await start(tmp_path)
    try:
        save(path, "import math", "return msg", extra_output=True)
        assert await rec.quiet(caplog)
    finally:
        task.cancel()


async def test_invalid_then_fixed(tmp_path: Path) -> None:
    path, rec, task = await start(tmp_path)
    try:
        save(path, "import math", "return msg +")
        change = await rec.next()
        assert change.action == "error" and change.new is None
        assert change.error is not None and "cell 2 (index 1: '%%node')" in str(change.error)
        save(path, "import math", "return msg")  # back to the running code: clear the error
        change = await rec.next()
        assert change.action == "none" and change.changed == frozenset()
        save(path, "import math", "return [msg]")
        assert (await rec.next()).action == "code"
    finally:
        task.cancel()


async def test_plain_callback_initial_code_and_cancel(tmp_path: Path) -> None:
    path = tmp_path / "live.ipynb"
    save(path, "import math", "return msg")
    seen: list[NotebookChange] = []
    running = NodeCode(setup="import math", code="return 1")  # what the pool runs now
    task = watch_notebook(path, seen.append, initial=running, interval=INTERVAL)
    save(path, "import math", "return msg")
    await until(lambda: bool(seen))
    assert [c.changed for c in seen] == [{"code"}]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_file_removed_and_back(tmp_path: Path) -> None:
    path, rec, task = await start(tmp_path)
    try:
        path.unlink()
        change = await rec.next()
        assert change.action == "error" and "cannot read" in str(change.error)
        save(path, "import math", "return msg")
        assert (await rec.next()).action == "none"
    finally:
        task.cancel()


def test_action_table() -> None:
    old = NodeCode()

    def action(**kw: Any) -> str:
        new = NodeCode(**kw)
        return NotebookChange("p", old, new, new.changed_parts(old)).action

    assert action(code="return 1") == "code"
    assert action(setup="x = 1", code="return 1") == "restart"
    assert action(outputs=2) == "none"  # the editor's wiring decides the outputs
    assert action(stop="close()") == "stop"
    assert action(sample={"payload": 1}, name="n") == "none"


async def test_live_link_drives_a_real_pool(tmp_path: Path) -> None:
    """The pattern the bridge uses: code-only changes keep the hot kernel's setup state."""
    from kernelexec.config import PoolConfig
    from kernelexec.pool import MemoryHooks, make_pool

    path = tmp_path / "live.ipynb"
    save(path, "import random\nTOKEN = random.random()", "return {'payload': ['v1', TOKEN]}")
    code = load_node_code(path)
    config = PoolConfig.from_dict("live", {"code": code.code, "setup": code.setup})
    pool = make_pool(config, MemoryHooks())
    await pool.start()
    actions: list[str] = []

    async def on_change(change: NotebookChange) -> None:
        actions.append(change.action)
        if change.action == "code" and change.new is not None:
            await pool.update_code(change.new.code)

    task = watch_notebook(path, on_change, initial=code, interval=INTERVAL)
    try:
        first = (await pool.submit("a", {}))["outputs"][0][0]["payload"]
        save(path, "import random\nTOKEN = random.random()", "return {'payload': ['v2', TOKEN]}")
        await until(lambda: bool(actions))
        second = (await pool.submit("b", {}))["outputs"][0][0]["payload"]
        assert actions == ["code"]
        assert first[0] == "v1" and second[0] == "v2"
        assert first[1] == second[1]  # setup did not run again: same kernel state
    finally:
        task.cancel()
        await pool.close()


async def test_a_failing_callback_does_not_stop_the_watcher(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "live.ipynb"
    save(path, "import math", "return msg")
    seen: list[str] = []

    def on_change(change: NotebookChange) -> None:
        seen.append(change.action)
        if len(seen) == 1:
            raise RuntimeError("pool busy")

    task = watch_notebook(path, on_change, interval=INTERVAL)
    try:
        save(path, "import math", "return 1")
        await until(lambda: bool(seen))
        save(path, "import math", "return 2")
        await until(lambda: len(seen) >= 2)
        assert seen == ["code", "code"]
        assert "The notebook change callback failed" in caplog.text
    finally:
        task.cancel()
