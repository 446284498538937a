"""Requests larger than the gateway's WebSocket message cap, sent in chunks.

A gateway accepts messages of at most 10 MiB (tornado's default, not settable in Kernel
Gateway). The buffers of a larger request are *staged* in the kernel by small execute
requests carrying one chunk each (``__kernelexec_gw__.stage()``); the request then carries
``content["kernelexec_staged"]`` instead of buffers, and a ``pre_execute`` hook of the
kernel-side helper puts them back into the request's buffers before the runtime reads them
(see :mod:`.kernel_side`). The request's code is never changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ...errors import GatewayError
from ..base import execute_content
from .channels import KernelChannels
from .wire import Message, dumps

__all__ = ["HEADROOM", "needs_staging", "stage"]

HEADROOM = 256 * 1024  # for the JSON parts and the framing of a message with buffers


def _wire_size(content: dict[str, Any], buffers: Iterable[bytes]) -> int:
    return len(dumps(content)) + sum(memoryview(b).nbytes for b in buffers) + 1024


def needs_staging(content: dict[str, Any], buffers: Iterable[bytes], max_message: int) -> bool:
    """Whether the request would exceed ``max_message`` sent whole."""
    return _wire_size(content, buffers) > max_message - HEADROOM


async def stage(
    channels: KernelChannels,
    buffers: list[bytes],
    *,
    key: str,
    max_message: int,
    watch: Callable[[Awaitable[Message]], Awaitable[Message]],
) -> dict[str, Any]:
    """Send the buffers in chunks the server accepts; the kernel keeps them under ``key``.

    Returns the request's ``kernelexec_staged`` entry. ``watch`` awaits a reply while
    checking that the kernel lives.
    """
    chunk = max_message - HEADROOM
    sent: list[str] = []
    for index, buf in enumerate(buffers):
        view = memoryview(buf).cast("B")
        for start in range(0, max(len(view), 1), chunk):
            stage_to = {"key": key, "index": index}
            content = execute_content(
                "__kernelexec_gw__.stage()", allow_stdin=False, kernelexec_stage=stage_to
            )
            chunk_bytes = [bytes(view[start : start + chunk])]
            sent.append(await channels.send("shell", "execute_request", content, chunk_bytes))
    for msg_id in sent:
        reply = await watch(channels.wait_reply(msg_id))
        if reply.content.get("status") != "ok":
            msg = (
                f"staging a large input in gateway kernel {channels.kernel_id} failed: "
                f"{reply.content.get('ename')}: {reply.content.get('evalue')} "
                "(was runtime_bootstrap_code() executed first?)"
            )
            raise GatewayError(msg)
    return {"key": key, "count": len(buffers)}
