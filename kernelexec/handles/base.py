"""The seam between a worker and one kernel process, wherever it runs.

A worker only ever talks to a :class:`KernelHandle`: :mod:`kernelexec.handles.local`
starts kernels on this machine through jupyter_client, :mod:`kernelexec.handles.gateway`
on a Jupyter Kernel/Enterprise Gateway. Each abstract method says who calls it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..kernel.lane import RequestPipe
    from ..kernel.resultpipe import ResultPipe

__all__ = [
    "HANDLE_CODE",
    "EventCallback",
    "KernelHandle",
    "LaunchSpec",
    "StdinCallback",
    "StreamCallback",
    "execute_content",
]

#: The cell that runs one runtime op when the kernel has no ``kernelexec_request``.
HANDLE_CODE = "__kernelexec__.handle()"


def execute_content(code: str, *, allow_stdin: bool = True, **extra: Any) -> dict[str, Any]:
    """The content of kernelexec's execute_requests: silent, no history, no stop on error;
    ``extra`` keys (e.g. ``kernelexec=op``) are added for the in-kernel runtime."""
    content = {
        "code": code,
        "silent": True,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": allow_stdin,
        "stop_on_error": False,
    }
    content.update(extra)
    return content


#: Called with (event content, buffers) for every kernelexec event on IOPub.
EventCallback = Callable[[dict[str, Any], list[bytes]], None]
#: Called with the prompt of an input_request; returns the input_reply value.
StdinCallback = Callable[[str], Awaitable[str]]
#: Called with (stream name, text) for output the runtime did not capture (fd level).
StreamCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class LaunchSpec:
    """How to start a local kernel process (made by :mod:`kernelexec.envs`).

    ``argv`` is the whole command with ``{connection_file}`` where jupyter_client puts
    the connection file's path. ``env`` is added to the bridge's environment. ``cwd`` is
    the kernel's working directory. ``transport`` is "tcp" or "ipc" (ipc works inside a
    network namespace). ``cleanup`` is run (best effort) after the kernel is gone.
    ``forkable``: the bridge's own interpreter and no isolation, so the kernel may be forked
    from the bridge's kernel template (handles/forking.py) instead of launched.
    """

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    transport: str = "ipc"
    cleanup: Callable[[], None] | None = None
    description: str = ""
    forkable: bool = False


class KernelHandle(ABC):
    """One kernel. Not shared: exactly one worker drives it."""

    on_event: EventCallback | None = None
    on_stdin: StdinCallback | None = None
    on_stream: StreamCallback | None = None
    #: Local kernels: called when the process exits on its own (not a shutdown or restart).
    on_death: Callable[[], None] | None = None
    #: Local kernels: the pipe down which the runtime streams RESULTs (kernel/resultpipe.py).
    result_pipe: ResultPipe | None = None
    #: Local kernels: the pipe that carries ``run`` ops into the kernel (kernelexec.kernel.lane).
    request_pipe: RequestPipe | None = None
    #: Whether the kernel's first :meth:`request` installs the runtime itself (kernelexec's own
    #: kernel says so in its kernel_info_reply): the worker then skips its bootstrap cell.
    installs_runtime: bool = False

    @abstractmethod
    async def start(self) -> None:
        """Start the kernel and wait until it answers (Worker.start, Worker.restart)."""

    @abstractmethod
    async def execute(
        self, code: str, extra: dict[str, Any], buffers: list[bytes] | None = None
    ) -> dict[str, Any]:
        """Send one execute_request and return the execute_reply content (Worker.run).

        ``extra`` is added to the request's content under the key "kernelexec" (the
        in-kernel runtime reads it from the parent message); the request is silent,
        store_history=False, allow_stdin=True, stop_on_error=False. input_requests that
        arrive meanwhile go to ``on_stdin``. Raises KernelDiedError when the kernel dies
        before the reply.
        """

    async def request(self, op: dict[str, Any]) -> dict[str, Any]:
        """Run one op of the in-kernel runtime (docs/internals.md); returns the reply content,
        its answer in ``payload`` (Worker). This default sends the execute_request of
        ``__kernelexec__.handle()``, which every kernel with the runtime installed answers; a
        handle whose kernel speaks ``kernelexec_request`` (kernelexec/kernel/app.py) sends that
        instead: same content and reply shape, without IPython's cell machinery."""
        return await self.execute(HANDLE_CODE, op)

    async def lane_request(self, op: dict[str, Any]) -> dict[str, Any]:
        """:meth:`request` through the lane (kernelexec/kernel/lane.py), once the runtime in the
        kernel said it reads ``request_pipe`` (Worker); same reply. This default: request."""
        return await self.request(op)

    async def shell_request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """Send one plain Jupyter shell request (complete_request, inspect_request) and return
        its reply content (Pool.ask_kernel, for the editor). NotImplementedError: cannot."""
        msg = f"{type(self).__name__} does not send {msg_type} (editor help needs a local kernel)"
        raise NotImplementedError(msg)

    @abstractmethod
    def is_alive(self) -> bool:
        """Whether the kernel process still runs (cheap: called on every failure)."""

    @abstractmethod
    async def interrupt(self) -> None:
        """Interrupt the running execution, as Jupyter's interrupt button (timeouts)."""

    @abstractmethod
    async def restart(self) -> None:
        """Kill and start again with the same connection (timeouts, crashes)."""

    @abstractmethod
    async def shutdown(self, *, now: bool = False) -> None:
        """Stop the kernel, escalating to SIGKILL; never leaves a process (Pool.close)."""

    @property
    def pid(self) -> int | None:
        """The kernel's process id, when it runs on this machine."""
        return None

    @property
    def connection_file(self) -> str | None:
        """A connection file a Jupyter client can attach to, when there is one."""
        return None


