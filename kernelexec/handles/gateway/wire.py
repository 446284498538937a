"""Jupyter messages on the kernel WebSocket, both ways, in either protocol.

``v1.kernel.websocket.jupyter.org`` (preferred): the server forwards our serialized parts to
the kernel untouched, so ``content["kernelexec"]`` and the binary buffers arrive as sent. The
legacy JSON protocol (text frames with a ``channel`` field, binary frames for messages with
buffers) is spoken when a server does not offer v1.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["WS_V1", "Message", "decode", "dumps", "encode"]

WS_V1 = "v1.kernel.websocket.jupyter.org"


@dataclass
class Message:
    channel: str
    header: dict[str, Any]
    parent_header: dict[str, Any]
    content: dict[str, Any]
    buffers: list[bytes]

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def parent_id(self) -> str | None:
        value = self.parent_header.get("msg_id")
        return str(value) if value else None


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode(
    subprotocol: str | None,
    channel: str,
    header: dict[str, Any],
    content: dict[str, Any],
    buffers: list[bytes],
    parent: dict[str, Any],
) -> str | bytes:
    """One message as a WebSocket frame of ``subprotocol`` (None: the legacy protocol)."""
    if subprotocol == WS_V1:
        parts = [dumps(header), dumps(parent), b"{}", dumps(content)]
        return _encode_v1(channel, parts + [bytes(b) for b in buffers])
    whole = {
        "header": header,
        "parent_header": parent,
        "metadata": {},
        "content": content,
        "channel": channel,
    }
    return _encode_legacy(whole, [bytes(b) for b in buffers])


def _encode_v1(channel: str, parts: list[bytes]) -> bytes:
    """jupyter_server's serialize_msg_to_ws_v1: offsets, channel, header.. content, buffers."""
    chan = channel.encode("utf-8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return b"".join([head, chan, *parts])


def _decode_v1(data: bytes) -> tuple[str, list[bytes]]:
    count = struct.unpack_from("<Q", data)[0]
    offsets = list(struct.unpack_from(f"<{count}Q", data, 8))
    channel = data[offsets[0] : offsets[1]].decode("utf-8")
    parts = [data[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    return channel, parts


def _encode_legacy(msg: dict[str, Any], buffers: list[bytes]) -> str | bytes:
    if not buffers:
        return dumps(msg).decode("utf-8")
    parts = [dumps(msg), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)


def decode(data: str | bytes, subprotocol: str | None) -> Message:
    if subprotocol == WS_V1:
        assert isinstance(data, bytes)
        channel, parts = _decode_v1(data)
        header, parent, _meta, content = (json.loads(p) for p in parts[:4])
        return Message(channel, header, parent, content, parts[4:])
    buffers: list[bytes] = []
    if isinstance(data, bytes):
        count = struct.unpack_from("!I", data)[0]
        offsets = [*struct.unpack_from(f"!{count}I", data, 4), len(data)]
        chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
        msg = json.loads(chunks[0])
        buffers = chunks[1:]
    else:
        msg = json.loads(data)
    return Message(
        msg.get("channel") or "",
        msg["header"],
        msg.get("parent_header") or {},
        msg.get("content") or {},
        buffers,
    )
