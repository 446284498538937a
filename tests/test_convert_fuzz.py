"""Hypothesis: convert round trips on arbitrary JSON-like values with bytes and blobs."""

from __future__ import annotations

import json
import math
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelexec.kernel import blobs
from kernelexec.kernel.convert import Encoder, from_json, to_json

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats()
small_bytes = st.binary(max_size=64)
values = st.recursive(
    scalars | small_bytes,
    lambda children: st.lists(children, max_size=5)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def normalized(value: Any) -> Any:
    """What a value looks like after a trip through JSON and back."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [normalized(v) for v in value]
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    return value


@given(values)
def test_encode_is_strict_json_and_decodes_back(value: Any) -> None:
    encoded = to_json(value)
    text = json.dumps(encoded, allow_nan=False)
    assert from_json(json.loads(text)) == normalized(value)


@given(values)
def test_encoding_is_idempotent_on_decoded_values(value: Any) -> None:
    once = to_json(value)
    twice = to_json(from_json(json.loads(json.dumps(once))))
    assert twice == once


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=4096), st.integers(min_value=1, max_value=4096))
def test_blob_round_trip_at_any_threshold(data: bytes, threshold: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        encoder = Encoder("fz", threshold=threshold, directory=directory)
        encoded = encoder.encode({"payload": data})
        kind = encoded["payload"][blobs.MARKER]
        assert kind == ("blob" if len(data) >= threshold else "buffer")
        back = from_json(json.loads(json.dumps(encoded)), table=encoder.table, req_id="fz",
                         directory=directory)
        assert back["payload"] == data
        blobs.remove_request_blobs("fz", directory=directory)
