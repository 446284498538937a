"""Pools: a node's kernels, its queue and the order in which results leave.

``make_pool(config, hooks)`` gives a :class:`Pool`. Hot pools keep ``workers`` kernels whose
state lives on between messages. Cold pools keep the same number of kernels that have run
setup but never run a message themselves: the runtime forks a fresh child per message (see
docs/internals.md), so no message sees another's state and none waits for a kernel start.

Messages queue in arrival order (bounded by ``queue_limit``: beyond it a message fails at
once with QUEUE_FULL) and go to the next idle worker; when a burst is waiting a worker takes
several messages in one batch (up to MAX_BATCH, fewer for slow code). With ``keep_order``
results leave in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .config import PoolConfig
from .errors import (
    ConversionError,
    KernelDiedError,
    KernelexecError,
    PoolClosedError,
    QueueFullError,
    SetupError,
)
from .handles.factory import KernelFactory
from .kernel.answers import DELIVERED
from .kernel.results import log_event
from .protocol import ContextOp, PoolState
from .worker import Job, Worker, WorkerState, failed_result

__all__ = ["MemoryHooks", "Pool", "PoolHooks", "PoolStats", "make_pool", "node_workdir"]

log = logging.getLogger("kernelexec.pool")

#: The most messages one batch (one request to a kernel) carries when a burst is waiting.
#: Each batch costs a Jupyter round trip (~1-2 ms of CPU in the kernel and the bridge), so
#: a burst of tiny messages runs faster the larger its batches (docs/performance.md).
MAX_BATCH = 256
#: The cap with a timeout set: the worker's backstop for a kernel that ignores its interrupt
#: waits for the sum of a batch's timeouts, which must not grow with the batch size.
MAX_TIMED_BATCH = 32
#: The cap until a batch has shown how long the code takes: one idle worker must not take a
#: whole queue of slow messages while the others are about to be free.
FIRST_BATCH = 32
#: How often a message goes back to the queue unstarted because its batch's kernel died or
#: was interrupted before it, before it fails (each time another message of the batch was
#: running and failed, so this bounds a storm, it is not reached in normal operation).
MAX_RERUNS = 3
#: No batch holds more than about this much measured execution time (seconds): slow code
#: goes in small batches, so its results keep flowing instead of arriving in lumps.
BATCH_SECONDS = 0.05
#: Setup retry delays: 1 s, 2 s, 4 s ... up to a minute.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
#: How long close() lets running messages finish before failing and interrupting them.
CLOSE_GRACE = 1.0
#: Cold mode: idle time after which the next message's process is forked ahead.
IDLE_BEFORE_PREFORK = 0.05
#: How long close() waits for interrupted kernels before going on to stop code.
INTERRUPT_WAIT = 2.0


class PoolHooks(Protocol):
    """What a pool tells the world (the bridge, or MemoryHooks without Node-RED)."""

    def on_event(self, node_id: str, event: dict[str, Any]) -> None: ...

    async def on_context(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]: ...

    def on_state(self, node_id: str, state: dict[str, Any]) -> None: ...


class MemoryHooks:
    """Hooks for use without Node-RED: context in memory, events collected in a list."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.states: list[tuple[str, dict[str, Any]]] = []
        self.stores: dict[str, dict[str, Any]] = collections.defaultdict(dict)

    def on_event(self, node_id: str, event: dict[str, Any]) -> None:
        self.events.append((node_id, event))

    async def on_context(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]:
        scope = request.get("scope", "node")
        op, key = request.get("op"), request.get("key")
        if op == ContextOp.ENV:
            return {"value": os.environ.get(str(key)), "error": None}
        if op == ContextOp.LINKCALL:
            return {"value": None, "error": "link calls need Node-RED (no Node-RED here)"}
        name = f"{scope}:{node_id}" if scope == "node" else str(scope)
        store = self.stores[f"{name}@{request['store']}" if request.get("store") else name]
        keys = key if isinstance(key, list) else [key]
        if op == ContextOp.GET:
            values = [store.get(str(k)) for k in keys]
            return {"value": values if isinstance(key, list) else values[0], "error": None}
        if op == ContextOp.SET:
            value = request.get("value")
            values = value if isinstance(key, list) and isinstance(value, list) else [value]
            for k, v in zip(keys, values, strict=False):
                store[str(k)] = v
            return {"value": None, "error": None}
        if op == ContextOp.KEYS:
            return {"value": sorted(store), "error": None}
        return {"value": None, "error": f"unknown context operation {op!r}"}

    def on_state(self, node_id: str, state: dict[str, Any]) -> None:
        self.states.append((node_id, state))


#: Worker states before a worker first serves (counted in PoolStats.starting).
_STARTING = frozenset({WorkerState.NEW, WorkerState.STARTING})


@dataclass
class PoolStats:
    state: str
    busy: int
    total: int
    queued: int
    messages: int
    errors: int
    timeouts: int
    restarts: int
    #: Workers still starting (a READY pool serves with the others meanwhile).
    starting: int = 0


def node_workdir(node_id: str, workdir: str = "") -> str:
    """The node's own working directory, created owner-only (see envs.node_workdir)."""
    from .envs import node_workdir as path_of

    path = path_of(node_id, workdir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(path)


def make_pool(config: PoolConfig, hooks: PoolHooks) -> Pool:
    """A hot or cold pool for one node (cold: fresh forked process per message)."""
    return Pool(config, hooks)


class Pool:
    """One node's workers, queue and ordering."""

    def __init__(self, config: PoolConfig, hooks: PoolHooks) -> None:
        self.config = config
        self.hooks = hooks
        self.workdir = node_workdir(config.node_id, config.workdir)
        self.workers: list[Worker] = []
        self.state = PoolState.NEW
        self.error: KernelexecError | None = None
        self._queue: collections.deque[Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._retry: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._last_release: asyncio.Future[None] | None = None
        self._kernels = KernelFactory(
            config.env, node_id=config.node_id, workdir=self.workdir, installing=self._progress
        )
        self._counts = collections.Counter[str]()
        self._running: dict[Worker, list[Job]] = {}
        #: Execution time of one message (seconds; see _measure), None until measured.
        self._exec_mean: float | None = None

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker; raises the first setup or environment error (and retries).

        The pool is READY, and serves, as soon as its first worker is up; the others join
        as they come. Local kernels share this machine's cores, so the first one starts alone
        and the others once it is up: four kernels starting together on 2 cores are each
        about twice as slow as one alone (gateway kernels start together). It returns when
        every worker has started or failed.
        """
        self._set_state(PoolState.STARTING)
        try:
            if self.config.notebook:  # the live link: the code comes from the notebook
                from .notebook.link import open_link

                self._watcher = open_link(self)
            self.workers = [await self._make_worker(i) for i in range(self.config.workers)]
            alone = 1 if not self.config.env.gateway_url else len(self.workers)
            results: list[Any] = []
            for group in (self.workers[:alone], self.workers[alone:]):
                results += await asyncio.gather(
                    *(self._start_worker(w) for w in group), return_exceptions=True
                )
        except KernelexecError as exc:
            self._fail(exc)
            raise
        errors = [r for r in results if isinstance(r, BaseException)]
        self._loops += [  # a failed worker is served once a restart brings it up
            asyncio.ensure_future(self._serve(w))
            for w, result in zip(self.workers, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if errors:
            first = _as_kernelexec_error(errors[0])
            self._fail(first)
            self._retry = asyncio.ensure_future(self._retry_failed())
            raise first
        self._set_state(PoolState.READY)

    async def _start_worker(self, worker: Worker) -> None:
        """Start one worker and serve with it at once; the first one up makes the pool READY."""
        await worker.start()
        self._loops.append(asyncio.ensure_future(self._serve(worker)))
        failed = any(w.state is WorkerState.FAILED for w in self.workers)  # ERROR comes instead
        if self.state in (PoolState.STARTING, PoolState.INSTALLING) and not failed:
            self._set_state(PoolState.READY)

    async def _make_worker(self, index: int) -> Worker:
        kernel = await self._kernels.make(index)
        worker = Worker(
            self.config,
            kernel,
            index=index,
            workdir=self.workdir,
            fork=self.config.mode == "cold",
            bootstrap_code=self._kernels.bootstrap_code,
        )
        worker.on_event = self._forward_event
        worker.direct.on_result = self._direct_result
        worker.direct.on_lost = self._kernel_lost
        kernel.on_stdin = self._answer_context
        kernel.on_stream = self._forward_stream
        return worker

    def log(self, level: str, text: str) -> None:
        """A log event of the node itself (no message), e.g. from the live link."""
        self.hooks.on_event(self.config.node_id, dict(log_event(level, text)))

    def _progress(self, detail: str) -> None:
        self._set_state(PoolState.INSTALLING, detail)

    async def _retry_failed(self) -> None:
        """Failed setup: restart failed workers with growing delays, not in a storm."""
        delay = RETRY_FIRST
        while not self.closed:
            failed = [w for w in self.workers if w.state is WorkerState.FAILED]
            if not failed:
                self.error = None
                self._set_state(PoolState.READY)
                self._wakeup.set()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            for worker in failed:
                if self.closed:
                    return
                try:
                    await worker.restart()
                except Exception as exc:
                    self._fail(_as_kernelexec_error(exc))

    async def close(self) -> None:
        """Fail what waits, let running messages finish (bounded), run stop code, stop."""
        if self.closed:
            return
        self._set_state(PoolState.CLOSED)
        for task in (self._retry, self._watcher):
            if task is not None:
                task.cancel()
        closed = PoolClosedError(f"the node {self.config.node_id} was closed (redeploy or stop)")
        while self._queue:
            self._resolve(self._queue.popleft(), failed_result("", closed), closed)
        self._wakeup.set()
        await self._end_running(closed)
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    async def _end_running(self, closed: PoolClosedError) -> None:
        """Running messages get CLOSE_GRACE to finish, then fail; their kernels are interrupted."""
        if not self._loops:
            return
        _done, pending = await asyncio.wait(self._loops, timeout=CLOSE_GRACE)
        if not pending:
            return
        for worker, jobs in list(self._running.items()):
            for job in jobs:
                self._resolve(job, {}, closed)
            with contextlib.suppress(Exception):
                await worker.kernel.interrupt()
        _done, pending = await asyncio.wait(pending, timeout=INTERRUPT_WAIT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # -- messages ---------------------------------------------------------------------
    async def submit(
        self, req_id: str, msg: dict[str, Any], blobs: list[Any] | None = None
    ) -> dict[str, Any]:
        """Run the node's code on one message (``blobs``: its blob table). Always returns a
        RESULT, never raises."""
        refusal = self._refusal()
        if refusal is not None:
            self._counts["errors"] += 1
            return self._finish(failed_result(req_id, refusal), 0.0)
        loop = asyncio.get_running_loop()
        job = Job(req_id=req_id, msg=msg, future=loop.create_future(), blobs=blobs)
        if not self._grant_blobs(job):
            return await job.future
        previous, release = self._last_release, loop.create_future()
        if self.config.keep_order:
            self._last_release = release
        self._queue.append(job)
        self._wakeup.set()
        try:
            result = await job.future
            if previous is not None:
                await previous
        finally:
            if not release.done():
                release.set_result(None)
        return result

    def submit_nowait(
        self, req_id: str, msg: dict[str, Any], blobs: list[Any] | None = None
    ) -> asyncio.Future[dict[str, Any]] | None:
        """:meth:`submit` without a coroutine (the bridge's hot path, no task per message):
        the future of the RESULT, or None when the pool keeps order (use :meth:`submit`).
        Cancelling the future is what cancelling a task awaiting :meth:`submit` does."""
        if self.config.keep_order:
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        refusal = self._refusal()
        if refusal is not None:
            self._counts["errors"] += 1
            future.set_result(self._finish(failed_result(req_id, refusal), 0.0))
            return future
        job = Job(req_id=req_id, msg=msg, future=future, blobs=blobs)
        if self._grant_blobs(job):
            self._queue.append(job)
            self._wakeup.set()
        return future

    def _grant_blobs(self, job: Job) -> bool:
        """Kernels running as env.user read copies of the message's blob files that this
        process makes for the request and hands over with fchown (never a chown by path, never
        a file the message names: only entries of the frame's own table, checked as any blob
        read). The copies go when the request ends. False (the job's future holds a
        CONVERSION_ERROR result) when an entry cannot be copied."""
        if not self.config.env.user or not job.blobs:
            return True
        import pwd

        from .kernel import blobs

        entry = pwd.getpwnam(self.config.env.user)
        copies: list[dict[str, Any]] = []
        try:
            for item in job.blobs:
                copies.append(blobs.copy_for(item, job.req_id, entry.pw_uid, entry.pw_gid))
        except (OSError, ValueError) as exc:
            blobs.remove_table(copies, job.req_id)
            error = ConversionError(f"msg: cannot hand a blob to the kernel user: {exc}")
            job.future.set_result(self._finish(failed_result(job.req_id, error), 0.0))
            return False
        job.blobs = copies
        job.future.add_done_callback(lambda _f: blobs.remove_table(copies, job.req_id))
        return True

    def _refusal(self) -> KernelexecError | None:
        if self.closed:
            return PoolClosedError(f"the node {self.config.node_id} is closed")
        if self.error is not None and self.state is PoolState.ERROR:
            return self.error
        return QueueFullError.check(
            self.config.node_id, len(self._queue), self.config.queue_limit, "a worker"
        )

    async def _serve(self, worker: Worker) -> None:
        """One worker's loop: take the waiting messages (a batch, see _share), run, answer."""
        while not self.closed or (self._queue and worker.state is WorkerState.READY):
            if not self._queue or worker.state is not WorkerState.READY:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            jobs = [self._queue.popleft() for _ in range(self._share())]
            if self._queue:
                self._wakeup.set()  # let another idle worker take the rest
            self._running[worker] = jobs
            try:
                results = await worker.run(jobs)
            finally:
                del self._running[worker]
            self._measure([result for result in results if result is not None])
            self._answer(jobs, results)
            self._wakeup.set()
            if self.fork_ahead and not self._queue:
                await self._prefork_when_idle(worker)

    def _answer(self, jobs: list[Job], results: list[dict[str, Any] | None]) -> None:
        """Resolve each job with its RESULT; a job that never started (None: its kernel died
        or was interrupted before it) goes back to the front of the queue, in order, at
        most MAX_RERUNS times."""
        again: list[Job] = []
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():  # answered meanwhile (the pool closed)
                continue
            if result is not None:
                self._resolve(job, result, None)
            elif job.reruns >= MAX_RERUNS or self.closed:
                self._resolve(job, {}, _not_run(job, self.closed))
            else:
                job.reruns += 1
                job.started = 0.0
                again.append(job)
        self._queue.extendleft(reversed(again))

    async def _prefork_when_idle(self, worker: Worker) -> None:
        """Cold mode: once no message came for IDLE_BEFORE_PREFORK, fork the next child.

        Back-to-back messages fork as they come (waiting for a prefork would only add a
        round trip); a message after a pause finds its process already forked.
        """
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), IDLE_BEFORE_PREFORK)
        idle = not self._queue and worker.state is WorkerState.READY
        if idle and not self.closed:
            await worker.prefork()

    @property
    def fork_ahead(self) -> bool:
        """Cold pools fork the next message's process while idle (off the message's path)."""
        return self.config.mode == "cold"

    def _share(self) -> int:
        """How many waiting messages one idle worker takes: its fair share, at most
        :meth:`_batch_limit`.

        Idle workers get work before anyone batches: two messages and two idle workers
        run side by side; a burst waiting on busy workers goes in batches.
        """
        idle = sum(1 for w in self.workers if w.state is WorkerState.READY)
        share = -(-len(self._queue) // max(idle, 1))
        return max(1, min(self._batch_limit(), share))

    def _batch_limit(self) -> int:
        """MAX_BATCH (MAX_TIMED_BATCH with a timeout), fewer for slow code (BATCH_SECONDS),
        FIRST_BATCH until the code's speed is known."""
        mean = self._exec_mean
        if mean is None:
            return min(FIRST_BATCH, MAX_TIMED_BATCH if self.config.timeout > 0 else MAX_BATCH)
        limit = MAX_TIMED_BATCH if self.config.timeout > 0 else MAX_BATCH
        if mean * limit > BATCH_SECONDS:
            limit = max(1, int(BATCH_SECONDS / mean))
        return limit

    def _measure(self, results: list[dict[str, Any]]) -> None:
        """Update the mean execution time per message from a batch's results: at once when
        the code got slower (the next batches shrink), gradually when it got faster."""
        total = 0.0
        for result in results:
            exec_ms = result.get("exec_ms")
            if isinstance(exec_ms, (int, float)):
                total += exec_ms
        if results:
            mean = total / 1000.0 / len(results)
            known = self._exec_mean
            if known is None or mean >= known:
                self._exec_mean = mean
            else:
                self._exec_mean = known + (mean - known) * 0.3

    def _resolve(self, job: Job, result: dict[str, Any], error: KernelexecError | None) -> None:
        if job.future.done():
            return
        if error is not None:
            result = failed_result(job.req_id, error)
        queued_ms = ((job.started or time.perf_counter()) - job.enqueued) * 1000.0
        job.future.set_result(self._finish(result, queued_ms))

    def _finish(self, result: dict[str, Any], queued_ms: float) -> dict[str, Any]:
        result["node_id"] = self.config.node_id
        result["timing"] = {"queued_ms": queued_ms, "exec_ms": result.pop("exec_ms", 0.0)}
        self._counts["messages"] += 1
        error = result.get("error")
        if error:
            self._counts["errors"] += 1
            if error.get("code") == "TIMEOUT":
                self._counts["timeouts"] += 1
        return result

    # -- to and from the kernel ---------------------------------------------------------
    def _direct_result(self, result: dict[str, Any]) -> None:
        """The RESULT of a message the node wrote to a kernel itself (kernelexec/directruns.py):
        counted; sent as a result frame unless the kernel delivered it."""
        result = self._finish(result, 0.0)
        if not result.pop(DELIVERED, False):
            self.hooks.on_event(self.config.node_id, {**result, "type": "result"})

    def _kernel_lost(self, pid: int, started: str | None) -> None:
        event = {"type": "kernel_lost", "pid": pid, "started": started}
        self.hooks.on_event(self.config.node_id, event)

    def _forward_event(self, event: dict[str, Any]) -> None:
        self.hooks.on_event(self.config.node_id, event)

    def _forward_stream(self, name: str, text: str) -> None:
        level = "warn" if name == "stderr" else "info"
        event = dict(log_event(level, text.rstrip("\n")))
        self.hooks.on_event(self.config.node_id, event)

    async def _answer_context(self, prompt: str) -> str:
        try:
            request = json.loads(prompt)
        except ValueError:
            return json.dumps({"value": None, "error": "input() is not available in node code"})
        if not isinstance(request, dict) or request.get("kernelexec") != "context":
            return json.dumps({"value": None, "error": "input() is not available in node code"})
        try:
            answer = await self.hooks.on_context(self.config.node_id, request)
        except Exception as exc:
            answer = {"value": None, "error": f"context {request.get('op')} failed: {exc}"}
        return json.dumps(answer)

    # -- state --------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Closed for good (read anew after every await: close() may run meanwhile)."""
        return self.state is PoolState.CLOSED

    def stats(self) -> PoolStats:
        busy = sum(1 for w in self.workers if w.state is WorkerState.BUSY)
        return PoolStats(
            state=self.state,
            busy=busy,
            total=len(self.workers),
            queued=len(self._queue),
            messages=self._counts["messages"],
            errors=self._counts["errors"],
            timeouts=self._counts["timeouts"],
            restarts=sum(w.restarts for w in self.workers),
            starting=sum(1 for w in self.workers if w.state in _STARTING),
        )

    def kernels(self) -> list[dict[str, Any]]:
        """Hot kernels a Jupyter client can attach to."""
        return [
            {"worker": w.index, "pid": w.kernel.pid, "connection_file": w.kernel.connection_file}
            for w in self.workers
            if w.kernel.connection_file and w.state in (WorkerState.READY, WorkerState.BUSY)
        ]

    async def ask_kernel(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """A Jupyter shell request (complete_request, inspect_request) to an idle kernel of
        this pool, else a busy one (its reply then waits for the message: the editor's pool
        runs none); for the editor's completion and hover (bridge frame ``inspect``)."""
        ready = [w for w in self.workers if w.state in (WorkerState.READY, WorkerState.BUSY)]
        if not ready:
            msg = f"node {self.config.node_id} has no running kernel to ask (state {self.state})"
            raise PoolClosedError(msg)
        ready.sort(key=lambda w: w.state != WorkerState.READY)
        return await ready[0].kernel.shell_request(msg_type, content)

    async def update_code(self, code: str) -> None:
        """New message code for every worker; hot kernels keep their setup state."""
        self.config = self.config.replace(code=code)
        for worker in self.workers:
            await worker.update_code(code)

    def _fail(self, error: KernelexecError) -> None:
        self.error = error
        self._set_state(PoolState.ERROR)

    def _set_state(self, state: PoolState, detail: str = "") -> None:
        self.state = state
        stats = self.stats()
        self.hooks.on_state(
            self.config.node_id,
            {
                "state": state,
                "busy": stats.busy,
                "total": stats.total,
                "queued": stats.queued,
                "starting": stats.starting,
                "error": self.error.to_dict() if self.error and state is PoolState.ERROR else None,
                "detail": detail,
            },
        )


def _not_run(job: Job, closed: bool) -> KernelexecError:
    if closed:
        return PoolClosedError("the node was closed before this message could run again")
    return KernelDiedError(
        f"not run: its kernel died or was interrupted {job.reruns + 1} times before this "
        "message started (an earlier message of each batch kept ending it)"
    )


def _as_kernelexec_error(exc: BaseException) -> KernelexecError:
    if isinstance(exc, KernelexecError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    return SetupError(text)
