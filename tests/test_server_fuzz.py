"""Fuzzing the frame parser and the session: any input gives a frame or a FrameError, and a
session answers every input with spec-conforming frames without ever raising."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelexec.errors import EnvironmentBuildError
from kernelexec.protocol import ERROR_CODES, PROTOCOL_VERSION, load_spec
from kernelexec.server import Bridge, BridgeOptions
from kernelexec.server.frames import (
    CLIENT_FRAMES,
    SERVER_FRAMES,
    FrameError,
    parse_frame,
    peek_ids,
)
from kernelexec.server.session import ClientSession

SPEC = load_spec()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def spec_shaped_frames(draw: st.DrawFn) -> dict[str, Any]:
    """Frames of a real client type whose fields are sometimes right, sometimes anything."""
    frame_type = draw(st.sampled_from(sorted(CLIENT_FRAMES)) | st.text(max_size=12))
    frame: dict[str, Any] = {"type": frame_type}
    fields = SPEC["client_frames"].get(frame_type, {}).get("fields", {})
    for name, description in fields.items():
        if draw(st.booleans()) and draw(st.booleans()):
            continue  # leave the field out
        kind = description.split()[0].strip(",:")
        good = {
            "string": st.text(max_size=10),
            "object": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            "any": json_values,
        }.get(kind, json_values)
        frame[name] = draw(good | json_values)
    keys = st.sampled_from(["req_id", "node_id", "ctx_id"]) | st.text(max_size=6)
    extra = draw(st.dictionaries(keys, json_values, max_size=2))
    return {**extra, **frame}


def check_parsed(frame: dict[str, Any]) -> None:
    assert frame["type"] in CLIENT_FRAMES
    for name, description in SPEC["client_frames"][frame["type"]]["fields"].items():
        assert name in frame or "or null" in description


@given(st.text() | st.binary())
def test_any_text_parses_or_raises_frame_error(raw: str | bytes) -> None:
    try:
        frame = parse_frame(raw)
    except FrameError as exc:
        assert exc.code in ERROR_CODES and exc.message
    else:
        check_parsed(frame)


@given(st.text() | st.binary() | spec_shaped_frames().map(json.dumps))
def test_peek_ids_finds_strings_or_nothing(raw: str | bytes) -> None:
    for value in peek_ids(raw):
        assert value is None or isinstance(value, str)


@given(st.text(max_size=20), st.text(max_size=20), json_values)
def test_peek_ids_reads_what_the_node_sends(req_id: str, node_id: str, msg: Any) -> None:
    frame = {"type": "execute", "node_id": node_id, "req_id": req_id, "msg": {"x": msg}}
    for text in (json.dumps(frame), json.dumps(frame, ensure_ascii=False, indent=1)):
        assert peek_ids(text) == (req_id, node_id)


@given(spec_shaped_frames())
def test_spec_shaped_frames_parse_or_raise_frame_error(frame: dict[str, Any]) -> None:
    try:
        parsed = parse_frame(json.dumps(frame))
    except FrameError as exc:
        assert exc.code in ("BAD_FRAME", "UNKNOWN_TYPE")
        assert exc.to_frame()["type"] == "error"
    else:
        check_parsed(parsed)


class RecordingTransport:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str | None] | None = None

    def write_message(self, message: str) -> None:
        data = json.loads(message)  # protocol 1.1: an array of frames, in order
        self.frames.extend(data if isinstance(data, list) else [data])

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed = (code, reason)


def no_kernels_here(config: Any, hooks: Any) -> Any:
    text = "the fuzz test starts no kernels"
    raise EnvironmentBuildError(text)


async def feed(frames: list[str], greet: bool) -> RecordingTransport:
    bridge = Bridge(options=BridgeOptions(max_frame_bytes=4096), pool_factory=no_kernels_here)
    transport = RecordingTransport()
    session = ClientSession(bridge, transport)
    if greet:
        hello = {"type": "hello", "protocol_version": PROTOCOL_VERSION, "client": "f"}
        session.handle(json.dumps(hello))
    for raw in frames:
        session.handle(raw)
        await asyncio.sleep(0)
    await session.end("fuzz done")  # waits for the session's tasks: their frames are in
    return transport


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(spec_shaped_frames().map(json.dumps) | st.text(max_size=30), max_size=8),
    st.booleans(),
)
def test_session_answers_any_input_with_spec_frames(frames: list[str], greet: bool) -> None:
    transport = asyncio.run(feed(frames, greet))
    assert not greet or transport.frames[0]["type"] == "welcome"
    for frame in transport.frames:
        assert frame["type"] in SERVER_FRAMES
        fields = SPEC["server_frames"][frame["type"]]["fields"]
        missing = {name for name, doc in fields.items() if "left out" not in doc} - set(frame)
        assert not missing, frame
        for name in ("req_id", "node_id"):
            if name in SPEC["server_frames"][frame["type"]]["fields"]:
                assert frame[name] is None or isinstance(frame[name], str), frame
        error = frame.get("error")
        if isinstance(error, dict):
            assert error["code"] in ERROR_CODES
            assert error["code"] != "INTERNAL", error  # a bridge bug, not a bad frame
