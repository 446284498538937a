"""The kernel process: a stock IPython kernel, configured for a long, fast life.

Started as ``python -m kernelexec.kernel -f CONNECTION_FILE`` (see handles/local.py). It is
ipykernel's own IPKernelApp with:

- no history database and no output cache (memory stays flat over 100,000 messages);
- no 0.5 ms sleep after every execute (``_execute_sleep = 0``);
- stdout/stderr flushes skipped when nothing was written (each one is a cross-thread
  round trip in ipykernel, paid twice per execute otherwise);
- incoming messages decoded by kernel/decoding.py (the Session's signature check without
  its date parsing: ~12 instead of ~60 µs each);
- one more shell message type, ``kernelexec_request``: the runtime's op from the request's
  content, its answer in the reply's payload, exactly like an execute_request of the cell
  ``__kernelexec__.handle()`` but without IPython's cell machinery and without the busy/idle
  status messages on IOPub (nothing waits for them; measured 1.3 -> 0.8 ms per round trip,
  docs/performance.md). ``kernel_info_reply`` announces it under the key ``kernelexec``, so a
  client uses it only with a kernel that has it (stock kernels get the execute_request).

The in-kernel runtime is installed by the first ``kernelexec_request`` (the worker's ``init``
op), as ``kernel_info_reply`` says (``installs_runtime``); kernels that do not say so (stock,
gateway) get it from the worker's bootstrap cell. This module runs inside the kernel: standard
library and ipykernel only.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from ..protocol import KERNEL_REPLY_TYPE, KERNEL_REQUEST_TYPE, RUNTIME_NAME
from . import debugging
from .packing import wire_pack

__all__ = ["REQUEST_TYPE", "kernel_config", "main", "wire_pack"]

#: The shell message type of one runtime op (see the module docstring), from spec.json.
REQUEST_TYPE = KERNEL_REQUEST_TYPE
REPLY_TYPE = KERNEL_REPLY_TYPE
#: Announced in kernel_info_reply (content["kernelexec"]): the request type this kernel
#: answers, and that its first request installs the runtime (no bootstrap cell needed).
KERNEL_INFO = {"request": REQUEST_TYPE, "version": 1, "installs_runtime": True}


def kernel_config() -> Any:
    """The traitlets configuration kernelexec kernels run with."""
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.cache_size = 0
    config.InteractiveShell.history_length = 0
    config.InteractiveShell.history_load_length = 0
    config.IPythonKernel._execute_sleep = 0.0
    config.IPKernelApp.quiet = True
    return config


def _skip_empty_flushes() -> None:
    """Make OutStream.flush return at once when nothing was written since the last flush.

    "Nothing buffered" is not enough: a write whose buffer the IOPub thread has already taken
    may still be on its way, and flush() must wait for it (output before the reply). So a
    write marks the stream dirty, and only a clean stream skips the flush.
    """
    from ipykernel.iostream import OutStream

    original_flush, original_write = OutStream.flush, OutStream.write

    def write(self: Any, string: str) -> int | None:
        self._kernelexec_dirty = True
        result: int | None = original_write(self, string)
        return result

    def flush(self: Any) -> None:
        dirty = getattr(self, "_kernelexec_dirty", True)
        if dirty or self._buffers or self._flush_pending or self._subprocess_flush_pending:
            self._kernelexec_dirty = False
            original_flush(self)  # type: ignore[no-untyped-call]

    OutStream.write = write  # type: ignore[method-assign]
    OutStream.flush = flush  # type: ignore[method-assign]


def _poller_class() -> Any:
    """ipykernel's parent poller, but it removes the connection file and the ipc socket files
    before exiting: when the bridge was killed (-9) nobody else does, and they piled up."""
    import time

    from ipykernel.parentpoller import ParentPollerUnix

    class CleaningParentPoller(ParentPollerUnix):
        def __init__(self, app: Any, parent_pid: int) -> None:
            super().__init__(parent_pid=parent_pid)  # type: ignore[no-untyped-call]
            self.app = app

        def run(self) -> None:
            parent = self.parent_pid if os.getppid() == self.parent_pid else 0
            while True:
                ppid = os.getppid()
                if (not parent and ppid == 1) or (parent and ppid != parent):
                    self.app.log.warning("Parent appears to have exited, shutting down.")
                    try:
                        os.unlink(self.app.abs_connection_file)
                        self.app.cleanup_ipc_files()
                    except Exception:  # exiting anyway
                        pass
                    os._exit(1)
                time.sleep(1.0)

    return CleaningParentPoller


def _kernel_class() -> Any:
    """IPythonKernel plus the ``kernelexec_request`` shell message."""
    from ipykernel.ipkernel import IPythonKernel

    class KernelexecKernel(IPythonKernel):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]
            self.shell_handlers[REQUEST_TYPE] = self.kernelexec_request

        @property
        def kernel_info(self) -> dict[str, Any]:
            info: dict[str, Any] = dict(super().kernel_info)
            info["kernelexec"] = dict(KERNEL_INFO)
            features = list(info.get("supported_features") or [])
            if "debugger" not in features and debugging.debugpy_installed():
                info["supported_features"] = [*features, "debugger"]  # built when first asked
            return info

        async def do_debug_request(self, msg: Any) -> Any:
            debugging.load_debugger(self)
            return await super().do_debug_request(msg)  # type: ignore[no-untyped-call]

        def dispatch_debugpy(self, msg: Any) -> None:
            debugging.load_debugger(self)
            super().dispatch_debugpy(msg)  # type: ignore[no-untyped-call]

        async def poll_stopped_queue(self) -> None:
            if getattr(self, "debugger", None) is not None:  # else load_debugger starts it
                await super().poll_stopped_queue()  # type: ignore[no-untyped-call]

        def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
            request = parent or self.get_parent(channel)  # type: ignore[no-untyped-call]
            if channel == "shell" and request.get("header", {}).get("msg_type") == REQUEST_TYPE:
                return  # no busy/idle around a kernelexec_request
            super()._publish_status(status, channel, parent)  # type: ignore[no-untyped-call]

        def kernelexec_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
            session: Any = self.session
            session.send(stream, REPLY_TYPE, self._answer(), parent, ident=ident)
            shell: Any = self.shell
            runtime = shell.user_ns.get(RUNTIME_NAME)
            if getattr(runtime, "fork", False):  # cold mode only; once the handler returned
                request = (parent.get("content") or {}).get("kernelexec")
                asyncio.get_running_loop().call_soon(runtime.after_answer, request)

        def _answer(self) -> dict[str, Any]:
            shell: Any = self.shell
            runtime = shell.user_ns.get(RUNTIME_NAME)
            if runtime is None:  # the first request (KERNEL_INFO "installs_runtime")
                try:
                    from .runtime import install

                    runtime = install(shell)
                except Exception as exc:  # as the bootstrap cell's failure would say
                    text = f"could not load the kernelexec runtime in the kernel: {exc}"
                    return _error_reply(type(exc).__name__, text)
            try:
                answer = runtime.respond()
            except KeyboardInterrupt:  # the worker's backstop interrupt
                return _error_reply("KeyboardInterrupt", "interrupted")
            return {"status": "ok", "payload": [{"source": "kernelexec", "data": answer}]}

    return KernelexecKernel


def _error_reply(name: str, value: str) -> dict[str, Any]:
    return {"status": "error", "ename": name, "evalue": value, "traceback": []}


def _app_class() -> Any:
    """IPKernelApp with our kernel class, without the shell-channel thread (no subshells)."""
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.parentpoller import ParentPollerUnix

    class KernelexecKernelApp(IPKernelApp):
        def init_iopub(self, context: Any) -> None:
            # No high-water mark on IOPub: past the default 1,000 queued messages, zmq drops
            # them silently, and node.send() in a tight loop must lose nothing.
            import zmq

            context.setsockopt(zmq.SNDHWM, 0)
            super().init_iopub(context)  # type: ignore[no-untyped-call]

        def init_poller(self) -> None:
            super().init_poller()  # type: ignore[no-untyped-call]
            if isinstance(self.poller, ParentPollerUnix):
                self.poller = _poller_class()(self, self.poller.parent_pid)

        def init_sockets(self) -> None:
            super().init_sockets()  # type: ignore[no-untyped-call]
            if os.environ.get("KERNELEXEC_SUBSHELLS") != "1":
                self.shell_channel_thread = None

    return KernelexecKernelApp


def main(argv: list[str] | None = None) -> None:
    debugging.import_without_debugpy()  # before ipykernel builds its kernel
    _skip_empty_flushes()
    app = _app_class().instance(config=kernel_config())
    app.kernel_class = _kernel_class()
    app.initialize(sys.argv[1:] if argv is None else argv)
    app.session.pack = wire_pack
    from .decoding import session_deserializer  # the same signature check, no dates

    app.session.deserialize = session_deserializer(app.session)
    app.start()
