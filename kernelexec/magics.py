"""Notebook magics: ``%%node``, ``%node``, ``%%setup``, ``%%stop``, ``%%sample``.

Loaded by ``%load_ext kernelexec``. The code runs on :mod:`kernelexec.kernel.runtime`'s in-process
API, with the notebook's namespace as the node's globals, so a cell behaves exactly as the
node would in a flow. See docs/notebooks.md.
"""

from __future__ import annotations

import base64
import html
import pprint
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class

from .errors import ErrorObject, ExecutionError
from .kernel.results import Result
from .notebook import NodeOptions, NotebookError, parse_node_options, parse_sample

__all__ = ["KernelexecMagics", "NodeCodeError", "NodeResult", "load_ipython_extension"]

RESULT_VAR = "_node_result"
_IMAGE_MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}
_MAX_REPR = 2000


@dataclass
class NodeResult:
    """What one ``%%node`` run produced: messages per output port, logs, status, error."""

    outputs: list[list[dict[str, Any]]]
    logs: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""
    error: ErrorObject | None = None
    exec_ms: float = 0.0
    name: str = ""

    def port(self, index: int) -> list[dict[str, Any]]:
        """The messages output ``index`` carries."""
        return self.outputs[index]

    @property
    def first(self) -> dict[str, Any] | None:
        """The first message of the first port that carries one (None: nothing sent)."""
        for messages in self.outputs:
            if messages:
                return messages[0]
        return None

    def __repr__(self) -> str:
        return "\n".join(self._text_lines())

    def _head(self) -> str:
        count = len(self.outputs)
        title = self.name or "node"
        failed = f", failed: {self.error['code']}" if self.error else ""
        return f"{title}: {count} output{'s' * (count != 1)}, {self.exec_ms:.1f} ms{failed}"

    def _text_lines(self) -> list[str]:
        lines = [self._head()]
        for index, messages in enumerate(self.outputs):
            lines.append(f"  port {index} -> {_count(messages)}")
            lines.extend("    " + _short(_preview(m)).replace("\n", "\n    ") for m in messages)
        lines.extend(f"  {entry['level']}: {entry['text']}" for entry in self.logs)
        lines.extend(f"  status: {status}" for status in self.status)
        if self.stdout:
            lines.append("  stdout: " + self.stdout.rstrip().replace("\n", "\n          "))
        if self.error:
            lines.append(f"  error: {self.error.get('message')}")
            trace = str(self.error.get("traceback") or "").rstrip()
            lines.extend("    " + line for line in trace.splitlines())
        return lines

    def _repr_html_(self) -> str:
        rows = []
        for index, messages in enumerate(self.outputs):
            cells = "".join(f"<div>{_html_msg(m)}</div>" for m in messages) or "<i>nothing</i>"
            rows.append(
                f"<tr><td style='text-align:left;vertical-align:top'><b>port {index}</b>"
                f"<br>{_count(messages)}</td><td style='text-align:left'>{cells}</td></tr>"
            )
        extra = "".join(
            f"<div><b>{html.escape(e['level'])}</b>: {html.escape(str(e['text']))}</div>"
            for e in self.logs
        )
        extra += "".join(f"<div><b>status</b>: {html.escape(str(s))}</div>" for s in self.status)
        if self.stdout:
            extra += f"<pre>{html.escape(self.stdout)}</pre>"
        if self.error:
            error = self.error.get("traceback") or self.error.get("message")
            extra += f"<pre style='color:#c00'>{html.escape(str(error))}</pre>"
        head = html.escape(self._head())
        return f"<div><b>{head}</b><table>{''.join(rows)}</table>{extra}</div>"


def _count(messages: list[Any]) -> str:
    return f"{len(messages)} message{'s' * (len(messages) != 1)}" if messages else "nothing"


def _preview(value: Any) -> Any:
    """``value`` with bytes shown as ``<Buffer N bytes>`` (for reading, not for use)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _Buffer(len(value))
    if isinstance(value, dict):
        return {k: _preview(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_preview(v) for v in value]
    return value


class _Buffer:
    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"<Buffer {self.size} bytes>"


def _short(value: Any) -> str:
    text = pprint.pformat(value, width=96, sort_dicts=False)
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + " ..."


def _image(payload: Any) -> str | None:
    if not isinstance(payload, (bytes, bytearray)) or len(payload) > 4 << 20:
        return None
    for magic, mime in _IMAGE_MAGIC.items():
        if bytes(payload[: len(magic)]) == magic:
            data = base64.b64encode(payload).decode()
            return f"<img src='data:{mime};base64,{data}' style='max-width:320px'>"
    return None


def _html_msg(msg: dict[str, Any]) -> str:
    text = f"<pre style='margin:0'>{html.escape(_short(_preview(msg)))}</pre>"
    image = _image(msg.get("payload"))
    return text + (image or "")


class NodeCodeError(ExecutionError):
    """The node's code failed in ``%%node``; shows the user's traceback only. Its code is the
    error object's (USER_ERROR, TIMEOUT, CONVERSION_ERROR...)."""

    def __init__(self, error: ErrorObject) -> None:
        super().__init__(
            str(error.get("message")),
            type_name=error.get("type"),
            traceback=error.get("traceback"),
            line=error.get("line"),
        )
        self.code = str(error.get("code") or ExecutionError.code)
        self.error = error

    def _render_traceback_(self) -> list[str]:
        text = (
            self.error.get("traceback") or f"{self.error.get('type')}: {self.error.get('message')}"
        )
        return [f"{self.error.get('code')}: node code failed", *str(text).rstrip().splitlines()]


class _Session:
    """The notebook's node: one in-process runtime over the notebook's namespace."""

    def __init__(self, shell: Any) -> None:
        from .kernel.runtime import Runtime

        self.shell = shell
        self.events: list[dict[str, Any]] = []
        self.running = False
        self.runtime = Runtime(user_ns=shell.user_ns, on_event=self._on_event)
        self.runtime.init(node_id="notebook", code="return msg")
        self.code: str | None = None
        self.options = NodeOptions()
        self.runs = 0

    def run(self, code: str, options: NodeOptions, *, cell: bool = True) -> NodeResult:
        """Run ``code`` on the message in the variable ``options.msg``, as a flow would.

        ``cell``: the code comes from a %%node cell (remembered for the line form).
        """
        from .kernel.convert import to_json

        rt = self.runtime
        rt.init(node_id="notebook", name=options.name or "", outputs=_outputs(options), code=code)
        if cell:
            self.code, self.options = code, options
        if options.msg not in self.shell.user_ns:
            msg = f"%%node: no variable {options.msg!r} holds a message; set it (msg = {{...}})"
            raise NotebookError(msg)
        # What the previous node would send: a JSON-safe copy (Buffers inline).
        wire = to_json(self.shell.user_ns[options.msg], options.msg, use_blobs=False)
        self.runs += 1
        req_id = f"notebook-{self.runs}"
        self.events.clear()
        self.running = True
        try:
            result = rt.run_message(wire, req_id, options.timeout)
            return self._collect(result, list(self.events), options)
        finally:
            self.running = False
            _remove_blobs(req_id, rt.blob_dir, rt.pid)

    def _on_event(self, event: dict[str, Any]) -> None:
        """Events of a run are collected; later ones (threads, tasks) are printed."""
        if self.running:
            self.events.append(event)
            return
        for line in _late_lines(event):
            print(f"after the run: {line}")

    def _collect(
        self, result: Result, events: list[dict[str, Any]], options: NodeOptions
    ) -> NodeResult:
        outputs: list[list[dict[str, Any]]] = [[] for _ in result["outputs"]]
        status: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        for event in events:
            if event["type"] == "send":
                for port, messages in zip(outputs, event["outputs"], strict=False):
                    port.extend(_decoded(m, event, self.runtime.blob_dir) for m in messages)
            elif event["type"] == "status":
                status.append(event["status"])
            elif event["type"] == "log":
                logs.append({"level": event["level"], "text": event["text"]})
        for port, messages in zip(outputs, result["outputs"], strict=False):
            port.extend(_decoded(m, result, self.runtime.blob_dir) for m in messages)
        return NodeResult(
            outputs=outputs,
            logs=logs + list(result["logs"]),
            status=status,
            stdout=result["stdout"],
            error=result["error"],
            exec_ms=float(result["exec_ms"]),
            name=options.name or "",
        )

    def script(self, part: str, code: str) -> None:
        """Run setup or stop code; what it printed is shown; failures raise NodeCodeError."""
        from .errors import KernelexecError

        self.events.clear()
        self.running = True
        try:
            self.runtime.setup(code) if part == "setup" else self.runtime.stop(code)
        except KernelexecError as exc:
            raise NodeCodeError(exc.to_dict()) from None
        finally:
            self.running = False
            for event in self.events:
                if event["type"] == "log":
                    print(event["text"])

    def close(self) -> None:
        self.runtime.close()


def _decoded(message: Any, holder: Mapping[str, Any], directory: str | None) -> Any:
    """An output message with its markers decoded against the blob table of ``holder``
    (the result or send event that carried it)."""
    from .kernel.blobs import TABLE
    from .kernel.convert import from_json

    req_id = holder.get("req_id")
    return from_json(
        message, table=holder.get(TABLE), req_id=req_id if isinstance(req_id, str) else None,
        directory=directory,
    )


def _late_lines(event: dict[str, Any]) -> list[str]:
    """How an event that came after its run ended is shown."""
    if event["type"] == "send":
        return [
            f"node.send -> port {port}: {_short(_preview(_decoded(message, event, None)))}"
            for port, messages in enumerate(event["outputs"])
            for message in messages
        ]
    if event["type"] == "log":
        return [f"{event['level']}: {event['text']}"]
    if event["type"] == "status":
        return [f"status: {event['status']}"]
    if event["type"] == "done" and event.get("error"):
        return [f"node.done with error: {event['error'].get('message')}"]
    return []


def _outputs(options: NodeOptions) -> int:
    return 1 if options.outputs is None else options.outputs


def _remove_blobs(req_id: str, directory: str | None, pid: int) -> None:
    from .kernel.blobs import remove_request_blobs

    remove_request_blobs(req_id, directory=directory, pid=pid)


@magics_class
class KernelexecMagics(Magics):
    """The kernelexec magics (docs/notebooks.md)."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session: _Session | None = None

    def _session(self) -> _Session:
        if self.session is None:
            self.session = _Session(self.shell)
        return self.session

    def _run_node(self, code: str, options: NodeOptions, cell: bool) -> NodeResult | None:
        from .errors import KernelexecError

        session = self._session()
        try:
            result = session.run(code, options, cell=cell)
        except KernelexecError as exc:  # the code does not compile, or no msg variable
            result = NodeResult(outputs=[[] for _ in range(_outputs(options))], error=exc.to_dict())
            result.name = options.name or ""
        assert self.shell is not None
        self.shell.user_ns[RESULT_VAR] = result
        if _interrupted(result):
            raise KeyboardInterrupt  # Jupyter's stop button: the notebook's own interrupt
        if result.error is not None and not options.no_raise:
            raise NodeCodeError(result.error)
        return None if options.quiet else result

    @line_cell_magic
    def node(self, line: str, cell: str | None = None) -> NodeResult | None:
        """Run node code on a message and show what each output port carries.

        ``%%node [--msg NAME] [--outputs N] [--name NAME] [--timeout S] [--no-raise]
        [--quiet]``: the cell is the node's message code, run on the variable ``msg`` (or
        NAME) exactly as a kernelexec node in a flow runs it. The result is displayed and
        stored in ``_node_result`` (see kernelexec.magics.NodeResult).

        ``%node [options]`` (line form): run the last ``%%node`` cell's code again, e.g.
        on another message: ``%node --msg other_msg``. Options not given are those of the
        last ``%%node`` cell.
        """
        options = parse_node_options(line)
        if cell is not None:
            return self._run_node(cell, options, True)
        session = self._session()
        if session.code is None:
            msg = "%node: run a %%node cell first (the line form reruns its code)"
            raise NotebookError(msg)
        return self._run_node(session.code, _merge(session.options, line, options), False)

    @cell_magic
    def setup(self, line: str, cell: str) -> None:
        """Run the cell as the node's setup code (in the notebook's namespace)."""
        self._session().script("setup", cell)

    @cell_magic
    def stop(self, line: str, cell: str) -> None:
        """Run the cell as the node's stop code."""
        self._session().script("stop", cell)

    @cell_magic
    def sample(self, line: str, cell: str) -> None:
        """Check the cell is a sample message (``msg = {...}`` with literal values, or a JSON
        object), then set the variable (``msg`` for a JSON object)."""
        try:
            value = parse_sample(cell)
        except (ValueError, SyntaxError) as exc:
            msg = f"%%sample: {exc}"
            raise NotebookError(msg) from None
        assert self.shell is not None
        self.shell.user_ns[_sample_target(cell)] = value


def _interrupted(result: NodeResult) -> bool:
    """The runtime reports a KeyboardInterrupt without a timeout as TIMEOUT "interrupted"."""
    error = result.error
    if error is None:
        return False
    return error["code"] == "TIMEOUT" and error["message"].startswith("interrupted")


def _merge(previous: NodeOptions, line: str, given: NodeOptions) -> NodeOptions:
    """Options of ``%node LINE``: the given ones, the last %%node cell's for the rest."""
    defaults = NodeOptions()
    fields = {}
    for name in ("msg", "outputs", "name", "timeout", "no_raise", "quiet"):
        value = getattr(given, name)
        flag = "--" + name.replace("_", "-")
        fields[name] = (
            value if flag in line or value != getattr(defaults, name) else getattr(previous, name)
        )
    return NodeOptions(**fields)


def _sample_target(source: str) -> str:
    import ast

    try:
        tree = ast.parse(source.strip())
    except SyntaxError:
        return "msg"  # a JSON object (true/false/null are not Python)
    stmt = tree.body[0] if tree.body else None
    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return "msg"


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext kernelexec``)."""
    ipython.register_magics(KernelexecMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the runtime's threads and put stdout back (``%unload_ext kernelexec``)."""
    magics = ipython.magics_manager.registry.get("KernelexecMagics")
    if magics is not None and magics.session is not None:
        magics.session.close()
        magics.session = None
