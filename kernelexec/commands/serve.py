"""``kernelexec serve``: run the bridge a Node-RED runtime talks to.

When it listens, it prints exactly one JSON line on stdout::

    {"event": "ready", "url": "http://127.0.0.1:PORT", "port": PORT, "pid": PID, "token": ...}

``token`` is the generated token when none was given (the process that reads stdout needs it
to connect; it is also shown once on stderr for a person), and null when the token came from
``--token`` or ``KERNELEXEC_TOKEN``: the caller knows it, and a secret is never echoed. The
Node-RED node starts ``kernelexec serve --watch-stdin`` with ``KERNELEXEC_TOKEN`` set, keeps
the stdin pipe open, and the bridge shuts down cleanly when that pipe closes, even when
Node-RED was killed with SIGKILL.

While it runs, the bridge publishes ``kernelexec-bridge-PID.json`` (``{"url", "token",
"pid"}``, mode 0600) in the runtime directory (``KERNELEXEC_RUNTIME_DIR``, default Jupyter's),
so that ``kernelexec attach`` finds a bridge whose token only Node-RED knows; the file is
removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..kernel.blobs import pid_alive

__all__ = ["main", "publish_runtime_file", "register", "run"]

log = logging.getLogger("kernelexec.serve")

Stop = Callable[[str], None]

_DESCRIPTION = """\
Run the bridge a Node-RED runtime talks to (WebSocket /ws, docs/protocol.md).

When it listens, it prints one JSON line on stdout:
  {"event": "ready", "url": ..., "port": ..., "pid": ..., "token": ...}
("token" is null unless the bridge generated it). SIGTERM, SIGINT, SIGHUP, end of stdin
(--watch-stdin) or the parent's death (--parent-pid) shut it down cleanly: messages
in flight fail with POOL_CLOSED, every kernel stops, the exit status is 0."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the bridge a Node-RED runtime talks to (WebSocket)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--host",
        default=env("KERNELEXEC_HOST", "127.0.0.1"),
        help="address to listen on (KERNELEXEC_HOST env var; default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=env("KERNELEXEC_PORT", "0"),
        help="port (KERNELEXEC_PORT env var; default 0 = a free port)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="the token clients must send (better: KERNELEXEC_TOKEN env var, "
        "invisible to ps); default: a random token, printed once",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow --host to be a non-loopback address (anyone with the token "
        "can run code as this user)",
    )
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="shut down when stdin reaches end of file (the parent died)",
    )
    parser.add_argument(
        "--node-fd",
        type=int,
        default=None,
        metavar="FD",
        help="also serve the protocol on this inherited Unix socket (the Node-RED node that "
        "started the bridge; no token: the socket is the credential; kernelexec/server/pipe.py)",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="shut down when this process is gone (polled every second)",
    )
    parser.add_argument(
        "--gateway-url",
        default=os.environ.get("KERNELEXEC_GATEWAY_URL"),
        help="run the kernels of nodes without a gateway of their own on this Jupyter Kernel/"
        "Enterprise Gateway (env KERNELEXEC_GATEWAY_URL); see docs/scale-out.md",
    )
    parser.add_argument(
        "--gateway-token",
        default=os.environ.get("KERNELEXEC_GATEWAY_TOKEN"),
        help="the gateway's token (env KERNELEXEC_GATEWAY_TOKEN; never logged)",
    )
    parser.add_argument(
        "--gateway-bootstrap-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a gateway kernel may take to answer kernelexec's bootstrap (default 60; "
        "env KERNELEXEC_GATEWAY_BOOTSTRAP_TIMEOUT)",
    )
    parser.add_argument(
        "--context-timeout",
        type=float,
        default=30.0,
        help="seconds a context request waits for Node-RED (default 30)",
    )


def _gateway_url(args: argparse.Namespace) -> str | None:
    timeout = getattr(args, "gateway_bootstrap_timeout", None)
    if not args.gateway_url or timeout is None:
        return args.gateway_url  # type: ignore[no-any-return]
    from ..handles.gateway.settings import with_options

    return with_options(args.gateway_url, bootstrap_timeout=timeout)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Run the bridge until a signal or the parent's death; 0 after a clean shutdown."""
    level = str(getattr(args, "log_level", None) or "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not is_loopback(args.host):
        if not args.allow_remote:
            print(f"kernelexec serve: refusing to listen on {args.host!r}, which is not a loopback "
                  "address: anyone who reaches it with the token can run code as this user. "
                  "Add --allow-remote if that is what you want.", file=sys.stderr)  # fmt: skip
            return 2
        log.warning("Listening on %s, reachable from other machines: protect the token", args.host)
    token = args.token or os.environ.get("KERNELEXEC_TOKEN") or None
    from ..handles import template  # light: the standard library only
    from ..handles.environment import kernel_environment

    template.spawn_early(kernel_environment())  # its imports run while the bridge imports
    try:
        return asyncio.run(_serve(args, token))
    finally:
        template.discard_early()  # not adopted: the bridge stopped before it could use it


async def _serve(args: argparse.Namespace, given_token: str | None) -> int:
    from ..server import Bridge, BridgeOptions, Server

    token = given_token or secrets.token_urlsafe(32)
    options = BridgeOptions(
        context_timeout=args.context_timeout,
        gateway_url=_gateway_url(args),
        gateway_token=args.gateway_token,
    )
    bridge = Bridge(options=options)
    server = Server(token=token, host=args.host, port=args.port, bridge=bridge)
    try:
        await server.start()
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        print(f"kernelexec serve: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    node_connection = None
    if getattr(args, "node_fd", None) is not None:
        from ..server.pipe import serve_inherited_socket

        try:
            node_connection = await serve_inherited_socket(bridge, args.node_fd)
        except (OSError, ValueError) as exc:
            print(f"kernelexec serve: --node-fd {args.node_fd}: {exc}", file=sys.stderr)
            await server.stop("the node's socket is unusable")
            return 1
    _start_kernel_template()
    stopped = asyncio.Event()
    reasons: list[str] = []

    def stop(reason: str) -> None:
        if reasons:
            log.info("Already stopping (%s); ignoring: %s", reasons[0], reason)
            return
        reasons.append(reason)
        stopped.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop, f"received {signal.Signals(sig).name}")
    watchers = _start_watchers(args, loop, stop)
    published = publish_runtime_file(server.url, token)
    try:
        _announce(server, None if given_token else token)
        await stopped.wait()
        await server.stop(reasons[0])
        if node_connection is not None:
            node_connection.close()
    finally:
        _stop_kernel_template()
        for watcher in watchers:
            watcher.cancel()
        if published is not None:
            with contextlib.suppress(OSError):
                os.unlink(published)
    return 0


def _start_kernel_template() -> None:
    """Kernels of the bridge's own interpreter fork from a template (handles/forking.py):
    started now, while the node connects, so the first pool finds it ready."""
    from ..handles import forking
    from ..handles.local import kernel_environment

    try:
        forking.start_template(kernel_environment())
    except OSError as exc:
        log.warning("No kernel template (%s): kernels are launched one by one", exc)


def _stop_kernel_template() -> None:
    from ..handles import forking

    forking.stop_template()


def publish_runtime_file(url: str, token: str) -> str | None:
    """Write ``kernelexec-bridge-PID.json`` (url, token, pid; owner-only) where
    ``kernelexec attach`` looks for bridges; None when the directory is not writable."""
    from .attach import runtime_dir

    directory = runtime_dir()
    path = os.path.join(directory, f"kernelexec-bridge-{os.getpid()}.json")
    data = json.dumps({"url": url, "token": token, "pid": os.getpid()}).encode()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _sweep_dead_bridge_files(directory)
        temporary = f"{path}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("Could not publish the bridge for kernelexec attach in %s: %s", directory, exc)
        return None
    return path


def _sweep_dead_bridge_files(directory: str) -> None:
    """Remove the runtime files of bridges that died without removing theirs (kill -9):
    they would pile up, each holding a (dead) token."""
    prefix, suffix = "kernelexec-bridge-", ".json"
    for name in os.listdir(directory):
        pid = name[len(prefix) : -len(suffix)]
        ours = name.startswith(prefix) and name.endswith(suffix) and pid.isdigit()
        if ours and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _announce(server: Any, generated_token: str | None) -> None:
    if generated_token is not None:
        print(f"kernelexec serve: token {generated_token}", file=sys.stderr, flush=True)
    ready = {
        "event": "ready",
        "url": server.url,
        "port": server.port,
        "pid": os.getpid(),
        "token": generated_token,
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()


def _start_watchers(
    args: argparse.Namespace, loop: asyncio.AbstractEventLoop, stop: Stop
) -> list[asyncio.Task[None]]:
    if args.watch_stdin:
        threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True,
                         name="kernelexec-stdin-watch").start()  # fmt: skip
    if args.parent_pid is not None:
        return [asyncio.ensure_future(_watch_parent(args.parent_pid, stop))]
    return []


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: Stop) -> None:
    """Read stdin until end of file (the parent closed its end or died)."""
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass
    with contextlib.suppress(RuntimeError):  # the loop is already closed
        loop.call_soon_threadsafe(stop, "stdin closed: the parent process is gone")


async def _watch_parent(pid: int, stop: Stop, interval: float = 1.0) -> None:
    was_parent = pid == os.getppid()
    while True:
        await asyncio.sleep(interval)
        if not pid_alive(pid) or (was_parent and os.getppid() != pid):
            stop(f"parent process {pid} is gone")
            return


def main(argv: list[str] | None = None) -> int:
    """``python -m kernelexec.commands.serve``: the serve command alone."""
    parser = argparse.ArgumentParser(prog="kernelexec serve")
    add_arguments(parser)
    parser.add_argument("--log-level", default="info", help="log level on stderr")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
