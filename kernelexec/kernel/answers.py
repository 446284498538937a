"""The answer socket: a local kernel hands a plain message's result to the node itself.

On the lane (kernelexec/kernel/lane.py) a hot message goes Node-RED -> bridge -> kernel ->
bridge -> Node-RED: four wake-ups of a sleeping process where a plain Python pipe has two, and
the bridge's relay of the result is the one hop that carries nothing the bridge needs before
the node. So when the node offers it, the kernel also writes a message's ``result`` frame
straight to the node:

- the node listens on a Unix socket in a directory of its own (mode 0700) and says where in
  its ``hello`` (``answers: {path, token}``); the bridge passes that in the ``init`` op to the
  kernels of pools that run on this machine as the bridge's user, unsandboxed (an isolated
  kernel's code is not trusted with a socket into Node-RED);
- the kernel connects once, at init, and introduces itself: ``{"token", "node_id"}``
  (4-byte big-endian length + JSON, as every frame kernelexec owns: framing.py);
- after a run, a RESULT that nothing else must precede or follow (:func:`answerable`) is
  written to the socket as the bridge would have sent it, and *then* down the result pipe as
  always, marked ``"delivered": true`` and without what the node already has (outputs,
  logs, stdout): the bridge does its accounting (timeouts, deaths,
  counts) from the pipe as before, and sends a ``result`` frame only for what was not
  delivered. The node takes the first result of a request it holds and drops any later one
  (a kernel that dies between the two writes gets a KERNEL_DIED from the bridge for a message
  the node already finished).

Nothing is lost when the socket fails: a frame that could not be written whole is not marked
delivered (the bridge sends it), and a socket that broke is closed for good (the node drops a
frame cut short with the connection).

**Direct requests.** The socket also carries the other way: once its setup ran, the kernel
says ``{"type": "ready"}`` and the node may write a message's ``execute`` frame (the frame it
sends the bridge, without blob files) straight here; the kernel runs it between the bridge's
ops as a batch of one whose batch frame on the result pipe is marked ``direct``, from which
the bridge accounts for it (kernelexec/directruns.py). Runs inside the kernel: standard
library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from .blobs import TABLE
from .framing import framed, take_frames
from .results import Result

__all__ = ["DELIVERED", "AnswerSocket", "answerable", "delivered", "result_frame"]

#: the RESULT's key (result pipe only) saying the node has it already
DELIVERED = "delivered"
#: a frame larger than this goes through the bridge (it would wait on the node's reading)
MAX_FRAME = 256 * 1024
_CONNECT_TIMEOUT = 2.0
#: the largest request frame taken from the node (the protocol's max_frame_bytes is larger,
#: but a direct request carries no blob file and its msg came through Node-RED)
MAX_REQUEST = 64 * 1024 * 1024


def answerable(item: dict[str, Any], result: Result) -> bool:
    """Whether the node may have ``result`` before the bridge sees it: no blob files either
    way (the bridge's clean-up of a request's files runs after its batch), and no send or
    status event (they come through the bridge and must reach the node before the result)."""
    if item.get(TABLE) or result.get(TABLE):
        return False
    return not result.get("sent") and not result.get("status_events")


def delivered(result: Result) -> Result:
    """The RESULT for the result pipe once the node has it: what the bridge accounts from
    (req_id, error, exec_ms, sent, done), without the outputs, logs and stdout it would only
    decode to drop."""
    slim: Result = {**result, "outputs": [], "logs": [], "status": [], "stdout": ""}
    slim["delivered"] = True
    return slim


def result_frame(node_id: str, result: Result) -> dict[str, Any]:
    """The ``result`` frame the bridge makes of a RESULT (spec.json server_frames.result)."""
    frame: dict[str, Any] = {key: value for key, value in result.items() if key != "exec_ms"}
    frame["type"] = "result"
    frame["node_id"] = node_id
    frame["timing"] = {"queued_ms": 0.0, "exec_ms": result.get("exec_ms", 0.0)}
    return frame


class AnswerSocket:
    """Kernel side: the connection to the node's answer socket."""

    def __init__(self, sock: socket.socket, node_id: str, encode: Callable[[Any], bytes]) -> None:
        self._sock: socket.socket | None = sock
        self._node_id = node_id
        self._encode = encode
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_request: Callable[[dict[str, Any]], None] | None = None
        self._buffer = bytearray()

    @property
    def serving(self) -> bool:
        return self._on_request is not None

    @classmethod
    def connect(
        cls, offer: Any, node_id: str, encode: Callable[[Any], bytes]
    ) -> AnswerSocket | None:
        """The connection the init op's ``answers`` offers, or None (no offer, a socket that
        is not there or refuses: the results then all go through the bridge)."""
        if not isinstance(offer, dict):
            return None
        path, token = offer.get("path"), offer.get("token")
        if not isinstance(path, str) or not isinstance(token, str) or not path or not token:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(_CONNECT_TIMEOUT)
            sock.connect(path)
            hello = {"token": token, "node_id": node_id, "pid": os.getpid()}
            sock.sendall(framed(encode(hello)))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        return cls(sock, node_id, encode)

    def deliver(self, result: Result) -> bool:
        """Write ``result``'s frame to the node; True when it went whole."""
        sock = self._sock
        if sock is None:
            return False
        try:
            data = framed(self._encode(result_frame(self._node_id, result)))
        except (TypeError, ValueError):
            return False
        if len(data) > MAX_FRAME:
            return False
        return self._write(data, wait=False)  # the node is behind: the bridge sends it

    def _finish(self, rest: memoryview) -> bool:
        """The rest of a frame the node has begun to receive (it must come whole or the
        connection goes)."""
        sock = self._sock
        assert sock is not None
        try:
            sock.setblocking(True)
            sock.sendall(rest)
            sock.setblocking(False)
        except (OSError, KeyboardInterrupt):  # KeyboardInterrupt: the backstop, code done
            self.close()
            return False
        return True

    def serve(self, on_request: Callable[[dict[str, Any]], None]) -> None:
        """Take the node's requests from now on (the setup ran), on this thread's loop, and
        tell the node so."""
        sock = self._sock
        if sock is None or self.serving:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop on this thread: results only
            return
        if not self._write(framed(self._encode({"type": "ready"})), wait=True):
            return
        self._loop, self._on_request = loop, on_request
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            chunk = sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the node closed it: Node-RED stops this bridge
            self.close()
            return
        self._buffer += chunk
        try:
            bodies = take_frames(self._buffer, MAX_REQUEST)
        except ValueError:
            self.close()
            return
        for body in bodies:
            self._request(body)

    def _request(self, body: bytes) -> None:
        try:
            frame = json.loads(body)
        except ValueError:
            return
        on_request = self._on_request
        if isinstance(frame, dict) and frame.get("type") == "execute" and on_request is not None:
            on_request(frame)

    def _write(self, data: bytes, *, wait: bool) -> bool:
        """Write a whole frame; True when it went. Without ``wait``, a socket that takes none
        of it leaves it unwritten; a frame begun is always finished (or the connection goes)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sent = sock.send(data)
        except BlockingIOError:
            if not wait:
                return False
            sent = 0
        except OSError:
            self.close()
            return False
        return sent == len(data) or self._finish(memoryview(data)[sent:])

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            with contextlib.suppress(OSError):
                sock.close()
        self._on_request = None
