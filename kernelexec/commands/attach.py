"""``kernelexec attach NODE_ID``: the connection file of one of a node's hot kernels.

Asks a running bridge (WebSocket ``list_kernels`` frame, see spec.json) and prints the path
of the kernel's connection file, so that::

    jupyter console --existing "$(kernelexec attach NODE_ID --url URL)"

opens a console on the live kernel: the node's setup state is there to inspect. The path is
on the bridge's machine; attach from that machine. Cold pools have no attachable kernel.
The bridge's URL and token come from ``--url``/``--token`` or ``KERNELEXEC_URL``/
``KERNELEXEC_TOKEN`` (``kernelexec serve`` prints both when it starts). Without a URL, the
bridges that published a runtime file are asked in turn: ``kernelexec-bridge-PID.json``
holding ``{"url", "token", "pid"}`` in ``KERNELEXEC_RUNTIME_DIR`` (default: Jupyter's
runtime directory), readable by its owner only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import KernelexecError
from ..kernel.blobs import pid_alive
from ..protocol import PROTOCOL_VERSION

__all__ = [
    "AttachError",
    "discover_bridges",
    "list_kernels",
    "register",
    "run",
    "runtime_dir",
    "websocket_url",
]

TIMEOUT = 10.0


class AttachError(KernelexecError):
    """The bridge could not be asked, or has no attachable kernel for the node."""

    code = "BRIDGE_FAILED"


def websocket_url(url: str) -> str:
    """``http://host:port`` (or ws://, with or without /ws) -> ``ws://host:port/ws``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    return urlunsplit(
        (scheme, parts.netloc, path if path.endswith("/ws") else f"{path}/ws", "", "")
    )


async def _read(conn: Any, wanted: str) -> dict[str, Any]:
    """The next frame of type ``wanted`` (others, e.g. pool_state, are skipped)."""
    while True:
        text = await conn.read_message()
        if text is None:
            reason = conn.close_reason or f"code {conn.close_code}"
            msg = f"the bridge closed the connection ({reason})"
            raise AttachError(msg)
        data = json.loads(text)
        for frame in data if isinstance(data, list) else [data]:  # 1.1: arrays of frames
            if frame.get("type") == "error":
                error = frame.get("error") or {}
                msg = f"the bridge refused: {error.get('code')}: {error.get('message')}"
                raise AttachError(msg)
            if frame.get("type") == wanted:
                return dict(frame)


async def _ask(url: str, token: str | None, node_id: str | None) -> list[dict[str, Any]]:
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Authorization": f"token {token}"} if token else {}
    request = HTTPRequest(websocket_url(url), headers=headers, connect_timeout=TIMEOUT)
    try:
        conn = await websocket_connect(request)
    except HTTPClientError as exc:
        hint = " (check --token / KERNELEXEC_TOKEN)" if exc.code in (401, 403) else ""
        msg = f"cannot connect to the bridge at {url}: {exc}{hint}"
        raise AttachError(msg) from None
    except OSError as exc:
        msg = f"cannot connect to the bridge at {url}: {exc.strerror or exc}"
        raise AttachError(msg) from None
    try:
        hello = {
            "type": "hello",
            "protocol_version": PROTOCOL_VERSION,
            "client": "kernelexec-attach",
        }
        await conn.write_message(json.dumps(hello))
        await _read(conn, "welcome")
        await conn.write_message(json.dumps({"type": "list_kernels", "node_id": node_id}))
        kernels: list[dict[str, Any]] = (await _read(conn, "kernels"))["kernels"]
        return kernels
    finally:
        conn.close()
        with contextlib.suppress(Exception):  # wait for the closing handshake: no socket left
            await asyncio.wait_for(_drained(conn), 2.0)


async def _drained(conn: Any) -> None:
    while await conn.read_message() is not None:
        pass


async def list_kernels(
    url: str, token: str | None, node_id: str | None = None, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """The bridge's attachable kernels: ``{node_id, worker, pid, connection_file}`` each."""
    try:
        return await asyncio.wait_for(_ask(url, token, node_id), timeout)
    except asyncio.TimeoutError:
        msg = f"the bridge at {url} did not answer within {timeout:g} s"
        raise AttachError(msg) from None


def choose(kernels: list[dict[str, Any]], node_id: str, worker: int | None) -> dict[str, Any]:
    """The kernel to attach to: the given worker, else the first one."""
    usable = [k for k in kernels if k.get("node_id") == node_id and k.get("connection_file")]
    if worker is not None:
        usable = [k for k in usable if k.get("worker") == worker]
    if usable:
        return usable[0]
    which = f"worker {worker} of node" if worker is not None else "node"
    msg = (
        f"{which} {node_id!r} has no attachable kernel on the bridge: is the node deployed, "
        "in hot mode, with its kernels ready? (kernelexec attach --list shows all)"
    )
    raise AttachError(msg)


def runtime_dir() -> str:
    """Where bridges publish ``kernelexec-bridge-PID.json`` files."""
    configured = os.environ.get("KERNELEXEC_RUNTIME_DIR")
    if configured:
        return configured
    from jupyter_core.paths import jupyter_runtime_dir

    return str(jupyter_runtime_dir())


def _alive(pid: Any) -> bool:
    return isinstance(pid, int) and pid > 0 and pid_alive(pid)


def discover_bridges() -> list[dict[str, Any]]:
    """The ``{"url", "token", "pid"}`` of every running bridge with a runtime file, newest first."""
    directory = runtime_dir()
    try:
        names = [n for n in os.listdir(directory) if n.startswith("kernelexec-bridge-")]
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as handle:
                info = json.load(handle)
            mtime = os.path.getmtime(path)
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and isinstance(info.get("url"), str) and _alive(info.get("pid")):
            found.append((mtime, info))
    return [info for _, info in sorted(found, key=lambda item: -item[0])]


async def _find(node_id: str | None) -> list[dict[str, Any]]:
    """Kernels of ``node_id`` (all nodes: None) on the first discovered bridge that has any."""
    bridges = discover_bridges()
    if not bridges:
        msg = (
            f"no bridge URL: give --url (or KERNELEXEC_URL); no bridge published a runtime "
            f"file in {runtime_dir()}"
        )
        raise AttachError(msg)
    kernels: list[dict[str, Any]] = []
    for bridge in bridges:
        with contextlib.suppress(AttachError):
            kernels += await list_kernels(bridge["url"], bridge.get("token"), node_id)
        if kernels and node_id is not None:
            break
    return kernels


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``attach`` command to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "attach",
        help="print the connection file of a node's hot kernel (for jupyter console --existing)",
        description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("node_id", nargs="?", help="the Node-RED node id")
    parser.add_argument("--url", default=os.environ.get("KERNELEXEC_URL"), help="bridge URL")
    parser.add_argument("--token", default=None, help="bridge token (or KERNELEXEC_TOKEN)")
    parser.add_argument("--worker", type=int, default=None, help="worker index (default: first)")
    parser.add_argument("--list", action="store_true", help="print every attachable kernel (JSON)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kernelexec attach``; 1 with a message on stderr when nothing can be attached."""
    token = args.token or os.environ.get("KERNELEXEC_TOKEN")
    if args.node_id is None and not args.list:
        print("kernelexec attach: give NODE_ID (or --list)", file=sys.stderr)
        return 2
    try:
        if args.url:
            kernels = asyncio.run(list_kernels(args.url, token, args.node_id))
        else:
            kernels = asyncio.run(_find(args.node_id))
        if args.list:
            print(json.dumps(kernels, indent=2))
            return 0
        kernel = choose(kernels, args.node_id, args.worker)
    except AttachError as exc:
        print(f"kernelexec attach: {exc}", file=sys.stderr)
        return 1
    print(kernel["connection_file"])
    print(f"jupyter console --existing {kernel['connection_file']}", file=sys.stderr)
    return 0
