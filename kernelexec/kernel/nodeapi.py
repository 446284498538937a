"""What user code sees: ``node``, ``context``/``flow``/``global_``, ``env`` and the
script-style helpers, plus the channels their calls go out through.

A :class:`Channel` carries events (``send``, ``done``, ``status``, ``log``) and blocking
context requests out of the runtime: :class:`KernelChannel` over IOPub and stdin in a
kernel, :class:`LocalChannel` in-process (a callback or a list, and :class:`MemoryContext`),
and the cold-mode pipe in :mod:`kernelexec.kernel.coldfork`.

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import NodeApiError
from ..protocol import EVENTS_COMM, ContextOp
from .convert import Encoder, from_json

if TYPE_CHECKING:
    from .results import Request

__all__ = [
    "COMM_ID",
    "Channel",
    "ContextAccessError",
    "ContextStore",
    "Env",
    "KernelChannel",
    "LinkCallError",
    "LinkCallTimeout",
    "LocalChannel",
    "MemoryContext",
    "Node",
    "NodeHost",
    "normalize_outputs",
    "script_helpers",
]

COMM_ID = EVENTS_COMM
_TOPIC = b"comm-" + COMM_ID.encode()
LEVELS = {
    "debug": "debug",
    "trace": "trace",
    "info": "info",
    "log": "info",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "critical": "error",
}


class ContextAccessError(NodeApiError):
    """A context get/set/keys was refused or could not be answered (a RuntimeError)."""


class LinkCallError(NodeApiError):
    """node.linkcall failed: Node-RED's own message (no such target, several, bad msg)."""


class LinkCallTimeout(LinkCallError, TimeoutError):  # noqa: N818 (the documented name)
    """node.linkcall got no answer from a ``link out`` (return mode) within its timeout.
    Named as the user guide has always named it, as node code and its logs see it."""


#: What a link call waits for by default, in seconds (the function node's 5000 ms).
LINKCALL_TIMEOUT = 5.0


class Channel(Protocol):
    def event(self, event: Mapping[str, Any]) -> None:
        """Publish an event at once (any thread)."""

    def context(self, request: dict[str, Any]) -> dict[str, Any]:
        """Ask for a context operation; blocks; returns {"value", "error"}."""


class NodeHost(Protocol):
    """What the node API needs of the runtime that hosts it (kernelexec/kernel/runtime.py's
    ``Runtime``): the node's identity, its channel and context stores, and the events of
    the message running now. The node API knows nothing else of the runtime."""

    node_id: str
    node_name: str
    outputs: int
    workdir: str
    channel: Channel
    flow: ContextStore
    global_: ContextStore
    env: Env

    def current_request(self) -> Request | None: ...

    def emit_send(self, req: Request | None, outputs: list[list[Any]]) -> None: ...

    def emit_done(self, req: Request | None, error: Any = None) -> None: ...

    def emit_status(self, req: Request | None, status: dict[str, Any]) -> None: ...

    def emit_log(self, req: Request | None, level: str, text: Any) -> None: ...

    def emit_error(self, req: Request | None, text: Any, for_msg: bool) -> None: ...


class KernelChannel:
    """Events as IOPub comm_msgs, context as stdin input_requests (see docs/internals.md)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.parent: dict[str, Any] = {}
        self.ident: Any = None
        self._lock = threading.Lock()

    def remember(self) -> dict[str, Any]:
        """Keep the current shell request (other threads cannot see it); return it."""
        self.parent = self.kernel.get_parent("shell")
        self.ident = self.kernel._parent_ident["shell"]
        return self.parent

    def event(self, event: Mapping[str, Any]) -> None:
        content = {"comm_id": COMM_ID, "data": event}
        self.kernel.session.send(
            self.kernel.iopub_socket, "comm_msg", content, parent=self.parent, ident=_TOPIC
        )

    def context(self, request: dict[str, Any]) -> dict[str, Any]:
        prompt = json.dumps(request, allow_nan=False)
        with self._lock:
            text = self.kernel._input_request(prompt, self.ident, self.parent)
        reply: dict[str, Any] = json.loads(text) if text else {}
        return reply


class MemoryContext:
    """Context stores kept in this process (values stored as JSON, like the real ones).

    Named stores are separate dicts (None is the default store); ``env`` reads os.environ;
    a ``linkcall`` is refused (it needs Node-RED's flows).
    """

    def __init__(self) -> None:
        self.scopes: dict[str, dict[str, str]] = {"node": {}, "flow": {}, "global": {}}
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        op, key = request.get("op"), request.get("key")
        if op == ContextOp.ENV:
            return {"value": os.environ.get(str(key)), "error": None}
        if op == ContextOp.LINKCALL:
            return {"value": None, "error": "link calls need Node-RED (this node runs without it)"}
        name = str(request.get("scope"))
        if request.get("store"):
            name += ":" + str(request["store"])
        store = self.scopes.setdefault(name, {})
        with self._lock:
            if op == ContextOp.GET:
                return {"value": self._get(store, key), "error": None}
            if op == ContextOp.SET:
                self._set(store, key, request.get("value"))
                return {"value": None, "error": None}
            if op == ContextOp.KEYS:
                return {"value": sorted(store), "error": None}
        return {"value": None, "error": f"unknown context op {op!r}"}

    @staticmethod
    def _get(store: dict[str, str], key: Any) -> Any:
        keys = key if isinstance(key, list) else [key]
        values = [None if store.get(str(k)) is None else json.loads(store[str(k)]) for k in keys]
        return values if isinstance(key, list) else values[0]

    @staticmethod
    def _set(store: dict[str, str], key: Any, value: Any) -> None:
        if isinstance(key, list) and len(key) != len(value):
            message = f"context.set: {len(key)} keys, {len(value)} values"
            raise ValueError(message)
        keys, values = (key, value) if isinstance(key, list) else ([key], [value])
        pairs = [(k, values[i]) for i, k in enumerate(keys)]
        for k, v in pairs:
            if v is None:
                store.pop(str(k), None)
            else:
                store[str(k)] = json.dumps(v)


class LocalChannel:
    """In-process channel: events to ``on_event`` (default: appended to ``events``)."""

    def __init__(
        self,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_context: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.events: list[dict[str, Any]] = []
        self.on_event = on_event or self.events.append
        self.on_context = on_context or MemoryContext()

    def event(self, event: Mapping[str, Any]) -> None:
        self.on_event(dict(event))

    def context(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.on_context(request)


# ------------------------------------------------------------------------ outputs


def _as_msg(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    message = (
        f"{where} is a {type(value).__name__}; a message must be a dict such as {{'payload': ...}}"
    )
    raise TypeError(message)


def _one_output(item: Any, index: int) -> list[dict[str, Any]]:
    if item is None:
        return []
    if isinstance(item, (list, tuple)):
        where = f"output {index + 1}"
        return [_as_msg(m, f"a message on {where}") for m in item if m is not None]
    return [_as_msg(item, f"output {index + 1}")]


def normalize_outputs(value: Any, count: int) -> list[list[dict[str, Any]]]:
    """Node-RED's rules: dict -> output 1; list -> one entry per output; None -> nothing.

    Entries past ``count`` are dropped, as in Node-RED.
    """
    if value is None:
        return [[] for _ in range(count)]
    if isinstance(value, dict):
        return [[value] if i == 0 else [] for i in range(count)]
    if isinstance(value, (list, tuple)):
        outputs = [_one_output(item, i) for i, item in enumerate(value[:count])]
        outputs.extend([] for _ in range(count - len(outputs)))
        return outputs
    message = (
        f"the code returned a {type(value).__name__}; return a msg dict, a list with one "
        "entry per output, or None to send nothing"
    )
    raise TypeError(message)


# --------------------------------------------------------------------------- node


class Node:
    """``node`` in user code. A Node bound to a request (the one passed to message code)
    keeps its request for threads and tasks that outlive the execution."""

    __slots__ = ("_request", "_runtime")

    def __init__(self, runtime: NodeHost, request: Request | None = None) -> None:
        self._runtime = runtime
        self._request = request

    @property
    def id(self) -> str:
        return self._runtime.node_id

    @property
    def name(self) -> str:
        return self._runtime.node_name

    @property
    def outputs(self) -> int:
        return self._runtime.outputs

    def _req(self) -> Request | None:
        return self._request or self._runtime.current_request()

    def send(self, msg: Any, clone: bool = True) -> None:
        """Send at once: a msg dict (output 1) or a list with one entry per output."""
        self._runtime.emit_send(self._req(), normalize_outputs(msg, self._runtime.outputs))

    def done(self, error: Any = None) -> None:
        """Finish the message (when the code uses node.done, the result does not)."""
        self._runtime.emit_done(self._req(), error)

    def status(self, *args: Any, **fields: Any) -> None:
        """status("text"), status(fill=, shape=, text=), status({...}); status() clears."""
        status: dict[str, Any] = {}
        if args and isinstance(args[0], dict):
            status.update(args[0])
        elif args:
            status["text"] = str(args[0])
        status.update({k: v for k, v in fields.items() if v is not None})
        self._runtime.emit_status(self._req(), status)

    def log(self, text: Any) -> None:
        self._runtime.emit_log(self._req(), "info", text)

    def warn(self, text: Any) -> None:
        self._runtime.emit_log(self._req(), "warn", text)

    def debug(self, text: Any) -> None:
        self._runtime.emit_log(self._req(), "debug", text)

    def trace(self, text: Any) -> None:
        """Log at Node-RED's trace level (shown only when settings.js logs trace)."""
        self._runtime.emit_log(self._req(), "trace", text)

    @property
    def path(self) -> str:
        """Node-RED's path of this node (``flow/node``, subflow instances included)."""
        return str(self._runtime.env.get("NR_NODE_PATH") or "")

    async def linkcall(
        self, target: str, msg: dict[str, Any], timeout: float = LINKCALL_TIMEOUT
    ) -> dict[str, Any]:
        """``await node.linkcall("name or id", msg)``: send ``msg`` (a copy) to a ``link in``
        node and wait for the message its ``link out`` (return mode) sends back.

        Raises LinkCallError (no such target, several with that name, msg not a dict) or
        LinkCallTimeout (TimeoutError) after ``timeout`` seconds, with Node-RED's messages.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.linkcall_sync, target, msg, timeout)

    def linkcall_sync(
        self, target: str, msg: dict[str, Any], timeout: float = LINKCALL_TIMEOUT
    ) -> dict[str, Any]:
        """node.linkcall for code that is not async: blocks until the answer comes."""
        encoded = None
        if isinstance(msg, dict):
            encoded = Encoder(use_blobs=False).encode(msg, "linkcall msg")
        request = {
            "kernelexec": "context",
            "scope": None,
            "op": ContextOp.LINKCALL,
            "key": target if isinstance(target, str) else None,
            "value": encoded,
            "timeout": float(timeout),
        }
        reply = self._runtime.channel.context(request)
        error = reply.get("error")
        if error:
            raise (LinkCallTimeout if error == "timeout" else LinkCallError)(str(error))
        answer: dict[str, Any] = from_json(reply.get("value"), f"the answer of link {target!r}")
        return answer

    def error(self, text: Any, msg: Any = None) -> None:
        """Log an error; with ``msg`` the message fails (Catch nodes see it)."""
        self._runtime.emit_error(self._req(), text, msg is not None)

    def __repr__(self) -> str:
        return f"<node {self.id} {self.name!r} outputs={self.outputs}>"


Key = str | Sequence[str]


class ContextStore:
    """``context`` (node), ``flow`` and ``global_``: Node-RED context, through a channel.

    Like the function node's: ``store`` names one of settings.js ``contextStorage`` (None:
    the default one), and ``get``/``set`` take a list of keys (with a list of values).
    """

    __slots__ = ("_runtime", "scope")

    def __init__(self, runtime: NodeHost, scope: str) -> None:
        self._runtime = runtime
        self.scope = scope

    @property
    def flow(self) -> ContextStore:
        """The flow context (the function node's ``context.flow``)."""
        return self._runtime.flow

    @property
    def global_(self) -> ContextStore:
        """The global context (the function node's ``context.global``)."""
        return self._runtime.global_

    def _ask(self, op: ContextOp, key: Any, value: Any = None, store: str | None = None) -> Any:
        request = {
            "kernelexec": "context",
            "scope": self.scope,
            "op": op,
            "key": key,
            "value": value,
        }
        if store is not None:
            request["store"] = str(store)
        reply = self._runtime.channel.context(request)
        if reply.get("error"):
            where = f" in store {store!r}" if store is not None else ""
            message = f"{self.scope} context {op} {key!r}{where} failed: {reply['error']}"
            raise ContextAccessError(message)
        return reply.get("value")

    def get(self, key: Key, default: Any = None, store: str | None = None) -> Any:
        """The value of ``key`` (``default`` when unset); a list of keys gives a list."""
        if isinstance(key, str):
            answer = self._ask(ContextOp.GET, key, store=store)
            value = from_json(answer, f"{self.scope}.get({key!r})")
            return default if value is None else value
        keys = _key_list(key, f"{self.scope}.get")
        values = list(self._ask(ContextOp.GET, keys, store=store) or [])
        values += [None] * (len(keys) - len(values))
        decoded = [
            from_json(values[i], f"{self.scope}.get({k!r})") for i, k in enumerate(keys)
        ]
        return [default if v is None else v for v in decoded]

    def set(self, key: Key, value: Any, store: str | None = None) -> None:
        """Set ``key`` (None deletes it), or several: ``set(["a", "b"], [1, 2])``."""
        encoder = Encoder(use_blobs=False)
        if isinstance(key, str):
            encoded_value = encoder.encode(value, f"{self.scope}.set({key!r})")
            self._ask(ContextOp.SET, key, encoded_value, store)
            return
        keys = _key_list(key, f"{self.scope}.set")
        if not isinstance(value, (list, tuple)) or len(value) > len(keys):
            message = (
                f"{self.scope}.set({keys!r}, ...) needs a list of at most {len(keys)} values, "
                f"one per key, not {type(value).__name__}"
            )
            raise TypeError(message)
        values = [*value, *([None] * (len(keys) - len(value)))]
        encoded = [
            encoder.encode(values[i], f"{self.scope}.set({k!r})") for i, k in enumerate(keys)
        ]
        self._ask(ContextOp.SET, keys, encoded, store)

    def keys(self, store: str | None = None) -> list[str]:
        """The keys set in this context (in ``store``)."""
        return list(self._ask(ContextOp.KEYS, None, store=store) or [])

    def __repr__(self) -> str:
        return f"<{self.scope} context>"


def _key_list(key: Any, where: str) -> list[str]:
    if isinstance(key, (list, tuple)) and key and all(isinstance(k, str) for k in key):
        return list(key)
    message = f"{where}: a key is a string or a non-empty list of strings, not {key!r}"
    raise TypeError(message)


class Env:
    """``env.get(name)``: read when called, as Node-RED's ``env.get`` reads it: the node's
    group, flow and global environment variables, the process environment of Node-RED, and
    NR_NODE_ID, NR_NODE_NAME, NR_NODE_PATH, NR_FLOW_ID, NR_FLOW_NAME, NR_GROUP_ID, ..."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: NodeHost) -> None:
        self._runtime = runtime

    def get(self, name: str, default: Any = None) -> Any:
        if name == "NR_NODE_ID":  # known here: no need to ask
            return self._runtime.node_id
        if name == "NR_NODE_NAME":
            return self._runtime.node_name
        request = {"kernelexec": "context", "scope": None, "op": ContextOp.ENV, "key": str(name)}
        reply = self._runtime.channel.context(request)
        if reply.get("error"):
            message = f"env.get({name!r}) failed: {reply['error']}"
            raise ContextAccessError(message)
        value = from_json(reply.get("value"), f"env.get({name!r})")
        return default if value is None else value


# ------------------------------------------------------------------ script helpers


def _inside(workdir: str, name: str) -> str:
    base = os.path.realpath(workdir)
    path = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, path]) != base:
        message = f"file {name!r} is outside the node's working directory {base}"
        raise ValueError(message)
    return path


def script_helpers(runtime: NodeHost) -> dict[str, Any]:
    """``log``, ``save_file``, ``read_file``, ``run_command`` for script-style code."""

    def log(text: Any, level: str = "info") -> None:
        """Log a line (level: debug, info, warning/warn, error)."""
        runtime.emit_log(runtime.current_request(), LEVELS.get(level, "info"), text)

    def save_file(name: str, data: str | bytes) -> str:
        """Write a file in the node's working directory; returns its path."""
        path = _inside(runtime.workdir, name)
        mode = "w" if isinstance(data, str) else "wb"
        with open(path, mode, encoding="utf-8" if mode == "w" else None) as handle:
            handle.write(data)
        return path

    def read_file(name: str, binary: bool = False) -> str | bytes | None:
        """A file of the node's working directory (text, or bytes); None if missing."""
        path = _inside(runtime.workdir, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb" if binary else "r", encoding=None if binary else "utf-8") as fh:
            content: str | bytes = fh.read()
        return content

    def run_command(cmd: str | list[str], timeout: float | None = None) -> dict[str, Any]:
        """Run a command in the working directory: {returncode, stdout, stderr}."""
        try:
            done = subprocess.run(
                cmd,
                shell=isinstance(cmd, str),
                capture_output=True,
                text=True,
                cwd=runtime.workdir,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
            text = f"command timed out after {timeout} s"
            return {"returncode": -1, "stdout": out or "", "stderr": text}
        return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    return {"log": log, "save_file": save_file, "read_file": read_file, "run_command": run_command}
