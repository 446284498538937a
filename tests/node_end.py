"""The node's end of the socket pair a Node-RED node hands the bridge it starts (--node-fd),
with a real bridge process behind it: what tests/test_pipe_transport.py and
tests/test_answers.py speak the protocol over."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

from server_support import bridge_env

from kernelexec.protocol import PROTOCOL_VERSION

HEADER = struct.Struct(">I")


class NodeEnd:
    """The node's end of the socket pair, with the bridge process behind it."""

    def __init__(self, proc: subprocess.Popen[bytes], ours: socket.socket) -> None:
        self.proc = proc
        self.ours = ours
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(sock=self.ours)

    def send(self, frame: Any) -> None:
        assert self.writer is not None
        self.send_raw(json.dumps(frame).encode())

    def send_raw(self, body: bytes, size: int | None = None) -> None:
        assert self.writer is not None
        self.writer.write(HEADER.pack(len(body) if size is None else size) + body)

    async def frame(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next frame of type ``kind`` (others, e.g. pool_state starting, are skipped)."""
        return (await self.frames_until(kind, timeout))[-1]

    async def frames_until(self, kind: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every frame up to and including the next one of type ``kind``."""
        assert self.reader is not None
        seen: list[dict[str, Any]] = []
        while True:
            head = await asyncio.wait_for(self.reader.readexactly(HEADER.size), timeout)
            body = await asyncio.wait_for(self.reader.readexactly(HEADER.unpack(head)[0]), timeout)
            parsed = json.loads(body)
            for frame in parsed if isinstance(parsed, list) else [parsed]:
                seen.append(dict(frame))
                if frame.get("type") == kind:
                    return seen

    async def greet(self, **fields: Any) -> None:
        """hello (with ``fields``), then the welcome."""
        hello = {"type": "hello", "protocol_version": PROTOCOL_VERSION, "client": "test"}
        self.send({**hello, **fields})
        welcome = await self.frame("welcome")
        assert welcome["protocol_version"] == PROTOCOL_VERSION


@contextlib.asynccontextmanager
async def started_bridge() -> AsyncIterator[NodeEnd]:
    """A bridge started as Node-RED starts it, on a socket pair; stopped at the end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = theirs.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelexec", "serve", "--port", "0", "--node-fd", str(fd)],
        pass_fds=(fd,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **bridge_env()},
    )
    theirs.close()
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["port"] > 0
    end = NodeEnd(proc, ours)
    await end.open()
    try:
        yield end
    finally:
        assert end.writer is not None
        end.writer.close()
        with contextlib.suppress(OSError):
            await end.writer.wait_closed()
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)
