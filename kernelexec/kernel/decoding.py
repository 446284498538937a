"""Decoding Jupyter messages on the hot path, in the bridge and in kernelexec's kernel.

jupyter_client's ``Session.deserialize`` costs ~58 µs per message here, most of it parsing
every ISO date in the header and parent header (``extract_dates``) with the json module, and
it keeps every signature it has seen (a replay check that grew the bridge by megabytes over a
long session). Both ends of kernelexec's private ipc/loopback channels read only the msg_type,
the parent's msg_id, the content and the buffers, so this decoder checks the HMAC signature
exactly as the Session does (constant-time compare) and parses the JSON frames with orjson
(the json module where a kernel's environment lacks it), leaving the dates as strings. Messages
keep the Session's dict shape. It runs inside kernels too: standard library, pyzmq and
jupyter_client only (orjson optional).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

from jupyter_client.session import DELIM, Session

try:  # optional inside a kernel's environment; a bridge dependency
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads  # type: ignore[assignment]

__all__ = ["decode", "decode_parts", "session_deserializer"]

#: Routing identities / IOPub topics before the delimiter (one in practice).
_MAX_IDENTITIES = 16


def decode(session: Session, frames: Sequence[Any]) -> dict[str, Any]:
    """One message from a zmq multipart (identities first); raises ValueError when the
    signature is missing or wrong, or the message is malformed."""
    return decode_parts(session, frames[_after_delimiter(frames) :])


def decode_parts(session: Session, parts: Sequence[Any], *, content: bool = True) -> dict[str, Any]:
    """One message from its parts after the delimiter: signature, header, parent header,
    metadata, content, buffers (zmq Frames or bytes). ``content=False`` leaves the content
    as bytes, as Session.deserialize does."""
    signed = [_bytes(part) for part in parts[:5]]
    if len(signed) < 5:
        message = "malformed Jupyter message: fewer than 5 frames after the delimiter"
        raise ValueError(message)
    _check_signature(session, signed)
    header = _loads(signed[1])
    return {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": header.get("msg_type"),
        "parent_header": _loads(signed[2]),
        "metadata": _loads(signed[3]),
        "content": _loads(signed[4]) if content else signed[4],
        "buffers": [_view(part) for part in parts[5:]],
    }


def session_deserializer(session: Session) -> Callable[..., dict[str, Any]]:
    """A drop-in for ``session.deserialize`` (kernelexec/kernel/app.py installs it)."""

    def deserialize(
        msg_list: Sequence[Any], content: bool = True, copy: bool = True
    ) -> dict[str, Any]:
        return decode_parts(session, msg_list, content=content)

    return deserialize


def _view(part: Any) -> memoryview:
    """A buffer frame without copying it (zmq Frames have ``.buffer``)."""
    buffer = getattr(part, "buffer", None)
    return buffer if isinstance(buffer, memoryview) else memoryview(part)


def _bytes(part: Any) -> bytes:
    return (
        part if isinstance(part, bytes) else part.bytes if hasattr(part, "bytes") else bytes(part)
    )


def _after_delimiter(frames: Sequence[Any]) -> int:
    for index, frame in enumerate(frames[:_MAX_IDENTITIES]):
        if _bytes(frame) == DELIM:
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
