"""The ``execute`` frames of one connection: each message goes to its node's pool and gets
exactly one ``result`` frame (docs/protocol.md).

Results the bridge makes itself (pool could not start, pool closed, shutdown, a bug) have the
same shape as the pool's (:func:`error_result`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from ..errors import ErrorObject, QueueFullError
from ..kernel.answers import DELIVERED
from ..kernel.results import failed_result
from .frames import FrameError, describe, error_object
from .registry import PoolEntry

__all__ = ["Executions", "error_result"]

log = logging.getLogger("kernelexec.server")


def error_result(node_id: str, req_id: str, error: ErrorObject) -> dict[str, Any]:
    """A result frame for a message the pool never answered."""
    frame = {"type": "result", "node_id": node_id, **failed_result(req_id, error)}
    frame["timing"] = {"queued_ms": 0.0, "exec_ms": frame.pop("exec_ms")}
    return frame


def _exec_seconds(result: dict[str, Any]) -> float | None:
    timing = result.get("timing")
    value = timing.get("exec_ms") if isinstance(timing, dict) else result.get("exec_ms")
    return value / 1000.0 if isinstance(value, (int, float)) else None


class Executions:
    """The messages of one connection that have no result yet, by ``req_id``.

    ``send`` writes a result frame; ``closed_reason`` says why a pool went away (the bridge
    or the connection stopping), None when the node itself closed it.
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        closed_reason: Callable[[], str | None],
    ) -> None:
        self._send = send
        self._closed_reason = closed_reason
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    def start(
        self, entry: PoolEntry, req_id: str, msg: dict[str, Any], table: Any = None
    ) -> None:
        """Run ``msg`` (``table``: its blob table) on ``entry``'s pool; its result frame is
        sent when it is done."""
        if req_id in self._inflight:
            text = f"req_id {describe(req_id)} is still running here; req_ids must be unique"
            raise FrameError(text, req_id=req_id, node_id=entry.node_id)
        future = self._submit_now(entry, req_id, msg, table)
        if future is None:  # the pool is not ready yet, or needs its coroutine (keep_order)
            future = asyncio.ensure_future(self._execute(entry, req_id, msg, table))
        else:
            future.add_done_callback(functools.partial(self._answered, entry, req_id))
        self._inflight[req_id] = future
        entry.running.add(future)

    def running(self) -> list[asyncio.Future[Any]]:
        """The futures of the messages still running."""
        return list(self._inflight.values())

    def cancel_all(self) -> None:
        """Every running message gets its POOL_CLOSED result now."""
        for task in list(self._inflight.values()):
            task.cancel()

    def _submit_now(
        self, entry: PoolEntry, req_id: str, msg: dict[str, Any], table: Any
    ) -> asyncio.Future[Any] | None:
        """The hot path: hand the message to a ready pool without a task of its own (the
        result future's done callback answers). None when :meth:`_execute` must do it."""
        pool = entry.pool
        if pool is None or not entry.settled.is_set() or entry.failure is not None:
            return None
        try:
            future: asyncio.Future[Any] | None = pool.submit_nowait(req_id, msg, table)
        except Exception as exc:  # answered as INTERNAL by _answered, like _execute does
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        if future is not None:
            entry.load_changed()
        return future

    def _answered(self, entry: PoolEntry, req_id: str, future: asyncio.Future[Any]) -> None:
        """Done callback of a :meth:`_submit_now` future: the same answers as :meth:`_execute`
        (cancelled: POOL_CLOSED; an exception: INTERNAL)."""
        if future.cancelled():
            result = error_result(entry.node_id, req_id, self._closed(entry))
        elif (exc := future.exception()) is not None:
            log.error("Bug while running req %s of node %s", req_id, entry.node_id, exc_info=exc)
            message = f"the bridge failed on this message: {exc!r}"
            error = error_object("INTERNAL", message, type(exc).__name__)
            result = error_result(entry.node_id, req_id, error)
        else:
            result = future.result()
        self._finish(entry, req_id, result)

    async def _execute(
        self, entry: PoolEntry, req_id: str, msg: dict[str, Any], table: Any
    ) -> None:
        try:
            result = await self._submit(entry, req_id, msg, table)
        except asyncio.CancelledError:
            self._finish(entry, req_id, error_result(entry.node_id, req_id, self._closed(entry)))
            raise
        except Exception as exc:
            log.exception("Bug while running req %s of node %s", req_id, entry.node_id)
            message = f"the bridge failed on this message: {exc!r}"
            error = error_object("INTERNAL", message, type(exc).__name__)
            result = error_result(entry.node_id, req_id, error)
        self._finish(entry, req_id, result)

    async def _submit(
        self, entry: PoolEntry, req_id: str, msg: dict[str, Any], table: Any
    ) -> dict[str, Any]:
        if not entry.settled.is_set():
            full = QueueFullError.check(
                entry.node_id, entry.waiting, entry.config.queue_limit, "the start"
            )
            if full is not None:
                return error_result(entry.node_id, req_id, full.to_dict())
            entry.waiting += 1
            try:
                await entry.settled.wait()
            finally:
                entry.waiting -= 1
        pool = entry.pool
        if pool is None or entry.failure is not None:
            return error_result(entry.node_id, req_id, entry.failure or self._closed(entry))
        entry.load_changed()
        if table is None:  # pools of the tests may take (req_id, msg) only
            return await pool.submit(req_id, msg)
        result: dict[str, Any] = await pool.submit(req_id, msg, table)
        return result

    def _finish(self, entry: PoolEntry, req_id: str, result: dict[str, Any]) -> None:
        task = self._inflight.pop(req_id, None)
        if task is not None:
            entry.running.discard(task)
        result["type"] = "result"
        result["node_id"] = entry.node_id
        result["req_id"] = req_id
        seconds = _exec_seconds(result)
        if seconds is not None and entry.latency is not None:
            entry.latency.observe(seconds)
        if not result.pop(DELIVERED, False):  # else the kernel gave it to the node itself
            self._send(result)
        entry.load_changed()

    def _closed(self, entry: PoolEntry) -> ErrorObject:
        reason = self._closed_reason() or "the node closed it"
        message = f"node {entry.node_id} was closed ({reason}); the message did not finish"
        return error_object("POOL_CLOSED", message, "PoolClosedError")
