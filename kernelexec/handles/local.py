"""Kernels on this machine: jupyter_client starts and stops them, we own the channels.

jupyter_client's AsyncKernelManager does the process life cycle (launch from a kernel
spec built from a :class:`LaunchSpec`, interrupt, restart, shutdown with escalation).
The channels are our own (:mod:`.channels`: one reader task per socket, replies matched by
``parent_header.msg_id``).
Kernel death is noticed from the process itself (a pidfd where the OS has one), not from
the heartbeat, which needs ~1.8 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from ..errors import KernelDiedError
from ..kernel.app import REQUEST_TYPE, wire_pack
from ..kernel.lane import RequestPipe, request_frame
from ..kernel.resultpipe import ResultPipe
from ..protocol import EVENTS_COMM
from . import forking
from .base import KernelHandle, LaunchSpec, execute_content
from .channels import Channels
from .environment import kernel_environment

__all__ = ["EVENTS_COMM_ID", "LocalKernel", "default_launch_spec", "kernel_environment"]

log = logging.getLogger("kernelexec.kernel")

EVENTS_COMM_ID = EVENTS_COMM
_DEATH_POLL_SECONDS = 0.05
#: While IOPub has delivered nothing (its subscription is still on its way to the kernel),
#: another kernel_info_request this often: each makes the kernel publish busy/idle, and the
#: first one that arrives says IOPub is up. (Waiting 0.2 s for the first request's busy/idle,
#: then a whole new round, cost a start 0.2 s or more whenever the subscription came later.)
_IOPUB_PROBE_SECONDS = 0.01


def default_launch_spec(cwd: str | None = None) -> LaunchSpec:
    """The bridge's own interpreter, our tuned kernel, no isolation."""
    argv = (sys.executable, "-m", "kernelexec.kernel", "-f", "{connection_file}")
    return LaunchSpec(argv=argv, cwd=cwd, description=sys.executable, forkable=True)


def _ipc_path() -> str:
    """A private path prefix for the kernel's ipc sockets (owner-only directory)."""
    import uuid

    from jupyter_core.paths import jupyter_runtime_dir

    directory = jupyter_runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return os.path.join(directory, f"kernelexec-{uuid.uuid4().hex[:12]}")


class LocalKernel(KernelHandle):
    """An IPython kernel process on this machine."""

    def __init__(self, launch: LaunchSpec, *, name: str = "kernel") -> None:
        self._launch = launch
        self._name = name
        self._km: AsyncKernelManager | None = None
        self._channels: Channels | None = None
        self._death: asyncio.Future[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stdin_tasks: set[asyncio.Task[None]] = set()
        #: Whether the kernel announced ``kernelexec_request`` (in its kernel_info_reply).
        self._speaks_requests = False

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        km = AsyncKernelManager(transport=self._launch.transport, shutdown_wait_time=2.0)
        if self._launch.transport == "ipc":
            km.ip = _ipc_path()
        km._kernel_spec = KernelSpec(
            argv=list(self._launch.argv),
            display_name="kernelexec",
            language="python",
            interrupt_mode="signal",
            metadata=forking.provisioner_metadata() if forking.template_for(self._launch) else {},
        )
        km.session.pack = wire_pack  # a lone surrogate in a msg becomes U+FFFD, not a hang
        self._km = km
        env = kernel_environment(self._launch.env)
        if self.result_pipe is None:  # kept across restarts (the same fd number is passed)
            self.result_pipe = ResultPipe()
            self.request_pipe = RequestPipe()
        pipe, lane = self.result_pipe, self.request_pipe
        assert lane is not None
        fds = (pipe.write_fd, lane.read_fd)
        await km.start_kernel(env=env, cwd=self._launch.cwd, pass_fds=fds)
        pipe.attach()
        self._connect()
        await self._wait_ready()

    def _connect(self) -> None:
        assert self._km is not None
        self._channels = Channels(self._km, on_iopub=self._on_iopub, on_stdin=self._on_stdin_msg)
        self._death = asyncio.get_running_loop().create_future()
        self._watch = asyncio.ensure_future(self._watch_process(self._death))

    async def _wait_ready(self, timeout: float = 60.0) -> None:
        """kernel_info round trips until the shell answers AND IOPub delivers AND the stdin
        connection is up (see Channels._wait_for_handshake).

        A SUB socket only receives once its subscription has reached the kernel ("slow
        joiner"): a node.send() or print() published before that would be lost. Every
        kernel_info_request makes the kernel publish busy/idle on IOPub, so the kernel is
        ready once one of those has arrived.
        """
        channels = self._require_channels()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = channels.session.msg("kernel_info_request", {})
            future = self._expect(msg["header"]["msg_id"])
            await channels.send(channels.shell, msg)
            try:
                reply = await self._await_reply(future, 1.0)
                await self._iopub_joined(channels, 0.2)
                await asyncio.wait_for(channels.stdin_ready.wait(), 1.0)
                info = reply["content"].get("kernelexec") or {}
                self._speaks_requests = info.get("request") == REQUEST_TYPE
                installs = info.get("installs_runtime") is True
                self.installs_runtime = self._speaks_requests and installs
                return
            except (TimeoutError, asyncio.TimeoutError):
                if loop.time() > deadline:
                    text = (
                        f"kernel did not answer within {timeout:.0f} s ({self._launch.description})"
                    )
                    raise KernelDiedError(text) from None

    @staticmethod
    async def _iopub_joined(channels: Channels, limit: float) -> None:
        """Wait until IOPub has delivered a message (TimeoutError after ``limit`` seconds),
        with a kernel_info_request every _IOPUB_PROBE_SECONDS meanwhile (their replies, which
        nobody expects, are dropped)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + limit
        while not channels.iopub_seen.is_set():
            wait = min(_IOPUB_PROBE_SECONDS, until - loop.time())
            if wait <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(channels.iopub_seen.wait(), wait)
            if not channels.iopub_seen.is_set():
                probe = channels.session.msg("kernel_info_request", {})
                await channels.send(channels.shell, probe)

    async def restart(self) -> None:
        km = self._require_km()
        self._disconnect(KernelDiedError("the kernel was restarted"))
        if self.result_pipe is not None:
            self.result_pipe.reset()
        if self.request_pipe is not None:  # the old kernel is being killed: it reads no more
            self.request_pipe.discard()
        await km.restart_kernel(now=True)
        self._connect()
        await self._wait_ready()

    async def shutdown(self, *, now: bool = False) -> None:
        km = self._km
        if km is None:
            return
        self._disconnect(KernelDiedError("the kernel was shut down"))
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=now)
        finally:
            with contextlib.suppress(Exception):
                await km.cleanup_resources()
            self._km = None
            if self.result_pipe is not None:
                self.result_pipe.close()
                self.result_pipe = None
            if self.request_pipe is not None:
                self.request_pipe.close()
                self.request_pipe = None
            if self._launch.cleanup is not None:
                with contextlib.suppress(Exception):
                    self._launch.cleanup()

    def _disconnect(self, error: BaseException) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._channels is not None:
            self._channels.fail_pending(error)
            self._channels.close()
            self._channels = None

    async def interrupt(self) -> None:
        await self._require_km().interrupt_kernel()

    def is_alive(self) -> bool:
        km = self._km
        provisioner = km.provisioner if km is not None else None
        process = getattr(provisioner, "process", None)
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        provisioner = self._km.provisioner if self._km is not None else None
        process = getattr(provisioner, "process", None)
        return int(process.pid) if process is not None else None

    @property
    def connection_file(self) -> str | None:
        return self._km.connection_file if self._km is not None else None

    # -- execution --------------------------------------------------------------------
    async def execute(
        self, code: str, extra: dict[str, Any], buffers: list[bytes] | None = None
    ) -> dict[str, Any]:
        channels = self._require_channels()
        msg = channels.session.msg("execute_request", execute_content(code, kernelexec=extra))
        if buffers:
            msg["buffers"] = buffers
        future = self._expect(msg["header"]["msg_id"])
        await channels.send(channels.shell, msg)
        reply = await self._await_reply(future, None)
        content_out: dict[str, Any] = reply["content"]
        return content_out

    async def request(self, op: dict[str, Any]) -> dict[str, Any]:
        if not self._speaks_requests:
            return await super().request(op)
        channels = self._require_channels()
        msg = channels.session.msg(REQUEST_TYPE, {"kernelexec": op})
        future = self._expect(msg["header"]["msg_id"])
        await channels.send(channels.shell, msg)
        reply = await self._await_reply(future, None)
        content: dict[str, Any] = reply["content"]
        return content

    async def lane_request(self, op: dict[str, Any]) -> dict[str, Any]:
        """The op down the request pipe, its answer from the result pipe (kernel/lane.py);
        KernelDiedError when the kernel dies first, as for a shell request."""
        pipe, lane = self.result_pipe, self.request_pipe
        if pipe is None or lane is None:
            return await self.request(op)
        seq = lane.next_seq()
        key = f"lane-{seq}"
        future = self._expect(key)  # failed by _watch_process when the kernel dies
        pipe.answer_waiters[seq] = future
        try:
            await lane.send(request_frame(seq, op))
            return await future
        finally:
            pipe.answer_waiters.pop(seq, None)
            if self._channels is not None:
                self._channels.pending.pop(key, None)

    async def shell_request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        channels = self._require_channels()
        msg = channels.session.msg(msg_type, content)
        future = self._expect(msg["header"]["msg_id"])
        await channels.send(channels.shell, msg)
        reply = await self._await_reply(future, None)
        content_out: dict[str, Any] = reply["content"]
        return content_out

    def _expect(self, msg_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self._death is not None and self._death.done():  # no reply will ever come
            future.set_exception(self._death_error())
            return future
        self._require_channels().pending[msg_id] = future
        return future

    async def _await_reply(
        self, future: asyncio.Future[dict[str, Any]], timeout: float | None
    ) -> dict[str, Any]:
        """The reply; KernelDiedError when the kernel dies first (_watch_process fails every
        pending reply), TimeoutError after ``timeout`` seconds (None: no limit)."""
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def _death_error(self) -> KernelDiedError:
        text = f"the kernel process died (exit code {self._exit_code()}) while running the message"
        why = self._explain_death()
        return KernelDiedError(f"{text}: {why}" if why else text)

    def _explain_death(self) -> str | None:
        """Why the sandbox killed the kernel (memory limit), as docs/environments.md says."""
        try:
            from .. import envs

            return envs.explain_death(self._launch, self.pid)
        except Exception:
            return None

    def _exit_code(self) -> int | None:
        provisioner = self._km.provisioner if self._km is not None else None
        process = getattr(provisioner, "process", None)
        return process.poll() if process is not None else None

    async def _watch_process(self, death: asyncio.Future[None]) -> None:
        """Resolve ``death`` when the kernel process exits (pidfd, else polling)."""
        pid = self.pid
        loop = asyncio.get_running_loop()
        pidfd = -1
        if pid is not None and hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        try:
            if pidfd >= 0:
                exited: asyncio.Future[None] = loop.create_future()

                def on_exit() -> None:
                    if not exited.done():
                        exited.set_result(None)

                loop.add_reader(pidfd, on_exit)
                try:
                    await exited
                finally:
                    loop.remove_reader(pidfd)
            else:
                while self.is_alive():
                    await asyncio.sleep(_DEATH_POLL_SECONDS)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        if not death.done():
            death.set_result(None)
        if self._channels is not None:
            self._channels.fail_pending(self._death_error())
        if self.on_death is not None:
            self.on_death()

    # -- incoming -----------------------------------------------------------------------
    def _on_iopub(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "comm_msg" and content.get("comm_id") == EVENTS_COMM_ID:
            if self.on_event is not None:
                self.on_event(content.get("data", {}), [bytes(b) for b in msg.get("buffers", [])])
        elif kind == "stream" and self.on_stream is not None:
            self.on_stream(content.get("name", "stdout"), content.get("text", ""))

    def _on_stdin_msg(self, msg: dict[str, Any]) -> None:
        if msg["header"]["msg_type"] == "input_request":
            task = asyncio.ensure_future(self._answer_input(msg))
            self._stdin_tasks.add(task)
            task.add_done_callback(self._stdin_tasks.discard)

    async def _answer_input(self, request: dict[str, Any]) -> None:
        value = ""
        try:
            if self.on_stdin is not None:
                value = await self.on_stdin(request["content"].get("prompt", ""))
        except Exception as exc:  # never leave the kernel blocked on stdin
            log.warning("stdin handler failed: %s", exc)
        channels = self._channels
        if channels is None:
            return
        reply = channels.session.msg("input_reply", {"value": value}, parent=request["header"])
        await channels.send(channels.stdin, reply)

    def _require_km(self) -> AsyncKernelManager:
        if self._km is None:
            msg = f"{self._name}: the kernel is not started"
            raise KernelDiedError(msg)
        return self._km

    def _require_channels(self) -> Channels:
        if self._channels is None:
            msg = f"{self._name}: the kernel is not connected (not started, or shut down)"
            raise KernelDiedError(msg)
        return self._channels
