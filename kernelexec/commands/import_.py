"""``kernelexec import FLOW``: one notebook per ``kernelexec`` node of a Node-RED flow file.

Each notebook has a ``%load_ext kernelexec`` cell, then the setup, sample, node and stop cells
(tagged, and starting with their ``%%`` magic so they run in Jupyter). The sample message comes
from an inject node wired to the kernelexec node, if there is one. The node's other properties
(id, outputs, timeout, mode, ...) go into the notebook metadata, so ``kernelexec export`` gives
back the same node.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..notebook import NodeCode, NotebookError, notebook_from_node_code, write_notebook

__all__ = [
    "import_flow",
    "node_code_from_node",
    "read_flow",
    "register",
    "run",
    "sample_from_inject",
]

_CODE_FIELDS = ("func", "initialize", "finalize", "x", "y", "z", "wires", "type")


def read_flow(path: str) -> list[dict[str, Any]]:
    """The node objects of a flow file: a JSON array, or ``{"flows": [...]}`` (Admin API v2)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{path}: cannot read the flow: {str(exc)[:200]}"
        raise NotebookError(msg) from None
    if isinstance(data, dict):
        data = data.get("flows")
    if not isinstance(data, list) or not all(isinstance(n, dict) for n in data):
        msg = f"{path}: not a Node-RED flow (expected a JSON array of node objects)"
        raise NotebookError(msg)
    return data


def _value(text: Any, vt: str | None) -> Any:
    if vt == "json":
        return json.loads(text) if text not in (None, "") else None
    if vt == "num":
        number = float(text)
        return int(number) if number.is_integer() and "." not in str(text) else number
    if vt == "bool":
        return text in (True, "true")
    if vt == "bin":
        return bytes(json.loads(text or "[]"))
    if vt == "date":
        return None  # a timestamp when injected; no fixed value to show
    return "" if text is None else str(text)


def sample_from_inject(inject: dict[str, Any]) -> dict[str, Any]:
    """The message an inject node sends (fixed values; dates and context lookups as None)."""
    props = inject.get("props")
    if not isinstance(props, list):
        props = [{"p": "payload"}, {"p": "topic", "vt": "str"}]
    sample: dict[str, Any] = {}
    for prop in props:
        key = prop.get("p")
        if key == "payload" and "v" not in prop:
            sample[key] = _value(inject.get("payload"), inject.get("payloadType"))
        elif key == "topic" and "v" not in prop:
            sample[key] = str(inject.get("topic", ""))
        elif isinstance(key, str):
            sample[key] = _value(prop.get("v"), prop.get("vt"))
    return sample


def _inject_for(node_id: str, flow: list[dict[str, Any]]) -> dict[str, Any] | None:
    for other in flow:
        wires = other.get("wires") or []
        if other.get("type") == "inject" and any(node_id in port for port in wires):
            return other
    return None


def node_code_from_node(node: dict[str, Any], flow: list[dict[str, Any]]) -> NodeCode:
    """The code parts of one ``kernelexec`` node object."""
    inject = _inject_for(str(node.get("id")), flow)
    outputs = node.get("outputs")
    return NodeCode(
        setup=str(node.get("initialize") or ""),
        code=str(node.get("func") or ""),
        stop=str(node.get("finalize") or ""),
        sample=sample_from_inject(inject) if inject else None,
        outputs=int(outputs) if isinstance(outputs, (int, float)) else None,
    )


def _file_name(node: dict[str, Any], taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(node.get("name") or "")).strip("-.") or "node"
    name = f"{stem}.ipynb"
    if name in taken:
        name = f"{stem}-{node.get('id')}.ipynb"
    taken.add(name)
    return name


def import_flow(flow: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write one notebook per kernelexec node of ``flow`` into ``out_dir``; their paths."""
    written: list[Path] = []
    taken: set[str] = set()
    for node in flow:
        if node.get("type") != "kernelexec":
            continue
        props = {k: v for k, v in node.items() if k not in _CODE_FIELDS}
        nb = notebook_from_node_code(node_code_from_node(node, flow), node=props)
        path = out_dir / _file_name(node, taken)
        write_notebook(nb, path)
        written.append(path)
    return written


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``import`` command to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "import",
        help="write one notebook per kernelexec node of a Node-RED flow file",
        description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("flow", help="flow JSON file (Node-RED Export, or flows.json)")
    parser.add_argument("-o", "--output-dir", default=".", help="directory for the notebooks")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kernelexec import``; prints the notebooks written; 1 if there is none."""
    try:
        flow = read_flow(args.flow)
    except NotebookError as exc:
        print(f"kernelexec import: {exc}", file=sys.stderr)
        return 1
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = import_flow(flow, out_dir)
    if not written:
        print(f"kernelexec import: {args.flow} has no kernelexec node", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
