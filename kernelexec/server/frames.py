"""Frames of the bridge protocol: parse and validate client frames, build server frames.

Everything here is derived from ``kernelexec/protocol/spec.json`` at import time: the frame
types, their fields and the type of each field (the first word of the field's description:
``string``, ``object``, ``integer``, ``number``, ``boolean``, ``array`` or ``any``; a
description containing ``or null`` makes the field nullable, and a nullable field may be left
out). Unknown extra fields are ignored, so a newer minor version of the client still works.
The hot path (:func:`parse_frame`) does one ``json.loads`` and a few dict lookups per frame.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import orjson

from ..errors import ErrorObject, KernelexecError
from ..protocol import BATCH_VERSION, ERROR_CODES, PROTOCOL_VERSION, load_spec

__all__ = [
    "CLIENT_FRAMES",
    "SERVER_FRAMES",
    "FrameError",
    "batching",
    "check_frame",
    "decode",
    "describe",
    "dumps",
    "error_frame",
    "error_object",
    "frame_ids",
    "major_version",
    "parse_frame",
    "peek_ids",
]

_SPEC = load_spec()
CLIENT_FRAMES: frozenset[str] = frozenset(_SPEC["client_frames"])
SERVER_FRAMES: frozenset[str] = frozenset(_SPEC["server_frames"])

_KINDS: dict[str, tuple[type, ...] | None] = {
    "string": (str,),
    "object": (dict,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "any": None,
}

#: (field name, accepted python types or None for any, nullable) per client frame type.
_Field = tuple[str, "tuple[type, ...] | None", bool]


def _field_rule(frame_type: str, name: str, description: str) -> _Field:
    kind = description.split(None, 1)[0].strip(",:;").lower()
    if kind not in _KINDS:
        msg = f"spec.json: client frame {frame_type}.{name} has unknown type {kind!r}"
        raise RuntimeError(msg)
    return (name, _KINDS[kind], "or null" in description)


_RULES: dict[str, tuple[_Field, ...]] = {
    frame_type: tuple(_field_rule(frame_type, name, desc) for name, desc in body["fields"].items())
    for frame_type, body in _SPEC["client_frames"].items()
}

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
#: UTF-8 cannot carry these alone (see :func:`dumps`).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class FrameError(KernelexecError):
    """A client frame that cannot be handled; becomes an ``error`` frame, never a crash. Its
    code is the frame's: BAD_FRAME, FRAME_TOO_LARGE, NOT_CONFIGURED, POOL_CLOSED..."""

    code = "BAD_FRAME"

    def __init__(
        self,
        message: str,
        code: str = "BAD_FRAME",
        *,
        req_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.req_id = req_id
        self.node_id = node_id

    def to_frame(self) -> dict[str, Any]:
        return error_frame(self.code, self.message, req_id=self.req_id, node_id=self.node_id)


def error_object(code: str, message: str, type_name: str = "BridgeError") -> ErrorObject:
    """The protocol's error object (spec ``error_object``) for an error the bridge detects."""
    if code not in ERROR_CODES:
        msg = f"error code {code!r} is not in spec.json error_codes"
        raise ValueError(msg)
    return {"code": code, "type": type_name, "message": message, "traceback": None, "line": None}


def error_frame(
    code: str, message: str, *, req_id: str | None = None, node_id: str | None = None
) -> dict[str, Any]:
    return {
        "type": "error",
        "error": error_object(code, message, "ProtocolError"),
        "req_id": req_id,
        "node_id": node_id,
    }


def frame_ids(frame: dict[str, Any]) -> tuple[str | None, str | None]:
    """The frame's (req_id, node_id) when they are strings, for error frames."""
    req_id, node_id = frame.get("req_id"), frame.get("node_id")
    return (
        req_id if isinstance(req_id, str) else None,
        node_id if isinstance(node_id, str) else None,
    )


#: How much of an oversized frame :func:`peek_ids` looks at.
PEEK_BYTES = 4096
_PEEK = re.compile(rb'"(req_id|node_id)"\s*:\s*("(?:[^"\\]|\\.)*")')


def peek_ids(text: str | bytes) -> tuple[str | None, str | None]:
    """(req_id, node_id) from the head of a frame too large to parse, when they are there.

    Clients put them before ``msg`` (the Node-RED node does), so a refused ``execute`` can
    still be matched to its request.
    """
    head = text[:PEEK_BYTES]
    data = head.encode("utf-8", "replace") if isinstance(head, str) else head
    found: dict[bytes, str] = {}
    for match in _PEEK.finditer(data):
        with contextlib.suppress(ValueError):
            found.setdefault(match.group(1), json.loads(match.group(2)))
    return found.get(b"req_id"), found.get(b"node_id")


def _non_finite(_name: str) -> None:
    """NaN, Infinity and -Infinity (not JSON, but Python's json reads them) become null."""
    return None


def describe(value: Any, limit: int = 40) -> str:
    """A value as JSON for an error message, cut to ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_fields(frame_type: str, frame: dict[str, Any]) -> None:
    for name, kinds, nullable in _RULES[frame_type]:
        value = frame.get(name)
        if value is None:
            if nullable:
                frame.setdefault(name, None)
                continue
            if kinds is None and name in frame:
                continue
            req_id, node_id = frame_ids(frame)
            msg = f"{frame_type} frame: field {name!r} is missing; see docs/protocol.md"
            raise FrameError(msg, req_id=req_id, node_id=node_id)
        if kinds is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            req_id, node_id = frame_ids(frame)
            expected = " or ".join(k.__name__ for k in kinds)
            msg = f"{frame_type} frame: field {name!r} is {describe(value)}; expected {expected}"
            raise FrameError(msg, req_id=req_id, node_id=node_id)


def decode(text: str | bytes) -> Any:
    """Decode one WebSocket message: a frame (an object) or, since protocol 1.1, an array of
    frames. Raises :class:`FrameError` when it is not JSON; the frames are not checked yet.

    (The json module, not orjson: orjson reads an integer beyond 64 bits as a float, and
    telling such a message apart costs more than orjson saves on these small frames.)
    """
    try:
        return json.loads(text, parse_constant=_non_finite)
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"frame is not valid JSON ({exc}); send one JSON object per text frame"
        raise FrameError(msg) from None
    except RecursionError:
        req_id, node_id = peek_ids(text)
        msg = "frame is nested too deeply to decode; send flatter values"
        raise FrameError(msg, req_id=req_id, node_id=node_id) from None


def parse_frame(text: str | bytes) -> dict[str, Any]:
    """Decode and validate one client frame; raises :class:`FrameError` when it is unusable."""
    return check_frame(decode(text))


def check_frame(frame: Any) -> dict[str, Any]:
    """Validate one decoded client frame; raises :class:`FrameError` when it is unusable."""
    if not isinstance(frame, dict):
        msg = f"frame is {describe(frame)}, not a JSON object with a 'type' field"
        raise FrameError(msg)
    frame_type = frame.get("type")
    if frame_type not in _RULES:
        req_id, node_id = frame_ids(frame)
        known = ", ".join(sorted(CLIENT_FRAMES))
        msg = f"unknown frame type {describe(frame_type)}; known types: {known}"
        raise FrameError(msg, "UNKNOWN_TYPE", req_id=req_id, node_id=node_id)
    _check_fields(frame_type, frame)
    return frame


def major_version(version: str) -> int | None:
    """The MAJOR of a "MAJOR.MINOR" version string, or None when it is not one."""
    head, _, tail = version.partition(".")
    if not (head + tail).isascii() or not head.isdigit() or not tail.isdigit():
        return None
    return int(head)


PROTOCOL_MAJOR = major_version(PROTOCOL_VERSION)


def batching(version: str) -> bool:
    """True when a peer speaking ``version`` (already checked by :func:`major_version`)
    reads arrays of frames: protocol 1.1 or later."""
    head, _, tail = version.partition(".")
    return (int(head), int(tail)) >= BATCH_VERSION


def dumps(frame: dict[str, Any]) -> bytes:
    """Encode a server frame as compact UTF-8 JSON.

    orjson on the hot path (NaN and Infinity become null, as JSON.stringify writes them);
    what it refuses (a key that is not a str, an int beyond 64 bits, a lone surrogate) goes
    through the json module, which refuses NaN (ValueError: JSON.parse cannot read it) and
    writes a lone surrogate, which UTF-8 cannot carry, as U+FFFD (as the kernels' wire
    packer does), so that the frame is not dropped with the rest of its batch.
    """
    try:
        return orjson.dumps(frame)
    except TypeError:  # orjson.JSONEncodeError
        pass
    text = _ENCODER.encode(frame)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8")
