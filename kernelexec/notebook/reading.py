"""From a notebook or a node script to a :class:`~kernelexec.notebook.model.NodeCode`: the
tagged cells collected and checked (what ``kernelexec export`` and the live link read)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CodeSyntaxError
from .cells import cell_part, check_code, describe_cell, parse_node_options
from .files import nbformat_module, read_notebook
from .model import PARTS, NodeCode, NodeOptions, NotebookError
from .sample import parse_sample

__all__ = ["load_node_code", "node_code_from_notebook", "parse_script"]


@dataclass
class _Parts:
    found: dict[str, list[tuple[int, str]]]
    options: NodeOptions | None = None


def _collect(cells: list[Any]) -> _Parts:
    parts = _Parts({p: [] for p in PARTS})
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        part, args, body = cell_part(index, cell)
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


def parse_script(text: str) -> NodeCode:
    """The node code of a node script; errors name the section like a cell."""
    v4 = nbformat_module().v4
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
