"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway (docs/scale-out.md).

:class:`GatewayKernel` is a :class:`~kernelexec.handles.base.KernelHandle` over the gateway's
REST API (start, interrupt, restart and delete a kernel) and the kernel WebSocket
(``/api/kernels/ID/channels``), spoken with a small tornado.websocket client of our own.
One module per concern:

- :mod:`.settings`: :class:`GatewaySettings` (from ``gateway_url``'s query string and
  ``KERNELEXEC_GATEWAY_*``) and the ``KERNEL_*`` variables of Enterprise Gateway;
- :mod:`.rest`: REST calls with timeouts, retries and exponential backoff;
- :mod:`.wire`: messages in the v1 WebSocket subprotocol and the legacy JSON protocol;
- :mod:`.channels`: the WebSocket client (token in the handshake, TCP_NODELAY/QUICKACK,
  pings, reconnection with the same session);
- :mod:`.staging`: requests above the server's 10 MiB message cap, sent in chunks;
- :mod:`.blob_transfer`: blob refs (files of one machine) travel as buffers, both ways;
- :mod:`.bootstrap` and :mod:`.kernel_side`: shipping the runtime into a stock kernel;
- :mod:`.handle`: :class:`GatewayKernel` and :func:`make_gateway_kernel`.

A stock remote kernel has no kernelexec installed: the worker first executes
:func:`runtime_bootstrap_code`, which ships the in-kernel modules to the kernel.
"""

from __future__ import annotations

from .bootstrap import RUNTIME_ROOTS, bundle_files, runtime_bootstrap_code
from .handle import EVENTS_COMM_ID, GatewayKernel, make_gateway_kernel
from .settings import SERVER_MESSAGE_CAP, GatewaySettings
from .wire import WS_V1

__all__ = [
    "EVENTS_COMM_ID",
    "RUNTIME_ROOTS",
    "SERVER_MESSAGE_CAP",
    "WS_V1",
    "GatewayKernel",
    "GatewaySettings",
    "bundle_files",
    "make_gateway_kernel",
    "runtime_bootstrap_code",
]
