"""The RESULT of one message, built in one place for every producer.

A RESULT (docs/internals.md, "One request per batch of messages") is what the runtime answers
for a message, what a cold child reports, what the worker makes for a message a kernel never
answered and what the bridge sends for a message no pool took (a ``result`` frame). Every one
of them is made here, so they all have the same fields; the pool then moves ``exec_ms`` into
``timing`` and adds ``node_id`` (kernelexec/pool.py). tests/test_contract_homes.py fails when
another module writes a RESULT as a dict display of its own.

Runs inside the kernel too: standard library only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ..errors import ErrorObject

if TYPE_CHECKING:
    from .convert import InputBlobs

__all__ = [
    "DoneEvent",
    "LogEvent",
    "Request",
    "Result",
    "SendEvent",
    "StatusEvent",
    "as_received",
    "done_event",
    "empty_outputs",
    "failed_result",
    "log_event",
    "make_result",
    "send_event",
    "status_event",
]


class _ResultFields(TypedDict):
    req_id: str | None
    outputs: list[list[Any]]
    logs: list[dict[str, Any]]
    status: list[Any]
    stdout: str
    error: ErrorObject | None
    done: bool
    sent: int
    exec_ms: float


class Result(_ResultFields, total=False):
    """A RESULT as the runtime answers it (spec.json ``server_frames.result``, which the
    bridge makes of it with ``node_id`` and ``timing``): one list of messages per output, the
    logs and stdout of the run, the error object or None, ``done`` false when the code calls
    node.done() itself, ``sent`` the send events before it, ``exec_ms`` the time its code ran.
    tests/test_protocol_spec.py checks these fields against the spec's."""

    #: the outputs' blob table (spec value_encoding.blob_table: blobs.TABLE); absent when empty
    blobs: list[dict[str, Any]]
    #: status events the message emitted (the worker's count, dropped before the protocol)
    status_events: int
    #: the node has it already (the answer socket: kernel/answers.py; the result pipe only)
    delivered: bool

#: slots where the kernel's Python has them (3.10+); a gateway kernel may run Python 3.9
_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(eq=False, **_SLOTS)
class Request:
    """One message being run: what its RESULT collects."""

    req_id: str | None
    ticks: int = 0
    inputs: InputBlobs = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    error: ErrorObject | None = None
    sent: int = 0
    #: status events emitted while it ran (delivered before its result, like sends)
    statuses: int = 0
    finished: bool = False
    #: Names of the blob files already handed over in send events: their reader removes them.
    handed: set[str] = field(default_factory=set)
    #: The blob table of the outputs (the result's ``blobs``).
    table: list[dict[str, Any]] = field(default_factory=list)



def empty_outputs(count: int) -> list[list[Any]]:
    """No message on any of ``count`` outputs."""
    return [[] for _ in range(count)]


def make_result(
    req_id: str | None,
    outputs: list[list[Any]],
    *,
    logs: list[dict[str, Any]] | None = None,
    stdout: str = "",
    error: ErrorObject | None = None,
    done: bool = True,
    sent: int = 0,
    exec_ms: float = 0.0,
) -> Result:
    """A RESULT: ``outputs`` one list of messages per output, ``error`` the protocol's error
    object or None, ``done`` false when the code calls node.done() itself, ``sent`` the send
    events the message emitted before it, ``exec_ms`` the time its code ran."""
    return {
        "req_id": req_id,
        "outputs": outputs,
        "logs": logs if logs is not None else [],
        "status": [],
        "stdout": stdout,
        "error": error,
        "done": done,
        "sent": sent,
        "exec_ms": round(exec_ms, 3),
    }


def failed_result(
    req_id: str | None, error: ErrorObject, *, outputs: int = 0, exec_ms: float = 0.0
) -> Result:
    """The RESULT of a message that failed with ``error`` and sent nothing."""
    return make_result(req_id, empty_outputs(outputs), error=error, exec_ms=exec_ms)


def as_received(result: Result) -> dict[str, Any]:
    """``result`` as the bridge holds a RESULT it received from a kernel: a plain JSON object,
    which the pool completes into a result frame (``node_id``, ``timing``)."""
    return dict(result)


# ------------------------------------------------------------------------------ events
# What the runtime publishes while (or after) a message runs, on the events comm: each kind
# is built here and only here (tests/test_contract_homes.py), with the fields docs/protocol.md
# gives the frames the bridge makes of them.


class LogEvent(TypedDict):
    type: Literal["log"]
    req_id: str | None
    level: str
    text: str


class DoneEvent(TypedDict):
    type: Literal["done"]
    req_id: str | None
    error: ErrorObject | None


class _StatusFields(TypedDict):
    type: Literal["status"]
    status: Any


class StatusEvent(_StatusFields, total=False):
    #: while its message runs: the worker delivers it before the result, then strips it
    req_id: str


class _SendFields(TypedDict):
    type: Literal["send"]
    req_id: str | None
    outputs: list[list[Any]]


class SendEvent(_SendFields, total=False):
    blobs: list[dict[str, Any]]  # the outputs' blob table (blobs.TABLE), when not empty



def log_event(level: str, text: str, req_id: str | None = None) -> LogEvent:
    """A log line of the node (``req_id`` None: not of a message, or of one that ended)."""
    return {"type": "log", "req_id": req_id, "level": level, "text": text}


def done_event(req_id: str | None, error: ErrorObject | None) -> DoneEvent:
    """node.done() (or node.error(..., msg)) after the message's result has left."""
    return {"type": "done", "req_id": req_id, "error": error}


def status_event(status: Any, req_id: str | None = None) -> StatusEvent:
    """node.status(); with ``req_id`` while that message runs."""
    event: StatusEvent = {"type": "status", "status": status}
    if req_id is not None:
        event["req_id"] = req_id
    return event


def send_event(
    req_id: str | None, outputs: list[list[Any]], table: list[dict[str, Any]]
) -> SendEvent:
    """node.send(): the encoded messages per output, and their blob table if any."""
    event: SendEvent = {"type": "send", "req_id": req_id, "outputs": outputs}
    if table:
        event["blobs"] = table  # blobs.TABLE (tests/test_protocol_spec.py)
    return event
