"""One kernel's life: start, set up, run batches of messages, time out, restart, stop.

A :class:`Worker` drives one :class:`~kernelexec.handles.base.KernelHandle`. It speaks the
in-kernel contract of docs/internals.md: ops ``init``, ``setup``, ``run``, ``code`` and
``stop`` sent by :meth:`KernelHandle.request` (a ``kernelexec_request``, or the execute_request
of ``__kernelexec__.handle()``), whose answer comes back in the reply payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import PoolConfig
from .directruns import DirectRuns
from .errors import (
    ExecutionTimeoutError,
    KernelDiedError,
    KernelexecError,
    SetupError,
    error_from_dict,
)
from .handles.base import HANDLE_CODE, KernelHandle
from .kernel.resultpipe import ResultPipe
from .kernel.results import as_received
from .kernel.results import failed_result as result_with_error
from .protocol import BLOB_TABLE, KernelOp

__all__ = ["BOOTSTRAP_CODE", "HANDLE_CODE", "Job", "Worker", "WorkerState", "failed_result"]

log = logging.getLogger("kernelexec.worker")

BOOTSTRAP_CODE = (
    "import kernelexec.kernel.runtime as __kernelexec_runtime__\n"
    "__kernelexec__ = __kernelexec_runtime__.install(get_ipython())\n"
    "del __kernelexec_runtime__\n"
)
#: Extra time a batch gets beyond the sum of its timeouts before the worker steps in.
BACKSTOP_GRACE = 2.0
#: How long the worker waits after an interrupt before it restarts the kernel.
INTERRUPT_GRACE = 2.0
#: How long stop code may run at shutdown.
STOP_CODE_LIMIT = 5.0
#: How long a result waits for the send events it announced.
SEND_WAIT_LIMIT = 2.0


class WorkerState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class Job:
    """One message waiting for, or running on, a worker."""

    req_id: str
    msg: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    #: How often it went back to the queue unstarted (its batch's kernel died before it).
    reruns: int = 0
    #: The blob table of msg (spec value_encoding.blob_table), None when it has no blob.
    blobs: list[dict[str, Any]] | None = None


class Worker:
    """Runs one node's code on one kernel."""

    def __init__(
        self,
        config: PoolConfig,
        kernel: KernelHandle,
        *,
        index: int,
        workdir: str,
        fork: bool = False,
        bootstrap_code: str = BOOTSTRAP_CODE,
    ) -> None:
        self.config = config
        self.kernel = kernel
        self.index = index
        self.workdir = workdir
        self.fork = fork
        self.bootstrap_code = bootstrap_code
        self.state = WorkerState.NEW
        self.restarts = 0
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self._sent_seen: dict[str, int] = {}
        #: Blob files named by the batch's relayed send events, per req_id: their reader's.
        self._sent_files: dict[str, set[str]] = {}
        self._sent_waiters: dict[str, tuple[int, asyncio.Future[None]]] = {}
        #: The req_ids of the batch running now: only their send events are counted.
        self._batch_ids: set[str] = set()
        #: The result pipe fd the runtime in the kernel adopted (sent in the init op).
        self._pipe_fd = -1
        #: Whether ``run`` ops take the lane (the runtime adopted the request pipe too).
        self._lane = False
        #: The messages the node wrote to the kernel itself (kernelexec/directruns.py).
        self.direct = DirectRuns(self, BACKSTOP_GRACE, INTERRUPT_GRACE)
        kernel.on_event = self._on_kernel_event
        kernel.on_death = self._kernel_died

    @property
    def name(self) -> str:
        return f"{self.config.node_id}#{self.index}"

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start the kernel, install the runtime, load the code, run setup."""
        self.state = WorkerState.STARTING
        try:
            await self.kernel.start()
            await self._prepare()
        except BaseException:
            self.state = WorkerState.FAILED
            raise
        self.state = WorkerState.READY

    async def _prepare(self) -> None:
        if not (self.kernel.installs_runtime and self.bootstrap_code == BOOTSTRAP_CODE):
            reply = await self.kernel.execute(self.bootstrap_code, {})
            if reply.get("status") != "ok":
                text = f"could not load the kernelexec runtime in the kernel: {_reply_error(reply)}"
                raise KernelexecError(text)
        node = self._node_info()
        pipe, lane = self.kernel.result_pipe, self.kernel.request_pipe
        if pipe is not None:
            pipe.reset()
            node["result_fd"] = pipe.write_fd
            if lane is not None and self.config.message_path == "lane":
                node["request_fd"] = lane.read_fd
                offer = answer_offer(self.config, fork=self.fork)
                if offer is not None:
                    node["answers"] = offer
                    node["timeout"] = self.config.timeout  # for the node's direct requests
                    node["setup_follows"] = bool(self.config.setup.strip())
                    pipe.direct = self.direct
        self._pipe_fd = -1
        self._lane = False
        answer = await self._op({"op": KernelOp.INIT, "node": node}, error_cls=None)
        if pipe is not None and answer.get("result_pipe") is True:  # the runtime holds it
            self._pipe_fd = pipe.write_fd
            self._lane = answer.get("lane") is True  # it reads the request pipe
        if self.config.setup.strip():
            await self._op({"op": KernelOp.SETUP, "code": self.config.setup}, error_cls=SetupError)

    def _node_info(self) -> dict[str, Any]:
        from .kernel import blobs

        return {
            "node_id": self.config.node_id,
            "name": self.config.name,
            "outputs": self.config.outputs,
            "code": self.config.code,
            "workdir": self.workdir,
            "blob_dir": blobs.blob_dir(),
            "fork": self.fork,
        }

    async def _op(
        self, request: dict[str, Any], *, error_cls: type[KernelexecError] | None
    ) -> dict[str, Any]:
        data = _payload(await self._send(request))
        if data.get("error"):
            error = error_from_dict(data["error"])
            if error_cls is not None and not isinstance(error, error_cls):
                wrapped = error_cls(
                    f"{request['op']} code failed: {error.message}",
                    type_name=error.type_name,
                    traceback=error.traceback,
                    line=error.line,
                )
                raise wrapped
            raise error
        return data

    async def restart(self) -> None:
        """A fresh kernel process, with runtime, code and setup again."""
        self.restarts += 1
        self.state = WorkerState.STARTING
        log.info("Restarting kernel %s", self.name)
        try:
            await self.kernel.restart()
            await self._prepare()
        except BaseException:
            self.state = WorkerState.FAILED
            raise
        self.state = WorkerState.READY

    async def update_code(self, code: str) -> None:
        """New message code; the kernel keeps its setup state (notebook live link)."""
        self.config = self.config.replace(code=code)
        await self._op({"op": KernelOp.CODE, "code": code}, error_cls=None)

    async def prefork(self) -> None:
        """Cold mode, when idle: the runtime forks the next message's child ahead of time."""
        try:
            await self._op({"op": KernelOp.PREFORK}, error_cls=None)
        except Exception as exc:  # an optimisation: the next message forks for itself
            log.debug("prefork on %s failed: %s", self.name, exc)

    async def stop(self) -> None:
        """Run stop code (bounded), then shut the kernel down. Never raises."""
        if self.state is WorkerState.CLOSED:
            return
        try:
            if self.config.stop.strip() and self.kernel.is_alive():
                request = {"op": KernelOp.STOP, "code": self.config.stop}
                await asyncio.wait_for(self._op(request, error_cls=None), STOP_CODE_LIMIT)
        except (Exception, asyncio.TimeoutError) as exc:
            log.warning("Stop code of %s did not finish cleanly: %s", self.name, exc)
        finally:
            self.state = WorkerState.CLOSED
            self.direct.close()
            await self.kernel.shutdown(now=not self.kernel.is_alive())

    # -- messages ---------------------------------------------------------------------
    async def run(self, jobs: list[Job]) -> list[dict[str, Any] | None]:
        """Run a batch; one RESULT per job, in order, or None for a job whose code never
        started (the kernel died or was interrupted before it): the pool runs that one
        again. Never raises for a job; a job whose code started never comes back None."""
        self.state = WorkerState.BUSY
        now = time.perf_counter()
        for job in jobs:
            job.started = now
        batch = [_batch_item(job, self.config.timeout) for job in jobs]
        request: dict[str, Any] = {"op": KernelOp.RUN, "batch": batch}
        pipe = self._result_pipe()
        if pipe is not None:
            pipe.begin([job.req_id for job in jobs])
            request["stream"] = True
        self._batch_ids = {job.req_id for job in jobs}
        results: list[dict[str, Any] | None]
        try:
            data = await self._run_with_backstop(request, len(jobs))
            results = _collected(jobs, data, pipe)
            await self._wait_for_sends([r for r in results if r is not None])
        except KernelexecError as error:
            results = self._accounted(jobs, error, pipe)
            await self._wait_for_sends([r for r in results if r is not None and not r["error"]])
            await self._recover(error)
        except Exception as exc:  # a bug must fail the batch, not end the pool's loop silently
            log.exception("Kernel %s: running a batch failed", self.name)
            bug = KernelexecError(f"the bridge could not run this message: {exc!r}")
            results = [failed_result(job.req_id, bug) for job in jobs]
        finally:
            self._forget_batch(pipe)
            if self.state is WorkerState.BUSY:
                self.state = WorkerState.READY
        return results

    def _result_pipe(self) -> ResultPipe | None:
        pipe = self.kernel.result_pipe
        return pipe if pipe is not None and self._pipe_fd == pipe.write_fd else None

    def _accounted(
        self, jobs: list[Job], error: KernelexecError, pipe: ResultPipe | None
    ) -> list[dict[str, Any] | None]:
        """After a dead, stuck or interrupted kernel: what the pipe says ran keeps its
        RESULT, the message that was running fails with ``error``, the rest run again.
        Without a pipe (gateway kernels) nobody knows which ran: all fail."""
        if pipe is None:
            return [failed_result(job.req_id, _unaccounted(error, len(jobs))) for job in jobs]
        pipe.drain()  # everything the kernel wrote before it died is in the pipe now
        pipe.reset()  # a frame cut short by the interrupt or the death must not stay
        results: list[dict[str, Any] | None] = []
        running = pipe.batch_started
        for job in jobs:
            result = pipe.results.get(job.req_id)
            if result is not None:
                results.append(result)
            elif running:
                behind = len(jobs) - len(results) - 1
                results.append(failed_result(job.req_id, _while_running(error, behind)))
                self._drop_unsent_files(job.req_id)
                running = False
            else:
                results.append(None)
        return results

    def _drop_unsent_files(self, req_id: str) -> None:
        """The output files a dead kernel wrote for the message it was running, but those its
        relayed send events named (their reader removes them). A live kernel that was
        interrupted removes its own; the files of messages whose RESULT came stay theirs."""
        pid = self.kernel.pid
        if pid is None or self.kernel.is_alive():
            return
        from .kernel import blobs

        keep = self._sent_files.get(req_id, set())
        with contextlib.suppress(OSError):
            blobs.remove_request_blobs(req_id, pid=pid, keep=keep)

    def _forget_batch(self, pipe: ResultPipe | None) -> None:
        """Every way out of a batch drops its bookkeeping (send counts, waiters, frames)."""
        for req_id in self._batch_ids:
            self._sent_files.pop(req_id, None)
            self._sent_seen.pop(req_id, None)
            self._sent_waiters.pop(req_id, None)
        self._batch_ids = set()
        if pipe is not None:
            pipe.end()

    async def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        """One op to the kernel: down the lane once the runtime took it (every op after init
        then, so they stay in order), else as a Jupyter shell request."""
        if self._lane:
            return await self.kernel.lane_request(request)
        return await self.kernel.request(request)

    async def _run_with_backstop(self, request: dict[str, Any], count: int) -> dict[str, Any]:
        if self.config.timeout <= 0:  # no backstop: no task to watch either
            return _payload(await self._send(request))
        task = asyncio.ensure_future(self._send(request))
        try:
            return await self._backstop(task, count)
        finally:
            if not task.done():
                task.cancel()

    async def _backstop(self, task: asyncio.Future[dict[str, Any]], count: int) -> dict[str, Any]:
        """Wait for the batch; interrupt, then restart, a kernel that overruns its timeouts."""
        limit = self.config.timeout * count + BACKSTOP_GRACE
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            log.warning("Kernel %s overran its timeout; interrupting", self.name)
            with contextlib.suppress(Exception):
                await self.kernel.interrupt()
            done, _ = await asyncio.wait({task}, timeout=INTERRUPT_GRACE)
        if not done:
            task.cancel()
            text = (
                f"the code ran longer than the timeout ({self.config.timeout:g} s) and did not "
                "stop when interrupted; the kernel was restarted"
            )
            raise ExecutionTimeoutError(text, kernel_stuck=True)
        reply = task.result()
        if reply.get("status") != "ok":
            text = f"the code was interrupted after the timeout ({self.config.timeout:g} s)"
            raise ExecutionTimeoutError(text)
        return _payload(reply)

    async def _recover(self, error: KernelexecError) -> None:
        """After a dead or stuck kernel: a fresh one (setup runs again)."""
        interrupted = isinstance(error, ExecutionTimeoutError) and not error.kernel_stuck
        if interrupted and self.kernel.is_alive():
            return
        try:
            await self.restart()
        except Exception as exc:  # the pool retries failed workers with backoff
            log.error("Kernel %s could not be restarted: %s", self.name, exc)

    # -- events -------------------------------------------------------------------------
    def _on_kernel_event(self, event: dict[str, Any], buffers: list[bytes]) -> None:
        kind = event.get("type")
        if kind in ("send", "status") and event.get("req_id"):
            self._count_send(str(event["req_id"]), event.get(BLOB_TABLE))
            if kind == "status":  # the protocol's status frame has no req_id
                event = {key: value for key, value in event.items() if key != "req_id"}
        if buffers:
            event = {**event, "buffers": buffers}
        if self.on_event is not None:
            self.on_event(event)

    def _count_send(self, req_id: str, table: Any = None) -> None:
        if req_id not in self._batch_ids and not self._direct_run(req_id):
            return  # a late event of a batch that is over: no entry
        if isinstance(table, list) and table:
            names = self._sent_files.setdefault(req_id, set())
            names.update(str(entry.get("name")) for entry in table if isinstance(entry, dict))
        seen = self._sent_seen.get(req_id, 0) + 1
        self._sent_seen[req_id] = seen
        waiter = self._sent_waiters.get(req_id)
        if waiter is not None and seen >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)

    def _direct_run(self, req_id: str) -> bool:
        """Whether ``req_id`` is a direct run's (kernelexec/directruns.py). Its batch frame is
        on the result pipe before any of its events exists, but the events come on IOPub and
        may be read first: the pipe is drained then."""
        if req_id in self.direct.tracked:
            return True
        pipe = self._result_pipe()
        if pipe is None or pipe.direct is not self.direct:
            return False
        pipe.drain()
        return req_id in self.direct.tracked

    async def wait_for_sends(self, result: dict[str, Any]) -> None:
        """A direct run's send and status events are in (kernelexec/directruns.py)."""
        try:
            await self._wait_for_sends([result])
        finally:
            self._sent_files.pop(str(result.get("req_id")), None)

    def _kernel_died(self) -> None:
        """The kernel process exited (LocalKernel's watcher): a direct run on it fails, and
        the node learns that its other direct requests to it never started."""
        pipe = self._result_pipe()
        if pipe is None or pipe.direct is not self.direct:
            return
        pipe.drain()  # a RESULT written before the death ends the direct run first
        current = self.direct.current
        if current is not None:
            self._drop_unsent_files(current)
            self._sent_files.pop(current, None)
        self.direct.kernel_died(self.kernel.pid)

    async def restart_after_direct(self) -> None:
        """A direct run did not stop when interrupted (kernelexec/directruns.py)."""
        try:
            await self.restart()
        except Exception as exc:  # the pool retries failed workers with backoff
            log.error("Kernel %s could not be restarted: %s", self.name, exc)

    async def _wait_for_sends(self, results: list[dict[str, Any]]) -> None:
        """Deliver a request's node.send() messages and node.status() updates before its
        result (they race with it on IOPub)."""
        for result in results:
            req_id = result["req_id"]
            expected = int(result.get("sent", 0)) + int(result.pop("status_events", 0))
            if expected and self._sent_seen.get(req_id, 0) < expected:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._sent_waiters[req_id] = (expected, future)
                try:
                    await asyncio.wait_for(future, SEND_WAIT_LIMIT)
                except asyncio.TimeoutError:
                    log.warning("%s: send events of %s did not all arrive", self.name, req_id)
                finally:
                    self._sent_waiters.pop(req_id, None)
            self._sent_seen.pop(req_id, None)


def answer_offer(config: PoolConfig, *, fork: bool) -> dict[str, str] | None:
    """The node's answer socket for a kernel that may write plain results there itself
    (kernel/answers.py): a hot kernel of a local pool on the lane, as the bridge's user,
    unsandboxed (an isolated kernel's code is not trusted with a socket into Node-RED), of a
    pool that does not keep order (the pool holds a result back until those before it came)."""
    if not config.answers or fork or config.env.is_isolated or config.keep_order:
        return None
    return config.answers


def _batch_item(job: Job, timeout: float) -> dict[str, Any]:
    item = {"req_id": job.req_id, "msg": job.msg, "timeout": timeout}
    if job.blobs:
        item[BLOB_TABLE] = job.blobs
    return item


def _payload(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("status") != "ok":
        text = f"the kernel refused the request: {_reply_error(reply)}"
        raise KernelexecError(text)
    for item in reply.get("payload") or ():
        if item.get("source") == "kernelexec":
            data: dict[str, Any] = item.get("data") or {}
            return data
    text = "the kernel's reply had no kernelexec answer (is the runtime installed?)"
    raise KernelexecError(text)


def _reply_error(reply: dict[str, Any]) -> str:
    return f"{reply.get('ename', '?')}: {reply.get('evalue', '')}"


def _collected(
    jobs: list[Job], data: dict[str, Any], pipe: ResultPipe | None
) -> list[dict[str, Any] | None]:
    """The RESULTs of a batch the kernel answered: from the pipe when it streamed them (a
    job without one was not started: the runtime ended the batch after an interrupt)."""
    if not data.get("streamed") or pipe is None:
        answered: list[dict[str, Any]] = data["results"]
        by_id = {result.get("req_id"): result for result in answered}
        return [by_id.get(job.req_id) or _missing(job.req_id) for job in jobs]
    pipe.drain()  # the kernel wrote every RESULT before it replied
    ran = int(data.get("ran", len(jobs)))
    results: list[dict[str, Any] | None] = []
    for index, job in enumerate(jobs):
        result = pipe.results.get(job.req_id)
        if result is None and index < ran:  # started: it must not run again
            result = _missing(job.req_id)
        results.append(result)
    return results


def _missing(req_id: str) -> dict[str, Any]:
    return failed_result(req_id, KernelexecError(f"the kernel returned no result for {req_id}"))


def _while_running(error: KernelexecError, behind: int) -> KernelexecError:
    """The error of the one message that was running when the batch broke off; ``behind``
    messages of its batch had not started (they run again)."""
    if isinstance(error, KernelDiedError):
        text = error.message.replace(" while running the message", "")
        rerun = (
            f" ({behind} message{'s' if behind != 1 else ''} queued behind it in the same "
            "batch did not start and run on a fresh kernel)"
            if behind
            else ""
        )
        return KernelDiedError(f"{text}, while this message was running{rerun}")
    return error


def _unaccounted(error: KernelexecError, count: int) -> KernelexecError:
    """Without a result pipe: every message of the batch fails, and the text says why."""
    if isinstance(error, KernelDiedError) and count > 1:
        text = error.message.replace(" while running the message", "")
        return KernelDiedError(
            f"{text} during a batch of {count} messages; this kernel does not report which "
            "had started, so none was run again (this one may not have run)"
        )
    return error


def failed_result(req_id: str, error: KernelexecError) -> dict[str, Any]:
    """A RESULT that carries only an error (queue full, pool closed, setup failed...)."""
    return as_received(result_with_error(req_id, error.to_dict()))

