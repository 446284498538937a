"""Length-prefixed frames: a 4-byte big-endian length, then the body (JSON here).

The one framing of the byte streams kernelexec owns: the result pipe (kernel/resultpipe.py),
the request pipe of the lane (kernelexec/kernel/lane.py) and the node's socket pair
(kernelexec/server/pipe.py; nodered-node/lib/pipe_socket.js is its JavaScript half, and
spec.json's "transport" says it for both). Runs inside the kernel too: standard library only.
"""

from __future__ import annotations

import struct

__all__ = ["F_SETPIPE_SZ", "HEADER", "PIPE_SIZE", "framed", "take_frames"]

HEADER = struct.Struct(">I")
#: F_SETPIPE_SZ (Linux): a larger pipe lets a burst of frames go without a wait on the reader.
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


def framed(body: bytes) -> bytes:
    """``body`` with its length in front."""
    return HEADER.pack(len(body)) + body


def take_frames(buffer: bytearray, limit: int | None = None) -> list[bytes]:
    """The bodies of the complete frames at the start of ``buffer``, removed from it (a frame
    cut short stays for the next read). ValueError when a length is over ``limit``."""
    bodies, start, end = [], 0, len(buffer)
    while end - start >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, start)
        if limit is not None and size > limit:
            del buffer[:start]
            msg = f"a {size}-byte frame is over the limit of {limit} bytes"
            raise ValueError(msg)
        stop = start + HEADER.size + size
        if stop > end:
            break
        bodies.append(bytes(buffer[start + HEADER.size : stop]))
        start = stop
    del buffer[:start]
    return bodies
