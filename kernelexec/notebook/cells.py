"""One cell of a notebook: which part it is (tag or ``%%magic``), its ``%%node`` options,
whether its code compiles, and how error messages name it."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from .model import PARTS, NodeOptions, NotebookError

__all__ = ["cell_part", "check_code", "describe_cell", "parse_node_options"]

_MAGICS = {"%%node": "node", "%%setup": "setup", "%%stop": "stop", "%%sample": "sample"}


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

    Compiled exactly as the runtime compiles it (:mod:`kernelexec.kernel.wrapping`): message code
    may ``return`` and ``await`` at top level; setup and stop code are plain scripts.
    """
    from ..kernel.wrapping import compile_node_code, compile_script

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


def cell_part(index: int, cell: Any) -> tuple[str | None, str, str]:
    """(the part ``cell`` belongs to or None, its magic's arguments, its code)."""
    tags = [t for t in cell.get("metadata", {}).get("tags", []) if t in PARTS]
    magic, args, body = _split_magic(cell.source)
    found = set(tags) | ({magic} if magic else set())
    if len(found) > 1:
        msg = f"{describe_cell(index, cell.source)} is marked as {' and '.join(sorted(found))}"
        raise NotebookError(msg + "; keep one tag or magic per cell", cell_index=index)
    return (found.pop() if found else None), args, body
