"""The live link of a pool to its notebook (``notebook`` set on the node).

The node's setup, code and stop come from the notebook file, and each saved change reaches
the running workers: new message code in place (setup state kept), new setup or stop code by
restarting them. A notebook that stops parsing leaves the node running its last good code,
with a warning. The pool knows the link only as :func:`open_link`; the link knows the pool
only as the :class:`LinkedPool` protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from ..config import PoolConfig
from .reading import load_node_code
from .watch import NotebookChange, watch_notebook

__all__ = ["LinkedPool", "LinkedWorker", "open_link"]


class LinkedWorker(Protocol):
    config: PoolConfig

    async def update_code(self, code: str) -> None: ...

    async def restart(self) -> None: ...


class LinkedPool(Protocol):
    config: PoolConfig

    @property
    def workers(self) -> Sequence[LinkedWorker]: ...

    @property
    def closed(self) -> bool: ...

    def log(self, level: str, text: str) -> None:
        """A log event of the node (not of a message)."""


def open_link(pool: LinkedPool) -> asyncio.Task[None]:
    """Load the node's code from ``pool.config.notebook`` into ``pool.config`` and watch the
    file; the task ends with the pool (cancel it on close). Raises NotebookError."""
    path = pool.config.notebook
    code = load_node_code(path)
    pool.config = pool.config.replace(code=code.code, setup=code.setup, stop=code.stop)

    async def on_change(change: NotebookChange) -> None:
        await _apply(pool, change)

    return watch_notebook(path, on_change, initial=code)


async def _apply(pool: LinkedPool, change: NotebookChange) -> None:
    """Apply a notebook change: new message code in place, new setup by restarting."""
    if change.action == "error":
        pool.log("warn", f"notebook {change.path}: {change.error}; the node keeps its running code")
        return
    if change.action not in ("code", "restart", "stop") or pool.closed or change.new is None:
        return
    new = change.new
    pool.config = pool.config.replace(code=new.code, setup=new.setup, stop=new.stop)
    for worker in pool.workers:
        worker.config = pool.config
        if change.action == "code":
            await worker.update_code(new.code)
        elif change.action == "restart":
            await worker.restart()
    pool.log("info", f"notebook {change.path} reloaded ({change.action})")
