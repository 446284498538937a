"""The messages a node wrote to its kernel itself, accounted for by the bridge.

A hot node with one worker writes a plain message straight into its kernel over the answer
socket (kernelexec/kernel/answers.py) when nothing else of it is in flight; the kernel runs it
as a batch of one and marks its batch frame on the result pipe ``direct``. The bridge did not
send that message, but it still owns what happens to it, from the result pipe, exactly as for
a batch of its own (kernelexec/worker.py):

- **the backstop**: with a timeout, a run that is still going ``timeout`` + BACKSTOP_GRACE
  after it began is interrupted, and if no RESULT comes within INTERRUPT_GRACE the kernel is
  restarted and the message fails with TIMEOUT;
- **its events**: send and status events of the run are counted, and a RESULT the kernel
  could not deliver itself (after events, with blob files, too large) is sent as a ``result``
  frame once they are all in, as the worker does for its batches;
- **a death**: the RESULT-less direct run fails with KERNEL_DIED, then a ``kernel_lost`` frame
  names the last direct request that began on that kernel (its result came, or is on its way
  from the bridge: a result waiting for its send events may still follow) and tells the node
  that anything else it wrote there never started (it sends those to the bridge);
- **the counts**: every direct RESULT goes through the pool's accounting (messages, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ExecutionTimeoutError, KernelDiedError
from .kernel.results import as_received
from .kernel.results import failed_result as result_with_error

if TYPE_CHECKING:
    from .config import PoolConfig
    from .handles.base import KernelHandle


class DirectHost(Protocol):
    """What :class:`DirectRuns` needs of its worker (kernelexec/worker.py)."""

    config: PoolConfig
    kernel: KernelHandle

    @property
    def name(self) -> str: ...

    async def wait_for_sends(self, result: dict[str, Any]) -> None: ...

    async def restart_after_direct(self) -> None: ...


__all__ = ["DirectRuns"]

log = logging.getLogger("kernelexec.worker")


class DirectRuns:
    """One worker's direct runs: at most one at a time (the node sends the next only when
    this one has its result)."""

    def __init__(self, worker: DirectHost, backstop_grace: float, interrupt_grace: float) -> None:
        self._worker = worker
        self._backstop_grace = backstop_grace
        self._interrupt_grace = interrupt_grace
        #: the req_id of the direct run going on in the kernel, if any
        self.current: str | None = None
        #: the last direct run that began (the node's kernel_lost names it: it started)
        self.last_started: str | None = None
        #: direct runs whose events the worker counts (until their result is out)
        self.tracked: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._ended: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: the pool's: a direct RESULT (counted, and sent when the kernel could not deliver it)
        self.on_result: Callable[[dict[str, Any]], None] | None = None
        #: the pool's: the kernel (pid) died; of the node's direct requests to it, only the
        #: last that began (its result comes from the bridge) started
        self.on_lost: Callable[[int, str | None], None] | None = None

    # -- from the result pipe (kernel/resultpipe.py DirectSink) --------------------------
    def started(self, req_id: str) -> None:
        self.current = self.last_started = req_id
        self.tracked.add(req_id)
        self._ended = asyncio.Event()
        timeout = self._worker.config.timeout
        if timeout > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(timeout + self._backstop_grace, self._overran, req_id)

    def finished(self, result: dict[str, Any]) -> bool:
        req_id = result.get("req_id")
        if req_id is None or req_id != self.current:
            return False
        self._end()
        self._spawn(self._report(result))
        return True

    # -- from the worker --------------------------------------------------------------
    def kernel_died(self, pid: int | None) -> None:
        """The kernel process is gone: what ran is in the pipe (the worker drained it)."""
        req_id = self.current
        if req_id is not None:
            self._end()
            error = KernelDiedError("the kernel process died while this message was running")
            self._emit(_failed(req_id, error))
        if pid is not None and self.on_lost is not None:
            self.on_lost(pid, self.last_started)
        self.last_started = None

    def close(self) -> None:
        self._end()
        for task in list(self._tasks):
            task.cancel()

    # -- inside ---------------------------------------------------------------------------
    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended is not None:
            self._ended.set()
        self.current = None

    async def _report(self, result: dict[str, Any]) -> None:
        req_id = str(result.get("req_id"))
        try:
            if not result.get("delivered"):
                await self._worker.wait_for_sends(result)
        finally:
            self.tracked.discard(req_id)
        self._emit(result)

    def _emit(self, result: dict[str, Any]) -> None:
        self.tracked.discard(str(result.get("req_id")))
        if self.on_result is not None:
            self.on_result(result)

    def _overran(self, req_id: str) -> None:
        self._spawn(self._backstop(req_id))

    async def _backstop(self, req_id: str) -> None:
        """Interrupt a direct run that overran its timeout; restart a kernel that does not
        stop (the message then fails with TIMEOUT, before the restart)."""
        worker, ended = self._worker, self._ended
        log.warning("Kernel %s overran its timeout on a direct message; interrupting", worker.name)
        with contextlib.suppress(Exception):
            await worker.kernel.interrupt()
        if ended is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ended.wait(), self._interrupt_grace)
        if self.current != req_id:
            return  # its RESULT came (the interrupt stopped it)
        self._end()
        text = (
            f"the code ran longer than the timeout ({worker.config.timeout:g} s) and did not "
            "stop when interrupted; the kernel was restarted"
        )
        self._emit(_failed(req_id, ExecutionTimeoutError(text, kernel_stuck=True)))
        await worker.restart_after_direct()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _failed(req_id: str, error: KernelDiedError | ExecutionTimeoutError) -> dict[str, Any]:
    return as_received(result_with_error(req_id, error.to_dict()))
