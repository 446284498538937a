"""Decoding the Jupyter messages a local kernel sends, on the bridge's hot path.

jupyter_client's ``Session.deserialize`` costs ~58 µs per message here, most of it parsing
every ISO date in the header and parent header (``extract_dates``) with the json module, and
it keeps every signature it has seen (a replay check that grew the bridge by megabytes over a
long session). kernelexec reads only the msg_type, the parent's msg_id, the content and the
buffers of what its own kernels send over private ipc sockets, so this decoder checks the
HMAC signature exactly as the Session does (constant-time compare) and parses the JSON frames
with orjson, leaving the dates as strings. Messages keep the Session's dict shape.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
import zmq
from jupyter_client.session import DELIM, Session

__all__ = ["decode"]

#: Routing identities / IOPub topics before the delimiter (one in practice).
_MAX_IDENTITIES = 16


def decode(session: Session, frames: list[zmq.Frame]) -> dict[str, Any]:
    """One message from a zmq multipart (identities first); raises ValueError when the
    signature is missing or wrong, or the message is malformed."""
    start = _after_delimiter(frames)
    signed = [frame.bytes for frame in frames[start : start + 5]]
    if len(signed) < 5:
        message = "malformed Jupyter message: fewer than 5 frames after the delimiter"
        raise ValueError(message)
    _check_signature(session, signed)
    header = orjson.loads(signed[1])
    return {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": header.get("msg_type"),
        "parent_header": orjson.loads(signed[2]),
        "metadata": orjson.loads(signed[3]),
        "content": orjson.loads(signed[4]),
        "buffers": [memoryview(frame.buffer) for frame in frames[start + 5 :]],
    }


def _after_delimiter(frames: list[zmq.Frame]) -> int:
    for index, frame in enumerate(frames[:_MAX_IDENTITIES]):
        if frame.bytes == DELIM:
            return index + 1
    message = "not a Jupyter message (no <IDS|MSG> delimiter)"
    raise ValueError(message)


def _check_signature(session: Session, signed: list[bytes]) -> None:
    auth = session.auth
    if auth is None:
        return
    if not signed[0]:
        message = "unsigned Jupyter message"
        raise ValueError(message)
    check = auth.copy()
    for part in signed[1:]:
        check.update(part)
    if not hmac.compare_digest(signed[0], check.hexdigest().encode("ascii")):
        message = "Jupyter message with an invalid signature"
        raise ValueError(message)
