"""The bridge protocol, loaded from the one spec file that both languages share.

``spec.json`` is the only source of frame types, fields, error codes and the
protocol version; the Node-RED package ships a byte-identical copy (a test on each
side fails when they differ).
"""

from __future__ import annotations

import enum
import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "BATCH_VERSION",
    "BLOB_PREFIX",
    "BLOB_TABLE",
    "BLOB_THRESHOLD",
    "ERROR_CODES",
    "EVENTS_COMM",
    "KERNEL_REPLY_TYPE",
    "KERNEL_REQUEST_TYPE",
    "MARKER",
    "PROTOCOL_VERSION",
    "RUNTIME_NAME",
    "ContextOp",
    "KernelOp",
    "PoolState",
    "SpecName",
    "load_spec",
    "spec_text",
]


def spec_text() -> str:
    """The spec file's text, exactly as shipped."""
    return resources.files(__package__).joinpath("spec.json").read_text(encoding="utf-8")


@cache
def load_spec() -> dict[str, Any]:
    """The parsed spec (cached: it never changes while the process runs)."""
    spec: dict[str, Any] = json.loads(spec_text())
    return spec


_SPEC = load_spec()
PROTOCOL_VERSION: str = _SPEC["version"]
ERROR_CODES: frozenset[str] = frozenset(_SPEC["error_codes"])
MARKER: str = _SPEC["value_encoding"]["marker_key"]
BLOB_THRESHOLD: int = _SPEC["value_encoding"]["blob_threshold_bytes"]
BLOB_PREFIX: str = _SPEC["value_encoding"]["blob_prefix"]
#: the frame field that carries a message's blob table (value_encoding.blob_table)
BLOB_TABLE: str = _SPEC["value_encoding"]["blob_table"]["field"]
#: since this version a WebSocket message may carry an array of frames ("transport")
BATCH_VERSION: tuple[int, int] = (
    int(_SPEC["batch_version"].split(".")[0]), int(_SPEC["batch_version"].split(".")[1])
)
_KERNEL = _SPEC["kernel"]
#: the shell message of one runtime op, and its reply (spec "kernel")
KERNEL_REQUEST_TYPE: str = _KERNEL["request_type"]
KERNEL_REPLY_TYPE: str = _KERNEL["reply_type"]
#: the comm that carries runtime events on IOPub
EVENTS_COMM: str = _KERNEL["events_comm"]
#: the runtime object's name in the kernel's user namespace
RUNTIME_NAME: str = _KERNEL["runtime_name"]


class SpecName(str, enum.Enum):
    """A name spec.json defines: a str, so it goes into frames and requests as its value,
    compares equal to it and prints as it (f-strings included, on every Python)."""

    def __str__(self) -> str:
        return str(self.value)


class KernelOp(SpecName):
    """The runtime's ops (spec.json ``kernel.ops``; tests/test_protocol_spec.py holds them
    equal): what the worker asks of a kernel, what the runtime dispatches. A str, so it goes
    into the request as its value."""

    INIT = "init"
    SETUP = "setup"
    CODE = "code"
    RUN = "run"
    STOP = "stop"
    PREFORK = "prefork"


class ContextOp(SpecName):
    """What a context request asks Node-RED (spec.json ``context_ops``; the node API builds
    them, the bridge relays them, MemoryContext/MemoryHooks answer them without Node-RED)."""

    GET = "get"
    SET = "set"
    KEYS = "keys"
    ENV = "env"
    LINKCALL = "linkcall"


class PoolState(SpecName):
    """A pool's state: the values of spec.json ``pool_states`` (tests/test_protocol_spec.py
    holds them equal), plus NEW, the Pool API's state before ``start()``, never sent. A str, so
    it goes into frames and compares as its value."""

    NEW = "new"
    STARTING = "starting"
    INSTALLING = "installing"
    READY = "ready"
    ERROR = "error"
    CLOSED = "closed"
