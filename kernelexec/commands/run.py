"""``kernelexec run``: node code on one message, the result as one JSON object.

    kernelexec run (-c CODE | --code FILE) [--setup FILE] [--stop FILE]
                   [--msg JSON | --msg-file FILE] [--mode hot|cold] [--timeout S] [--outputs N]

prints ``{"outputs": [[msg, ...], ...], "logs": [...], "status": [...], "stdout": "...",
"error": null | {"type", "message", "traceback", ...}}``. Messages sent with node.send() come
first on their outputs, then what the code returned. Values are printed in their wire form
(spec.json ``value_encoding``): Buffers as buffer markers (base64), a user object that has
the marker key of its own as an escaped object. ``--code FILE`` takes a plain file of
message code, a node script with ``# %% setup / node / stop / sample`` sections or a
notebook with tagged cells (docs/notebooks.md); ``--setup``, ``--stop`` and ``--msg`` win
over its sections.
Exit code 0 without error, 1 on an error, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from typing import Any

from ..config import PoolConfig
from ..errors import ConfigError
from ..kernel import blobs
from ..notebook import NodeCode, load_node_code
from ..pool import MemoryHooks, make_pool

__all__ = ["register", "run"]

#: the req_id of the one message (its output blob files are named for it)
RUN_ID = "run-1"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run node code on one message and print the result")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", dest="code_text", metavar="CODE", help="the node code")
    source.add_argument(
        "--code",
        dest="code_file",
        metavar="FILE",
        help="node code file: a notebook or node script (its setup, stop and sample are used)",
    )
    parser.add_argument("--setup", metavar="FILE", help="file with setup code")
    parser.add_argument("--stop", metavar="FILE", help="file with stop code")
    message = parser.add_mutually_exclusive_group()
    message.add_argument("--msg", metavar="JSON", help='the message (default {"payload": null})')
    message.add_argument("--msg-file", metavar="FILE", help="file with the message as JSON")
    parser.add_argument("--mode", choices=("hot", "cold"), default="hot")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds, 0 = no limit")
    parser.add_argument("--outputs", type=int, default=1)
    parser.add_argument("--gateway-url", help="run the kernel on this Jupyter Kernel Gateway")
    parser.add_argument("--gateway-token", default=os.environ.get("KERNELEXEC_GATEWAY_TOKEN"))
    parser.add_argument(
        "--gateway-bootstrap-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a gateway kernel may take to answer kernelexec's bootstrap (default 60; "
        "env KERNELEXEC_GATEWAY_BOOTSTRAP_TIMEOUT)",
    )
    parser.set_defaults(func=run)


def _read(path: str | None) -> str:
    if not path:
        return ""
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _message(args: argparse.Namespace, sample: dict[str, Any] | None) -> dict[str, Any]:
    if args.msg is None and not args.msg_file and sample is not None:
        return sample
    text = args.msg if args.msg is not None else _read(args.msg_file) or '{"payload": null}'
    try:
        msg = json.loads(text)
    except ValueError as exc:
        error = f"--msg: not valid JSON ({exc}); pass an object such as '{{\"payload\": 1}}'"
        raise ConfigError(error) from None
    if not isinstance(msg, dict):
        error = f"--msg: {text[:60]!r} is not a JSON object; pass e.g. '{{\"payload\": 1}}'"
        raise ConfigError(error)
    return msg


def _node_code(args: argparse.Namespace) -> NodeCode:
    """-c CODE, or --code FILE: a notebook or node script (its setup, stop and sample count)."""
    if args.code_text is not None:
        return NodeCode(code=args.code_text)
    return load_node_code(args.code_file)


def _config(args: argparse.Namespace, node: NodeCode) -> PoolConfig:
    env = {}
    if args.gateway_url:
        from ..handles.gateway.settings import with_options

        url = with_options(args.gateway_url, bootstrap_timeout=args.gateway_bootstrap_timeout)
        env = {"gateway_url": url, "gateway_token": args.gateway_token}
    fields = {
        "code": node.code,
        "setup": _read(args.setup) if args.setup else node.setup,
        "stop": _read(args.stop) if args.stop else node.stop,
        "mode": args.mode,
        "timeout": args.timeout,
        "outputs": args.outputs,
        "env": env,
    }
    return PoolConfig.from_dict("cli", fields)


def _inline_blobs(messages: Any, table: Any, req_id: str | None) -> Any:
    """Blob markers become inline buffers, read from the frame's own table (and the files are
    removed): the output is self-contained. Nothing a message names is opened."""

    def inline(index: Any) -> dict[str, Any]:
        if type(index) is not int or not 0 <= index < len(entries):
            message = f"blob reference {index!r} is not an index into the output's blob table"
            raise blobs.BlobError(message)
        data = blobs.read_blob(entries[index], req_id)
        return blobs.buffer_ref(base64.b64encode(data).decode("ascii"))

    entries = table if isinstance(table, list) else []
    try:
        return blobs.map_refs(messages, inline)
    finally:
        blobs.remove_table(entries, req_id)


def _merge(result: dict[str, Any], hooks: MemoryHooks, outputs: int) -> dict[str, Any]:
    ports: list[list[Any]] = [[] for _ in range(max(outputs, len(result.get("outputs") or [])))]
    logs = list(result.get("logs") or [])
    status = list(result.get("status") or [])
    for _node, event in hooks.events:
        if event.get("type") == "send":
            req_id = event.get("req_id") if isinstance(event.get("req_id"), str) else None
            sent = _inline_blobs(event.get("outputs") or [], event.get(blobs.TABLE), req_id)
            for index, messages in enumerate(sent):
                ports[index].extend(messages or [])
        elif event.get("type") == "log":
            logs.append({"level": event.get("level"), "text": event.get("text")})
        elif event.get("type") == "status":
            status.append(event.get("status"))
    returned = _inline_blobs(result.get("outputs") or [], result.get(blobs.TABLE), RUN_ID)
    for index, messages in enumerate(returned):
        ports[index].extend(messages or [])
    return {
        "outputs": ports,
        "logs": logs,
        "status": status,
        "stdout": result.get("stdout", ""),
        "error": result.get("error"),
    }


async def _run_once(config: PoolConfig, msg: dict[str, Any]) -> dict[str, Any]:
    hooks = MemoryHooks()
    pool = make_pool(config, hooks)
    try:
        try:
            await pool.start()
        except Exception as exc:
            error = getattr(exc, "to_dict", None)
            return _merge({"error": error() if error else {"message": str(exc)}}, hooks, 0)
        result = await pool.submit(RUN_ID, msg)
    finally:
        await pool.close()
    return _merge(result, hooks, config.outputs)


def run(args: argparse.Namespace) -> int:
    try:
        node = _node_code(args)
        config = _config(args, node)
        msg = _message(args, node.sample)
    except (ConfigError, OSError) as exc:
        print(f"kernelexec run: {exc}", file=sys.stderr)
        return 2
    output = asyncio.run(_run_once(config, msg))
    print(json.dumps(output, ensure_ascii=False))
    return 1 if output["error"] else 0
