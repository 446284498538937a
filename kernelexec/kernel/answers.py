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
  always, marked ``"delivered": true``: the bridge does its accounting (timeouts, deaths,
  counts) from the pipe as before, and sends a ``result`` frame only for what was not
  delivered. The node takes the first result of a request it holds and drops any later one
  (a kernel that dies between the two writes gets a KERNEL_DIED from the bridge for a message
  the node already finished).

Nothing is lost when the socket fails: a frame that could not be written whole is not marked
delivered (the bridge sends it), and a socket that broke is closed for good (the node drops a
frame cut short with the connection). Runs inside the kernel: standard library only.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from typing import Any

from .blobs import TABLE
from .framing import framed
from .results import Result

__all__ = ["DELIVERED", "AnswerSocket", "answerable", "result_frame"]

#: the RESULT's key (result pipe only) saying the node has it already
DELIVERED = "delivered"
#: a frame larger than this goes through the bridge (it would wait on the node's reading)
MAX_FRAME = 256 * 1024
_CONNECT_TIMEOUT = 2.0


def answerable(item: dict[str, Any], result: Result) -> bool:
    """Whether the node may have ``result`` before the bridge sees it: no blob files either
    way (the bridge's clean-up of a request's files runs after its batch), and no send or
    status event (they come through the bridge and must reach the node before the result)."""
    if item.get(TABLE) or result.get(TABLE):
        return False
    return not result.get("sent") and not result.get("status_events")


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
            sock.sendall(framed(encode({"token": token, "node_id": node_id})))
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
        try:
            sent = sock.send(data)
        except BlockingIOError:  # the node is behind: nothing written, the bridge sends it
            return False
        except OSError:
            self.close()
            return False
        if sent < len(data):
            return self._finish(memoryview(data)[sent:])
        return True

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

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
