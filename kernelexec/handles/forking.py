"""Kernels in ~0.1 s: forked from a template that has done the imports (bridge side).

A kernel's start is mostly imports (~0.3 of ~0.36 s here, docs/performance.md). The bridge
starts one template process (:mod:`.template`) next to itself; a local kernel of the
bridge's own interpreter without isolation (:attr:`LaunchSpec.forkable`) is then forked from
it instead of launched, through jupyter_client's provisioner seam: the kernel spec names
the ``kernelexec-fork`` provisioner, a :class:`LocalProvisioner` whose launch asks the
template for the process. Everything else stays jupyter_client's: the connection file,
interrupts (SIGINT to the kernel's process group), restarts, shutdown and its escalation.

The forked kernel is the bridge's own child (the template clones with CLONE_PARENT), so
:class:`ForkedProcess` waits for it and reads its exit status as Popen does. When the
template is not there (not started, died, refused), the kernel is launched as before.

Environments with their own interpreter, requirements or isolation are always launched:
their kernels need an exec (another interpreter, a sandbox wrapper, another user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from importlib.metadata import EntryPoint
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from . import template
from .base import LaunchSpec
from .template import KERNEL_MODULE, ForkedProcess

__all__ = [
    "PROVISIONER",
    "ForkProvisioner",
    "ForkedProcess",
    "KernelTemplate",
    "provisioner_metadata",
    "start_template",
    "stop_template",
    "template_for",
]

log = logging.getLogger("kernelexec.kernel")

PROVISIONER = "kernelexec-fork"
_READY_TIMEOUT = 60.0
#: A fork is answered in milliseconds: a template silent this long is stuck, and the kernels
#: are launched from then on (as when it is gone) instead of waiting out _READY_TIMEOUT.
_FORK_TIMEOUT = 10.0
_ANSWER_SIZE = 4096


class KernelTemplate:
    """The template process and the socket to it; :meth:`fork` makes one kernel."""

    def __init__(self, process: template.TemplateProcess, ours: socket.socket) -> None:
        self.process = process
        ours.setblocking(False)
        self._socket = ours
        self._lock = asyncio.Lock()
        self._ready: asyncio.Task[None] = asyncio.ensure_future(self._await_ready())
        self.failed: str | None = None

    async def _await_ready(self) -> None:
        answer = await self._receive(_READY_TIMEOUT)
        if answer.get("ready") is not True:
            msg = f"the kernel template answered {answer!r}"
            raise RuntimeError(msg)

    async def _receive(self, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self._socket, _ANSWER_SIZE), timeout)
        if not data:
            msg = "the kernel template exited"
            raise RuntimeError(msg)
        answer = json.loads(data)
        if not isinstance(answer, dict):
            msg = f"the kernel template answered {answer!r}"
            raise RuntimeError(msg)
        return answer

    async def fork(
        self, argv: list[str], env: dict[str, str], cwd: str | None, pass_fds: tuple[int, ...]
    ) -> int:
        """The pid of a new kernel running ``argv`` (``python -m kernelexec.kernel ...``).

        The exchange with the template is never cut in half: a caller cancelled meanwhile
        (a redeploy while the pool starts) leaves it to finish, and the kernel it made is
        killed and reaped, not left running unmanaged. The exchange sends its own duplicates
        of ``pass_fds``: a cancelled caller closes its pipes while the exchange may still wait
        for its turn, and a send of closed fds would have put the template out of use."""
        if self.failed is not None:
            raise RuntimeError(self.failed)
        request = {"argv": argv, "env": env, "cwd": cwd, "fds": list(pass_fds)}
        owned = tuple(os.dup(fd) for fd in pass_fds)  # non-inheritable, closed when done
        exchange = asyncio.ensure_future(self._exchange(request, owned))
        exchange.add_done_callback(lambda _done: _close_all(owned))
        try:
            answer = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            exchange.add_done_callback(_kill_unwanted)
            raise
        if "pid" not in answer:
            msg = f"the kernel template refused: {answer.get('error', answer)}"
            raise RuntimeError(msg)
        return int(answer["pid"])

    async def _exchange(self, request: dict[str, Any], fds: tuple[int, ...]) -> dict[str, Any]:
        async with self._lock:
            try:
                await asyncio.shield(self._ready)
                socket.send_fds(self._socket, [json.dumps(request).encode()], list(fds))
                return await self._receive(_FORK_TIMEOUT)
            except Exception as exc:  # out of step with the template: launch from now on
                self.failed = f"the kernel template failed: {exc!r}"
                raise

    def close(self) -> None:
        self._ready.cancel()
        self._socket.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _kill_unwanted(exchange: asyncio.Future[dict[str, Any]]) -> None:
    """A kernel forked for a caller that is gone: killed and reaped at once."""
    if exchange.cancelled() or exchange.exception() is not None:
        return
    pid = exchange.result().get("pid")
    if isinstance(pid, int):
        process = ForkedProcess(pid)
        process.kill()
        process.wait()


_template: KernelTemplate | None = None


def start_template(env: dict[str, str]) -> KernelTemplate | None:
    """Start this bridge's template (idempotent; None where it is off or cannot work)."""
    global _template
    if _template is None and template.wanted():
        early = template.take_early()  # spawned before the bridge's imports, if it was
        _template = KernelTemplate(*(early or template.spawn(env)))
        _register()
    return _template


def stop_template() -> None:
    global _template
    template, _template = _template, None
    if template is not None:
        template.close()


def template_for(launch: LaunchSpec) -> KernelTemplate | None:
    """The template that can fork this launch's kernel, if there is one."""
    if _template is None or not launch.forkable:
        return None
    if list(launch.argv[:3]) != [sys.executable, "-m", KERNEL_MODULE]:
        return None
    return _template


def provisioner_metadata() -> dict[str, Any]:
    """The kernel spec metadata that makes jupyter_client use :class:`ForkProvisioner`."""
    return {"kernel_provisioner": {"provisioner_name": PROVISIONER, "config": {}}}


def _register() -> None:
    """Known to jupyter_client's provisioner factory without an installed entry point (a
    managed environment's kernelexec is a plain directory on PYTHONPATH)."""
    value = f"{__name__}:ForkProvisioner"
    entry = EntryPoint(name=PROVISIONER, value=value, group=KernelProvisionerFactory.GROUP_NAME)
    KernelProvisionerFactory.instance().provisioners[PROVISIONER] = entry


class ForkProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, with the process forked from the template."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        template = _template
        if template is not None:
            env = {str(k): str(v) for k, v in (kwargs.get("env") or os.environ).items()}
            env["JPY_PARENT_PID"] = str(os.getpid())  # as jupyter_client's launch: the poller
            cwd = kwargs.get("cwd")
            try:
                pid = await template.fork(cmd, env, cwd, tuple(kwargs.get("pass_fds") or ()))
            except Exception as exc:
                log.warning("Kernel template failed (%s); launching the kernel instead", exc)
            else:
                self.process = ForkedProcess(pid)  # type: ignore[assignment]  # Popen-like
                self.pid = self.pgid = pid  # the child starts its own session
                self.cwd = cwd
                return self.connection_info
        return await super().launch_kernel(cmd, **kwargs)
