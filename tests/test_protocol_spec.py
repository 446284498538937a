"""The Node-RED package ships a byte-identical copy of the protocol spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernelexec.protocol import PROTOCOL_VERSION, load_spec, spec_text

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "kernelexec" / "protocol" / "spec.json"
COPY = ROOT / "nodered-node" / "spec.json"


def test_nodered_copy_is_byte_identical() -> None:
    if not COPY.exists():
        pytest.skip(f"{COPY} does not exist yet: the Node-RED package ships no spec copy")
    assert COPY.read_bytes() == SOURCE.read_bytes(), (
        f"{COPY} differs from {SOURCE}: copy the Python spec over the Node-RED one "
        "(spec.json is edited in kernelexec/protocol only)"
    )


def test_the_package_loads_the_file_it_ships() -> None:
    assert spec_text().encode("utf-8") == SOURCE.read_bytes()
    assert load_spec()["version"] == PROTOCOL_VERSION


def test_the_pool_states_are_the_spec_s() -> None:
    """PoolState (kernelexec.protocol) names exactly spec.json's pool_states, plus NEW (the
    Pool API's state before start, never sent); a state frame carries the plain value."""
    from kernelexec.protocol import PoolState, load_spec

    assert {state.value for state in PoolState} - {"new"} == set(load_spec()["pool_states"])
    assert json.dumps({"state": PoolState.READY}) == '{"state": "ready"}'
    assert f"{PoolState.ERROR}" == "error"


def test_the_typed_protocol_data_has_the_spec_fields() -> None:
    """The RESULT the runtime builds (kernel/results.py) is the spec's result frame without
    what the bridge adds (node_id, timing; exec_ms becomes timing.exec_ms; status_events is
    the worker's count and delivered the answer socket's mark on the result pipe, both
    dropped), and ErrorObject is the spec's error object."""
    import re

    from kernelexec.errors import ErrorObject
    from kernelexec.kernel.blobs import TABLE
    from kernelexec.kernel.results import Result

    spec = load_spec()
    frame = set(spec["server_frames"]["result"]["fields"])
    result = Result.__required_keys__ | Result.__optional_keys__
    assert result - {"exec_ms", "status_events", "delivered"} == frame - {"node_id", "timing"}
    assert TABLE in Result.__optional_keys__  # the runtime writes it by name
    error_fields = set(re.findall(r"(\w+):", spec["error_object"]))
    assert set(ErrorObject.__required_keys__) == error_fields


def test_kernel_ops_are_the_spec_ops() -> None:
    from kernelexec.protocol import KernelOp

    assert {op.value for op in KernelOp} == set(load_spec()["kernel"]["ops"])
    assert json.dumps({"op": KernelOp.RUN}) == '{"op": "run"}'
