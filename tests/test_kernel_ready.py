"""A local kernel is ready once IOPub delivers: until then the bridge keeps probing.

A SUB socket receives only once its subscription has reached the kernel ("slow joiner"), and a
kernel publishes busy/idle for each kernel_info_request. When the first request's busy/idle
went out before the subscription arrived, the bridge used to wait 0.2 s and start a whole new
round; now it sends another kernel_info_request every few milliseconds until one is seen
(kernelexec/handles/local.py). A real kernel cannot be made to lose that race on demand, so
these tests drive the wait with a stand-in for the channels.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jupyter_client.session import Session

from kernelexec.handles.local import LocalKernel


class JoiningChannels:
    """The part of Channels the wait uses; IOPub 'joins' when ``joins_after`` probes were
    sent (None: never)."""

    def __init__(self, joins_after: int | None) -> None:
        self.iopub_seen = asyncio.Event()
        self.session = Session()
        self.shell = object()
        self.sent: list[str] = []
        self.joins_after = joins_after

    async def send(self, sock: Any, msg: dict[str, Any]) -> None:
        assert sock is self.shell
        self.sent.append(msg["header"]["msg_type"])
        if self.joins_after is not None and len(self.sent) >= self.joins_after:
            asyncio.get_running_loop().call_soon(self.iopub_seen.set)


async def test_probes_until_iopub_has_joined() -> None:
    channels = JoiningChannels(joins_after=3)
    await LocalKernel._iopub_joined(channels, 5.0)  # type: ignore[arg-type]
    assert channels.sent == ["kernel_info_request"] * 3


async def test_no_probe_when_iopub_already_delivered() -> None:
    channels = JoiningChannels(joins_after=None)
    channels.iopub_seen.set()
    await LocalKernel._iopub_joined(channels, 5.0)  # type: ignore[arg-type]
    assert channels.sent == []


async def test_gives_up_after_its_limit() -> None:
    channels = JoiningChannels(joins_after=None)
    with pytest.raises(TimeoutError):
        await LocalKernel._iopub_joined(channels, 0.05)  # type: ignore[arg-type]
    assert channels.sent and set(channels.sent) == {"kernel_info_request"}
