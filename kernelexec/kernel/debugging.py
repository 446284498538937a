"""Jupyter's debugger (debugpy) in a kernelexec kernel, loaded on the first debug request.

ipykernel imports debugpy when it loads ``ipykernel.debugger``, which every kernel does as
it starts: ~70-100 ms of a kernel template's ~0.3 s of imports here, on the path of every
first deploy, for a debugger that node kernels rarely serve (flow code is debugged in a
notebook with ``%%node``; ``kernelexec attach`` can still debug a running node's kernel).

So a kernel imports ``ipykernel.debugger`` with debugpy hidden (ipykernel's own path for
a kernel without debugpy), still announces the "debugger" feature when debugpy is
installed, and builds the debugger when the first ``debug_request`` or debugpy frame
arrives (kernelexec/kernel/app.py): that request pays the import once.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
from typing import Any

__all__ = ["debugpy_installed", "import_without_debugpy", "load_debugger"]

_DEBUGPY = "debugpy"


def import_without_debugpy() -> None:
    """Import ``ipykernel.debugger`` as if debugpy were not installed; then let user code
    import debugpy as usual. Does nothing when ipykernel.debugger is already loaded."""
    if "ipykernel.debugger" in sys.modules or _DEBUGPY in sys.modules:
        return
    sys.modules[_DEBUGPY] = None  # type: ignore[assignment]  # `import debugpy` fails
    try:
        importlib.import_module("ipykernel.debugger")
    finally:
        if sys.modules.get(_DEBUGPY, 0) is None:
            del sys.modules[_DEBUGPY]


def debugpy_installed() -> bool:
    """Whether the kernel's interpreter has debugpy (the "debugger" feature is announced)."""
    return importlib.util.find_spec(_DEBUGPY) is not None


def load_debugger(kernel: Any) -> bool:
    """Give ``kernel`` (an IPythonKernel) the debugger ipykernel would have built at its start,
    and start its stopped-event poller as ``IPythonKernel.start`` does; False without debugpy."""
    if getattr(kernel, "debugger", None) is not None:
        return True
    if not debugpy_installed():
        return False
    module = importlib.import_module("ipykernel.debugger")
    if not module._is_debugpy_available:
        module = importlib.reload(module)  # now with debugpy
    if not module._is_debugpy_available:
        return False
    kernel.debugger = kernel.debugger_class(**_debugger_arguments(kernel))
    control = getattr(kernel, "control_thread", None)
    if kernel.debugpy_stream is not None and control is not None:
        asyncio.run_coroutine_threadsafe(kernel.poll_stopped_queue(), control.io_loop.asyncio_loop)
    return True


def _debugger_arguments(kernel: Any) -> dict[str, Any]:
    """What ``IPythonKernel.__init__`` passes its debugger, by the names the installed
    ipykernel's ``Debugger`` takes (the list grew across ipykernel versions)."""
    known = {
        "log": kernel.log,
        "debugpy_stream": kernel.debugpy_stream,
        "event_callback": kernel._publish_debug_event,
        "shell_socket": kernel.debug_shell_socket,
        "session": kernel.session,
        "kernel_modules": getattr(kernel, "_kernel_modules", []),
        "just_my_code": kernel.debug_just_my_code,
        "filter_internal_frames": getattr(kernel, "filter_internal_frames", True),
    }
    taken = inspect.signature(kernel.debugger_class).parameters
    return {name: value for name, value in known.items() if name in taken}
