"""Hypothesis, extending tests/test_server_fuzz.py and tests/test_convert_fuzz.py with what they
leave out: deep nesting, NaN/Infinity tokens, lone surrogates, req_id recovery from frames
that cannot be decoded, and the wire packer (kernelexec.kernel.app.wire_pack) both sessions use."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelexec.kernel.app import wire_pack
from kernelexec.kernel.convert import from_json, to_json
from kernelexec.server.frames import FrameError, parse_frame

# every code point, lone surrogates included (st.text() leaves category Cs out)
any_text = st.text(st.characters(codec=None, categories=None), max_size=12)
numbers = st.integers() | st.floats(allow_nan=True, allow_infinity=True)
values = st.recursive(
    st.none() | st.booleans() | numbers | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)
_LONE = re.compile("[\ud800-\udfff]")


def on_the_wire(value: Any) -> Any:
    """What a value becomes once packed: U+FFFD for lone surrogates, null for NaN/Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _LONE.sub("\ufffd", value)
    if isinstance(value, list):
        return [on_the_wire(v) for v in value]
    if isinstance(value, dict):
        return {on_the_wire(k): on_the_wire(v) for k, v in value.items()}
    return value


@settings(deadline=None)
@given(values)
def test_wire_pack_always_gives_utf8_json_of_the_value(value: Any) -> None:
    packed = wire_pack({"content": value})
    decoded = json.loads(packed.decode("utf-8"))  # strict UTF-8: no surrogate got through
    if not _collapses(value):  # keys differing only in lone surrogates collapse into one
        assert decoded == {"content": on_the_wire(value)}


@settings(deadline=None)
@given(values)
def test_values_survive_convert_then_the_wire(value: Any) -> None:
    """Kernel side: to_json, then the session's packer; bridge side: json, then from_json."""
    packed = wire_pack(to_json({"payload": value}))
    back = from_json(json.loads(packed))
    if not _collapses(value):
        assert back == {"payload": on_the_wire(value)}


def _collapses(value: Any) -> bool:
    """True when two dict keys differ only in lone surrogates (they become one key)."""
    if isinstance(value, list):
        return any(_collapses(v) for v in value)
    if isinstance(value, dict):
        keys = [on_the_wire(k) for k in value]
        return len(set(keys)) < len(keys) or any(_collapses(v) for v in value.values())
    return False


def nested(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.integers(min_value=1, max_value=60_000),
    leaf=st.sampled_from(["", "1", "NaN", "-Infinity", '"\\ud800"', '{"a": null}']),
    req_id=st.text(st.characters(codec="ascii", exclude_characters='"\\'), max_size=10),
)
def test_parser_answers_any_depth_and_keeps_the_req_id(depth: int, leaf: str, req_id: str) -> None:
    text = (
        f'{{"type": "execute", "node_id": "n", "req_id": {json.dumps(req_id)}, '
        f'"msg": {{"payload": {nested(depth, leaf)}}}}}'
    )
    try:
        frame = parse_frame(text)
    except FrameError as exc:
        assert exc.code == "BAD_FRAME" and "nested" in exc.message
        assert exc.req_id == req_id, "the error can be matched to its message"
    else:
        assert frame["req_id"] == req_id
        value = frame["msg"]["payload"]
        for _ in range(depth):
            value = value[0] if value else value
        assert value is None or value in ([], 1, "\ud800", {"a": None})


@settings(deadline=None)
@given(st.lists(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "0"])))
def test_non_finite_tokens_in_frames(tokens: list[str]) -> None:
    frame = parse_frame('{"type": "ping", "id": "x", "v": [' + ", ".join(tokens) + "]}")
    for token, value in zip(tokens, frame["v"], strict=True):
        assert value is None or (token == "0" and value == 0) or math.isinf(value)
