"""Blobs across machines: blob tables travel between bridge and gateway kernel as buffers.

A blob table entry ``{name, size}`` names a file on the machine that wrote it, so entries
never cross the WebSocket; the message bodies (whose blob markers are indexes into the table)
cross unchanged. Going in, the handle reads the file of each entry of each batch item's table
(checked as every blob read, :func:`kernelexec.kernel.blobs.read_blob`) and sends its bytes as a
buffer of the execute_request, the entry becoming ``{"gw": BUFFER_INDEX, "size"}``; the
kernel side (``before()``, an IPython pre_execute hook, see :mod:`.kernel_side`) writes each
buffer to a blob file of the kernel's machine and restores ``{name, size}``, which the runtime
reads as usual (``after()``, the post_execute hook, removes them). Coming out, ``after()`` and
the event wrapper read the files of the results' and events' tables, remove them, and send
their bytes as comm_msg buffers with "gw" entries; the handle writes them to blob files of
this machine, named for the request. Tables are only looked for where the protocol puts them
(:func:`kernelexec.kernel.blobs.holders`), never inside a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...protocol import KernelOp

__all__ = ["BLOBS_COMM_ID", "GW", "blobs_to_buffers", "buffers_to_blobs", "has_gw_refs"]

#: comm_msg of the kernel side carrying the output blobs of one execute_request
BLOBS_COMM_ID = "kernelexec-gw-blobs"
#: the key of a table entry whose bytes travel as buffer N
GW = "gw"


def _tables(value: Any) -> Iterator[tuple[dict[str, Any], str | None]]:
    """The blob-table holders of an envelope, or of each ``data`` of a reply's payload list."""
    from ...kernel import blobs

    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield from blobs.holders(item.get("data"))
        return
    yield from blobs.holders(value)


def blobs_to_buffers(extra: dict[str, Any], buffers: list[bytes]) -> tuple[Any, bool]:
    """``extra`` (not modified) with its tables' entries turned into "gw" entries of buffers
    appended to ``buffers``; and whether there was any."""
    from ...kernel import blobs

    found = False
    new = dict(extra)
    if isinstance(extra.get("batch"), list):
        new["batch"] = [dict(item) if isinstance(item, dict) else item for item in extra["batch"]]
    for holder, req_id in list(_tables(new)):
        entries = []
        for entry in holder[blobs.TABLE]:
            try:
                data = blobs.read_blob(entry, req_id)
            except (OSError, ValueError):
                entries.append(entry)  # the runtime reports the unreadable blob for this message
                continue
            found = True
            buffers.append(data)
            entries.append({GW: len(buffers) - 1, blobs.SIZE: len(data)})
        holder[blobs.TABLE] = entries
    if new.get("op") == KernelOp.INIT and isinstance(new.get("node"), dict):
        new = {**new, "node": {**new["node"], "blob_dir": None}}  # the kernel's own
    return new, found


def has_gw_refs(value: Any) -> bool:
    from ...kernel import blobs

    return any(
        isinstance(entry, dict) and GW in entry
        for holder, _req in _tables(value)
        for entry in holder[blobs.TABLE]
    )


def buffers_to_blobs(value: Any, buffers: list[bytes]) -> None:
    """Replace "gw" entries in place by entries of new local blob files holding the buffers."""
    from ...kernel import blobs

    for holder, req_id in list(_tables(value)):
        holder[blobs.TABLE] = [
            blobs.write_blob(buffers[int(entry[GW])], req_id)
            if isinstance(entry, dict) and GW in entry else entry
            for entry in holder[blobs.TABLE]
        ]
