"""Editor help from a node's kernels: the ``inspect`` frame (Jupyter completion and hover).

The Node-RED editor configures a throwaway pool with the node's setup (nodered-node/lib/
editor_api.js) and asks its kernel, as a notebook asks its own: ``complete_request`` for the
names after the cursor, ``inspect_request`` for the help under it. The answer is the kernel's
reply content, unchanged, in an ``inspect_reply`` frame.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import KernelexecError
from .frames import FrameError, describe, error_object
from .registry import PoolEntry

__all__ = ["INSPECT_TIMEOUT", "inspect"]

#: Seconds a kernel gets to answer a completion or hover request.
INSPECT_TIMEOUT = 10.0
_OPS = {"complete": "complete_request", "inspect": "inspect_request"}


def _content(frame: dict[str, Any]) -> dict[str, Any]:
    op, code, cursor = frame["op"], frame["code"], frame["cursor_pos"]
    if op not in _OPS:
        msg = f"inspect: op {describe(op)} is neither 'complete' nor 'inspect'"
        raise FrameError(msg, req_id=frame["req_id"], node_id=frame["node_id"])
    if not 0 <= cursor <= len(code):
        msg = f"inspect: cursor_pos {cursor} is outside the code (0 to {len(code)})"
        raise FrameError(msg, req_id=frame["req_id"], node_id=frame["node_id"])
    content: dict[str, Any] = {"code": code, "cursor_pos": cursor}
    if op == "inspect":
        content["detail_level"] = 0
    return content


async def inspect(entry: PoolEntry, frame: dict[str, Any]) -> dict[str, Any]:
    """The ``inspect_reply`` frame answering ``frame`` (never raises but FrameError first)."""
    content = _content(frame)
    answer: dict[str, Any] = {
        "type": "inspect_reply",
        "node_id": entry.node_id,
        "req_id": frame["req_id"],
        "reply": None,
        "error": None,
    }
    pool = entry.pool
    try:
        if pool is None or entry.state != "ready":
            msg = f"node {entry.node_id} has no ready kernel (state {entry.state}); try again"
            raise KernelexecError(msg)
        request = pool.ask_kernel(_OPS[frame["op"]], content)
        answer["reply"] = await asyncio.wait_for(request, INSPECT_TIMEOUT)
    except asyncio.TimeoutError:
        text = f"the kernel did not answer {frame['op']} within {INSPECT_TIMEOUT:g} s"
        answer["error"] = error_object("TIMEOUT", text)
    except KernelexecError as exc:
        answer["error"] = exc.to_dict()
    except NotImplementedError as exc:
        answer["error"] = error_object("INTERNAL", str(exc))
    return answer
