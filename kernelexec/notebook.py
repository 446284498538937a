"""Node code in notebooks and scripts: read, check, write, and watch for changes.

A notebook holds a node's code in **tagged cells** (cell metadata ``tags``):

- ``setup``: setup code, run once per kernel (several setup cells are joined in order);
- ``node``: the message code (exactly one);
- ``stop``: stop code, run when the node closes (several are joined in order);
- ``sample``: a sample message, ``msg = {...}`` with literal values, or a JSON object (at most one).

Cells starting with the ``%%node``, ``%%setup`` or ``%%stop`` magic count as tagged; the magic
line is not part of the code. Other cells are ignored. Errors name the cell: its number as
Jupyter counts them (from 1), its index in ``nb.cells`` and its first line.

A **node script** (``kernelexec export --script``) is a plain ``.py`` file with the same parts
as ``# %% <part>`` sections (the percent format of Jupytext and VS Code)::

    # %% setup
    import numpy as np
    # %% node --outputs 2
    return [msg, None]
    # %% stop
    # %% sample
    msg = {"payload": 1}

Text before the first marker (comments) is ignored; a file without markers is all message code.

:func:`load_node_code` reads either kind of file; :func:`watch_notebook` polls one and reports
which parts changed (see docs/notebooks.md, "Live link").
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import pprint
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import CodeSyntaxError, ConfigError

log = logging.getLogger("kernelexec.notebook")

__all__ = [
    "PARTS",
    "NodeCode",
    "NodeOptions",
    "NotebookChange",
    "NotebookError",
    "check_code",
    "load_node_code",
    "node_code_from_notebook",
    "notebook_from_node_code",
    "parse_node_options",
    "parse_sample",
    "parse_script",
    "read_notebook",
    "sample_source",
    "script_from_node_code",
    "watch_notebook",
    "write_notebook",
]

#: The tags that mark a cell as part of a node (others are ignored).
PARTS = ("setup", "node", "stop", "sample")
_MAGICS = {"%%node": "node", "%%setup": "setup", "%%stop": "stop", "%%sample": "sample"}


class NotebookError(ConfigError):
    """A notebook or script does not describe a node; the message names the cell."""

    def __init__(self, message: str, *, cell_index: int | None = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index


@dataclass(frozen=True)
class NodeCode:
    """The parts of a node found in a notebook or script.

    ``code`` is the message code (``func`` of the Node-RED node), ``setup``/``stop`` its
    ``initialize``/``finalize``. ``sample`` is the sample message (None: no sample cell).
    ``name``/``outputs`` come from the ``%%node`` line (None: not given there).
    """

    setup: str = ""
    code: str = "return msg"
    stop: str = ""
    sample: dict[str, Any] | None = None
    name: str | None = None
    outputs: int | None = None

    def changed_parts(self, other: NodeCode) -> frozenset[str]:
        """Names of the fields that differ between ``self`` and ``other``."""
        return frozenset(
            f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)
        )


@dataclass(frozen=True)
class NodeOptions:
    """Options of a ``%%node`` line (the same for the magic and for export)."""

    msg: str = "msg"
    outputs: int | None = None
    name: str | None = None
    timeout: float = 0.0
    no_raise: bool = False
    quiet: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit the process
        msg = f"%%node: {message}"
        raise NotebookError(msg)


def _node_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%%node", add_help=False)
    parser.add_argument("--msg", default="msg", help="variable holding the message")
    parser.add_argument("--outputs", type=int, default=None, help="number of outputs")
    parser.add_argument("--name", default=None, help="node name")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds, 0 = no limit")
    parser.add_argument("--no-raise", action="store_true", help="show errors, do not raise")
    parser.add_argument("--quiet", action="store_true", help="do not display the result")
    return parser


def parse_node_options(line: str) -> NodeOptions:
    """Parse the arguments of a ``%%node`` line (without the ``%%node`` itself)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        msg = f"%%node {line}: {exc}"
        raise NotebookError(msg) from None
    ns = _node_parser().parse_args(words)
    if ns.outputs is not None and not 0 <= ns.outputs <= 32:
        msg = f"%%node --outputs {ns.outputs}: expected 0 to 32"
        raise NotebookError(msg)
    if not ns.msg.isidentifier():
        msg = f"%%node --msg {ns.msg!r}: expected a variable name"
        raise NotebookError(msg)
    return NodeOptions(ns.msg, ns.outputs, ns.name, ns.timeout, ns.no_raise, ns.quiet)


def check_code(source: str, part: str) -> None:
    """Raise :class:`~kernelexec.errors.CodeSyntaxError` if ``source`` does not compile.

    Compiled exactly as the runtime compiles it (:mod:`kernelexec.wrapping`): message code
    may ``return`` and ``await`` at top level; setup and stop code are plain scripts.
    """
    from .wrapping import compile_node_code, compile_script

    if part == "node":
        compile_node_code(source)
    else:
        compile_script(source, part=part)


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:60]
    return ""


def describe_cell(index: int, source: str) -> str:
    """``cell 4 (index 3: "return msg")``: how error messages name a cell."""
    return f"cell {index + 1} (index {index}: {_first_line(source)!r})"


def _split_magic(source: str) -> tuple[str | None, str, str]:
    """(part named by a leading %%magic or None, the magic's arguments, the code after it)."""
    head, _, body = source.partition("\n")
    word, _, args = head.strip().partition(" ")
    if word in _MAGICS:
        return _MAGICS[word], args.strip(), body
    return None, "", source


def _cell_part(index: int, cell: Any) -> tuple[str | None, str, str]:
    tags = [t for t in cell.get("metadata", {}).get("tags", []) if t in PARTS]
    magic, args, body = _split_magic(cell.source)
    found = set(tags) | ({magic} if magic else set())
    if len(found) > 1:
        msg = f"{describe_cell(index, cell.source)} is marked as {' and '.join(sorted(found))}"
        raise NotebookError(msg + "; keep one tag or magic per cell", cell_index=index)
    return (found.pop() if found else None), args, body


def parse_sample(source: str) -> dict[str, Any]:
    """The message of a sample cell: ``msg = {...}`` with literal values, or a JSON object."""
    text = source.strip()
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = _literal_sample(text)
    if not isinstance(value, dict):
        msg = f"a sample message must be a dict, not {type(value).__name__}"
        raise ValueError(msg)
    return value


_SAMPLE_FORM = "a sample cell must be msg = {...} with literal values, or a JSON object"


def _literal_sample(text: str) -> Any:
    try:
        return _literal_value(text)
    except ValueError as exc:
        if str(exc).startswith("malformed node"):
            msg = f"{_SAMPLE_FORM} (no calls or variables)"
            raise ValueError(msg) from None
        raise


def _literal_value(text: str) -> Any:
    tree = ast.parse(text)
    if len(tree.body) != 1:
        msg = "a sample cell holds one statement: msg = {...}"
        raise ValueError(msg)
    stmt = tree.body[0]
    if (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    ):
        return ast.literal_eval(stmt.value)
    if isinstance(stmt, ast.Expr):
        return ast.literal_eval(stmt.value)
    raise ValueError(_SAMPLE_FORM)


def sample_source(sample: dict[str, Any], var: str = "msg") -> str:
    """Python source of a sample cell for ``sample`` (read back by :func:`parse_sample`)."""
    return f"{var} = {pprint.pformat(sample, indent=1, width=88, sort_dicts=False)}"


@dataclass
class _Parts:
    found: dict[str, list[tuple[int, str]]]
    options: NodeOptions | None = None


def _collect(cells: list[Any]) -> _Parts:
    parts = _Parts({p: [] for p in PARTS})
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        part, args, body = _cell_part(index, cell)
        if part is None:
            continue
        if part == "node":
            try:
                parts.options = parse_node_options(args)
            except NotebookError as exc:
                msg = f"{describe_cell(index, cell.source)}: {exc}"
                raise NotebookError(msg, cell_index=index) from None
        parts.found[part].append((index, body))
    return parts


def _check_counts(parts: _Parts, cells: list[Any]) -> None:
    nodes = parts.found["node"]
    if not nodes:
        msg = "no node cell: tag the message-code cell 'node' or start it with %%node"
        raise NotebookError(msg)
    for part, most in (("node", 1), ("sample", 1)):
        if len(parts.found[part]) > most:
            names = ", ".join(describe_cell(i, cells[i].source) for i, _ in parts.found[part])
            msg = f"{len(parts.found[part])} {part} cells ({names}); keep exactly one"
            raise NotebookError(msg, cell_index=parts.found[part][1][0])


def _check_cells(parts: _Parts, cells: list[Any]) -> None:
    for part in ("setup", "node", "stop"):
        for index, body in parts.found[part]:
            try:
                check_code(body, part)
            except CodeSyntaxError as exc:
                text = exc.message.rsplit(" in <node", 1)[0]
                cell = describe_cell(index, cells[index].source)
                msg = f"{cell}: {part} code is not valid Python: {text}"
                raise NotebookError(msg, cell_index=index) from None


def _sample(parts: _Parts, cells: list[Any]) -> dict[str, Any] | None:
    if not parts.found["sample"]:
        return None
    index, body = parts.found["sample"][0]
    try:
        return parse_sample(body)
    except (ValueError, SyntaxError) as exc:
        msg = f"{describe_cell(index, cells[index].source)}: sample: {exc}"
        raise NotebookError(msg, cell_index=index) from None


def node_code_from_notebook(nb: Any) -> NodeCode:
    """The node described by the tagged cells of a v4 notebook (an ``nbformat`` node)."""
    cells = list(nb.cells)
    parts = _collect(cells)
    _check_counts(parts, cells)
    _check_cells(parts, cells)
    options = parts.options or NodeOptions()
    return NodeCode(
        setup="\n\n".join(body for _, body in parts.found["setup"]),
        code=parts.found["node"][0][1],
        stop="\n\n".join(body for _, body in parts.found["stop"]),
        sample=_sample(parts, cells),
        name=options.name,
        outputs=options.outputs,
    )


def _nbformat() -> Any:
    """nbformat, imported when needed (it is untyped, and heavy for the kernel side)."""
    return importlib.import_module("nbformat")


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """Read a notebook as nbformat v4; unreadable files raise :class:`NotebookError`."""
    try:
        return _nbformat().read(os.fspath(path), as_version=4)
    except (OSError, ValueError) as exc:
        msg = f"{os.fspath(path)}: cannot read the notebook: {str(exc)[:200]}"
        raise NotebookError(msg) from None


def write_notebook(nb: Any, path: str | os.PathLike[str]) -> None:
    """Validate and write a v4 notebook."""
    _nbformat().write(nb, os.fspath(path))


def load_node_code(path: str | os.PathLike[str]) -> NodeCode:
    """The node code of a notebook (``.ipynb``) or a node script (any other file)."""
    where = os.fspath(path)
    try:
        if where.endswith(".ipynb"):
            return node_code_from_notebook(read_notebook(where))
        if where.endswith(".json"):
            msg = (
                "expected a notebook (.ipynb) or a node script (.py), not a JSON file; "
                "to turn a flow's nodes into notebooks, use kernelexec import"
            )
            raise NotebookError(msg)
        return parse_script(Path(where).read_text(encoding="utf-8"))
    except NotebookError as exc:
        if exc.message.startswith(where):
            raise
        msg = f"{where}: {exc.message}"
        raise NotebookError(msg, cell_index=exc.cell_index) from None
    except OSError as exc:
        msg = f"{where}: cannot read the node script: {exc.strerror}"
        raise NotebookError(msg) from None


def _intro(code: NodeCode, node: dict[str, Any]) -> str:
    """The first (markdown) cell of an imported notebook."""
    title = code.name or node.get("name") or "kernelexec node"
    lines = [f"# {title}", ""]
    if node.get("id"):
        lines += [f"Node `{node['id']}` of a Node-RED flow.", ""]
    if str(node.get("info") or "").strip():
        lines += [str(node["info"]).strip(), ""]
    if node.get("notebook"):
        lines += [f"The deployed node reads its code from `{node['notebook']}` (live link).", ""]
    lines.append(
        "Run the cells, edit the tagged ones (`setup`, `sample`, `node`, `stop`), then "
        "`kernelexec export NOTEBOOK.ipynb -o flow.json` and import the flow in Node-RED."
    )
    return "\n".join(lines)


def notebook_from_node_code(code: NodeCode, *, node: dict[str, Any] | None = None) -> Any:
    """A notebook with tagged, magic-marked cells for ``code``.

    ``node`` (the Node-RED node's other properties) is kept in the notebook metadata under
    ``kernelexec.node`` so that export restores them.
    """
    v4 = _nbformat().v4
    node_line = "%%node" + (f" --outputs {code.outputs}" if code.outputs not in (None, 1) else "")
    cells = [
        v4.new_markdown_cell(_intro(code, node or {})),
        v4.new_code_cell("%load_ext kernelexec"),
        v4.new_code_cell("%%setup\n" + code.setup, metadata={"tags": ["setup"]}),
        v4.new_code_cell(
            sample_source(code.sample or {"payload": None}), metadata={"tags": ["sample"]}
        ),
        v4.new_code_cell(f"{node_line}\n{code.code}", metadata={"tags": ["node"]}),
        v4.new_code_cell("%%stop\n" + code.stop, metadata={"tags": ["stop"]}),
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    if node:
        nb.metadata["kernelexec"] = {"node": node}
    return nb


def script_from_node_code(code: NodeCode) -> str:
    """The node script text for ``code`` (see the module docstring)."""
    head = ["# kernelexec node script: run with `kernelexec run --code FILE`"]
    node_line = "# %% node"
    if code.outputs is not None:
        node_line += f" --outputs {code.outputs}"
    if code.name:
        node_line += f" --name {shlex.quote(code.name)}"
    sections = [("# %% setup", code.setup), (node_line, code.code), ("# %% stop", code.stop)]
    if code.sample is not None:
        sections.append(("# %% sample", sample_source(code.sample)))
    body = [
        f"{marker}\n{text.rstrip()}\n" if text.strip() else f"{marker}\n"
        for marker, text in sections
    ]
    return "\n".join(head) + "\n" + "".join(body)


def parse_script(text: str) -> NodeCode:
    """The node code of a node script; errors name the section like a cell."""
    v4 = _nbformat().v4
    cells: list[Any] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# %% ") and line[5:].split(" ")[0] in PARTS:
            current = [line[2:].replace("%% ", "%%", 1)]
            cells.append(current)
        elif current is not None:
            current.append(line)
    if not cells:
        cells.append(["%%node", *text.splitlines()])
    nb = v4.new_notebook(cells=[v4.new_code_cell("\n".join(c)) for c in cells])
    return node_code_from_notebook(nb)


@dataclass(frozen=True)
class NotebookChange:
    """What :func:`watch_notebook` saw. ``changed`` names the parts that differ.

    ``action`` says what a pool should do: ``"code"`` (only message code changed: send the
    runtime op ``code`` to each kernel, setup state kept), ``"restart"`` (setup changed:
    restart the kernels so the new setup runs), ``"stop"`` (only the stop code changed:
    remember it for close), ``"none"`` (only name, outputs or sample changed, or the file is
    valid again after an error with the running code: clear the error; a node's outputs are
    its wiring in the editor, not the notebook's), ``"error"`` (the file is not a valid node
    now: keep the running code, show ``error``).
    """

    path: str
    old: NodeCode | None
    new: NodeCode | None
    changed: frozenset[str]
    error: NotebookError | None = None

    @property
    def action(self) -> str:
        if self.error is not None or self.new is None:
            return "error"
        if self.old is None or "setup" in self.changed:
            return "restart"
        if "code" in self.changed:
            return "code"
        return "stop" if "stop" in self.changed else "none"


ChangeCallback = Callable[[NotebookChange], "Awaitable[None] | None"]


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _load_change(path: str, current: NodeCode | None, failed: bool) -> NotebookChange | None:
    """The change to report after the file changed on disk (None: nothing to report)."""
    try:
        new = load_node_code(path)
    except NotebookError as exc:
        return NotebookChange(path, current, None, frozenset(), exc)
    if current is None:
        return NotebookChange(path, None, new, frozenset(f.name for f in fields(new)))
    if new == current and not failed:
        return None  # saved without a change to the node (e.g. new cell outputs)
    return NotebookChange(path, current, new, new.changed_parts(current))


async def _poll(
    path: str,
    on_change: ChangeCallback,
    current: NodeCode | None,
    interval: float,
    loaded: tuple[int, int] | None,
) -> None:
    seen, failed = loaded, False
    while True:
        await asyncio.sleep(interval)
        sig = _signature(path)
        stable, seen = sig == seen, sig
        if sig == loaded or not stable:
            continue  # unchanged, or still being written: look again next time
        loaded = sig
        change = _load_change(path, current, failed)
        if change is None:
            continue
        failed = change.error is not None
        current = change.new or current
        try:
            result = on_change(change)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the watcher outlives a failing callback
            log.exception("The notebook change callback failed for %s", path)


def watch_notebook(
    path: str | os.PathLike[str],
    on_change: ChangeCallback,
    *,
    initial: NodeCode | None = None,
    interval: float = 0.5,
) -> asyncio.Task[None]:
    """Poll ``path`` every ``interval`` seconds; call ``on_change`` when its node changes.

    Must be called with a running event loop; cancel the returned task to stop watching.
    ``initial`` is the code the caller is running now (default: the file's code at the time
    of the call). A change is reported once the file's mtime and size have been stable for
    one interval, so a half-written file is not read. ``on_change`` may be a coroutine
    function; it is awaited before the next poll. An exception in it is logged
    (logger ``kernelexec.notebook``) and watching goes on.
    """
    where = os.fspath(path)
    signature = _signature(where)  # now, not when the task first runs
    if initial is None:
        with contextlib.suppress(NotebookError):
            initial = load_node_code(where)
    return asyncio.get_running_loop().create_task(
        _poll(where, on_change, initial, interval, signature), name=f"watch_notebook {where}"
    )
