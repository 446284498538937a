"""Blobs across machines: blob refs travel between bridge and gateway kernel as buffers.

A blob ref ``{"$kx": "blob", "path", "size"}`` names a file on the machine that wrote it, so
refs never cross the WebSocket. Going in, the handle reads each referenced file and sends its
bytes as a buffer of the execute_request, the ref becoming ``{"$kx": "blob", "gw": INDEX,
"size", "req": REQ_ID}``; the kernel side (``before()``, an IPython pre_execute hook, see
:mod:`.kernel_side`) writes the buffer to a blob file of the kernel's machine and restores a
path ref, which the runtime reads as usual (and ``after()``, the post_execute hook, removes).
Coming out, ``after()`` and the event wrapper read the kernel's output blob files, remove
them, and send their bytes as comm_msg buffers with "gw" refs; the handle writes them to blob
files of this machine (named for the request, owned by the reader as usual). The runtime is
unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BLOBS_COMM_ID", "blobs_to_buffers", "buffers_to_blobs", "has_gw_refs"]

#: comm_msg of the kernel side carrying the output blobs of one execute_request
BLOBS_COMM_ID = "kernelexec-gw-blobs"


def _walk_refs(value: Any, fix: Any, req_id: str | None = None) -> Any:
    """``value`` with blob refs replaced by ``fix(ref, req_id)``; copies only what changes."""
    if isinstance(value, dict):
        if value.get("$kx") == "blob":
            return fix(value, req_id)
        rid = value.get("req_id")
        rid = rid if isinstance(rid, str) else req_id
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            new = _walk_refs(item, fix, rid)
            if new is not item:
                changed = changed if changed is not None else dict(value)
                changed[key] = new
        return changed if changed is not None else value
    if isinstance(value, list):
        out: list[Any] | None = None
        for index, item in enumerate(value):
            new = _walk_refs(item, fix, req_id)
            if new is not item:
                out = out if out is not None else list(value)
                out[index] = new
        return out if out is not None else value
    return value


def blobs_to_buffers(extra: dict[str, Any], buffers: list[bytes]) -> tuple[Any, bool]:
    """``extra`` with path refs turned into "gw" refs to buffers appended to ``buffers``;
    and whether there was any."""
    from ... import blobs

    found = False

    def fix(ref: dict[str, Any], req_id: str | None) -> dict[str, Any]:
        nonlocal found
        if "path" not in ref:
            return ref
        try:
            data = blobs.read_blob(ref)
        except (OSError, ValueError):
            return ref  # the runtime reports the unreadable blob for this message
        found = True
        buffers.append(data)
        return {
            "$kx": "blob",
            "gw": len(buffers) - 1,
            "size": len(data),
            "req": blobs.safe_req_id(req_id),
        }

    new = _walk_refs(extra, fix)
    if isinstance(new, dict) and new.get("op") == "init" and isinstance(new.get("node"), dict):
        new = {**new, "node": {**new["node"], "blob_dir": None}}  # the kernel's own
    return new, found


def has_gw_refs(value: Any) -> bool:
    if isinstance(value, dict):
        if value.get("$kx") == "blob":
            return "gw" in value
        return any(has_gw_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(has_gw_refs(v) for v in value)
    return False


def buffers_to_blobs(value: Any, buffers: list[bytes]) -> None:
    """Replace "gw" refs in place by refs to new local blob files holding the buffers."""
    from ... import blobs

    if isinstance(value, dict):
        if value.get("$kx") == "blob" and "gw" in value:
            ref = blobs.write_blob(buffers[int(value["gw"])], str(value.get("req") or "_"))
            value.clear()
            value.update(ref)
            return
        for item in value.values():
            buffers_to_blobs(item, buffers)
    elif isinstance(value, list):
        for item in value:
            buffers_to_blobs(item, buffers)
