"""The floor: the least a JS-to-Python round trip can cost.

One plain Python process reads length-prefixed byte frames on stdin, decodes each into a
Python dict, calls a handler (``return msg``), encodes the result and writes it on stdout.
Requests are pipelined: replies leave in arrival order, and when more requests are already
buffered the replies are written together (one ``writev`` per batch, not per message).

Frame (both directions, little endian)::

    u32 json_len | u32 n_buffers | u32 buffer_len * n_buffers | JSON (UTF-8) | buffers

Binary values travel raw after the JSON, which holds ``{"$b": i}`` in their place: no
base64, one copy into the pipe and one out of it. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import sys
from typing import Any

HEAD = struct.Struct("<II")
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
CHUNK = 1 << 20


def grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (fewer wake-ups for big frames); ignore refusals."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


class Reader:
    """Exact reads from a file descriptor with one growing buffer; big reads go direct."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.pos = 0

    def buffered(self) -> int:
        return len(self.buf) - self.pos

    def _fill(self) -> None:
        chunk = os.read(self.fd, CHUNK)
        if not chunk:
            raise EOFError
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0
        self.buf += chunk

    def has_frame(self) -> bool:
        """True when a whole frame is already buffered (so a reply may wait for it)."""
        have = self.buffered()
        if have < HEAD.size:
            return False
        json_len, count = HEAD.unpack_from(self.buf, self.pos)
        need = HEAD.size + 4 * count + json_len
        if have < need:
            return False
        sizes = struct.unpack_from(f"<{count}I", self.buf, self.pos + HEAD.size)
        return have >= need + sum(sizes)

    def read(self, size: int) -> bytes:
        if size > CHUNK and self.buffered() < size:
            return self._read_big(size)
        while self.buffered() < size:
            self._fill()
        out = bytes(self.buf[self.pos : self.pos + size])
        self.pos += size
        return out

    def _read_big(self, size: int) -> bytes:
        out = bytearray(size)
        view = memoryview(out)
        have = self.buffered()
        view[:have] = self.buf[self.pos :]
        self.buf.clear()
        self.pos = 0
        while have < size:
            got = os.readv(self.fd, [view[have:]])
            if not got:
                raise EOFError
            have += got
        return bytes(out)  # the handler gets immutable bytes, as a user would expect


def read_frame(reader: Reader) -> dict[str, Any]:
    json_len, count = HEAD.unpack(reader.read(HEAD.size))
    sizes = struct.unpack(f"<{count}I", reader.read(4 * count)) if count else ()
    text = reader.read(json_len)
    if not count:
        msg: dict[str, Any] = json.loads(text)
        return msg
    buffers = [reader.read(size) for size in sizes]

    def hook(obj: dict[str, Any]) -> Any:
        if len(obj) == 1 and "$b" in obj:
            return buffers[obj["$b"]]
        return obj

    msg = json.loads(text, object_hook=hook)
    return msg


def encode_frame(msg: Any) -> list[bytes]:
    buffers: list[bytes] = []

    def default(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append(bytes(value) if not isinstance(value, bytes) else value)
            return {"$b": len(buffers) - 1}
        message = f"cannot send object of type {type(value).__name__}"
        raise TypeError(message)

    text = json.dumps(msg, separators=(",", ":"), default=default).encode()
    head = HEAD.pack(len(text), len(buffers))
    sizes = struct.pack(f"<{len(buffers)}I", *(len(b) for b in buffers))
    return [head, sizes, text, *buffers]


def write_all(fd: int, parts: list[bytes]) -> None:
    views = [memoryview(p) for p in parts if p]
    while views:
        written = os.writev(fd, views[:1024])
        while written and views:
            if written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0


def handle(msg: dict[str, Any]) -> dict[str, Any]:
    return msg


def serve(fd_in: int = 0, fd_out: int = 1) -> None:
    grow_pipe(fd_in)
    grow_pipe(fd_out)
    reader = Reader(fd_in)
    pending: list[bytes] = []
    while True:
        try:
            msg = read_frame(reader)
        except EOFError:
            break
        try:
            pending += encode_frame({"ok": handle(msg)})
        except Exception as exc:
            pending += encode_frame({"error": f"{type(exc).__name__}: {exc}"})
        if not reader.has_frame():  # no whole request waiting: answer now
            write_all(fd_out, pending)
            pending = []
    write_all(fd_out, pending)


if __name__ == "__main__":
    sys.exit(serve())
