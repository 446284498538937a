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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .convert import InputBlobs

__all__ = ["Request", "empty_outputs", "failed_result", "make_result"]

#: slots where the kernel's Python has them (3.10+); a gateway kernel may run Python 3.9
_SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(eq=False, **_SLOTS)
class Request:
    """One message being run: what its RESULT collects."""

    req_id: str | None
    ticks: int = 0
    inputs: InputBlobs = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
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
    error: dict[str, Any] | None = None,
    done: bool = True,
    sent: int = 0,
    exec_ms: float = 0.0,
) -> dict[str, Any]:
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
    req_id: str | None, error: dict[str, Any], *, outputs: int = 0, exec_ms: float = 0.0
) -> dict[str, Any]:
    """The RESULT of a message that failed with ``error`` and sent nothing."""
    return make_result(req_id, empty_outputs(outputs), error=error, exec_ms=exec_ms)
