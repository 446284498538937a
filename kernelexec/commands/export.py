"""``kernelexec export NOTEBOOK``: a notebook's tagged cells as a Node-RED flow or a node script.

The flow is a JSON array of node objects, importable with Node-RED's Import dialog: one
``kernelexec`` node (``func``/``initialize``/``finalize`` from the node/setup/stop cells), and
with ``--with-test`` an inject node carrying the sample message and a debug node, wired.
Properties kept in the notebook's metadata (``kernelexec.node``, written by ``kernelexec
import``) are restored, including the node id, so the Import dialog can replace the node.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from ..notebook import NodeCode, NotebookError, load_node_code, read_notebook, script_from_node_code

__all__ = ["build_flow", "inject_props", "kernelexec_node", "register", "run"]

#: The kernelexec node's properties besides code and layout, with their defaults (the
#: editor's ``defaults`` in nodered-node/nodes/kernelexec.html). ``notebook`` (the live
#: link) is only written with ``--link``.
NODE_DEFAULTS: dict[str, Any] = {
    "outputs": 1,
    "timeout": 0,
    "mode": "hot",
    "workers": 1,
    "queueLimit": 1000,
    "keepOrder": False,
    "env": "",
    "stdoutToMsg": False,
}
_LAYOUT = ("x", "y", "z", "wires", "type", "func", "initialize", "finalize")


def new_id() -> str:
    """A Node-RED node id (16 hex digits, like ``RED.nodes.id()``)."""
    return secrets.token_hex(8)


def kernelexec_node(
    code: NodeCode, *, props: dict[str, Any] | None = None, name: str | None = None
) -> dict[str, Any]:
    """The ``kernelexec`` node object: defaults < ``props`` < the %%node line < ``name``."""
    node: dict[str, Any] = {"id": new_id(), "type": "kernelexec", "name": ""}
    node.update(NODE_DEFAULTS)
    node.update({k: v for k, v in (props or {}).items() if k not in _LAYOUT})
    node["type"] = "kernelexec"
    if code.name is not None:
        node["name"] = code.name
    if name is not None:
        node["name"] = name
    if code.outputs is not None:
        node["outputs"] = code.outputs
    node.update(func=code.code, initialize=code.setup, finalize=code.stop)
    node.update(x=300, y=100, wires=[[] for _ in range(int(node["outputs"]))])
    return node


def _typed(value: Any) -> tuple[str, str]:
    """(value text, inject value type) of one message property."""
    if isinstance(value, str):
        return value, "str"
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, (int, float)):
        return json.dumps(value), "num"
    if isinstance(value, (bytes, bytearray)):
        return json.dumps(list(value)), "bin"
    return json.dumps(value, default=_unsupported), "json"


def _unsupported(value: Any) -> Any:
    msg = f"sample message: cannot put a {type(value).__name__} into an inject node"
    raise NotebookError(msg)


def inject_props(sample: dict[str, Any], node: dict[str, Any]) -> None:
    """Set an inject node's ``props`` (and ``payload``/``topic``) to carry ``sample``."""
    props: list[dict[str, Any]] = []
    for key, value in sample.items():
        text, vt = _typed(value)
        if key == "payload":
            node.update(payload=text, payloadType=vt)
            props.append({"p": "payload"})
        elif key == "topic" and vt == "str":
            node["topic"] = text
            props.append({"p": "topic", "vt": "str"})
        else:
            props.append({"p": key, "v": text, "vt": vt})
    node["props"] = props


def _test_nodes(kx: dict[str, Any], sample: dict[str, Any] | None) -> list[dict[str, Any]]:
    inject: dict[str, Any] = {
        "id": new_id(), "type": "inject", "name": "sample message", "repeat": "", "crontab": "",
        "once": False, "onceDelay": 0.1, "topic": "", "payload": "", "payloadType": "date",
        "props": [{"p": "payload"}], "x": 120, "y": 100, "wires": [[kx["id"]]],
    }  # fmt: skip
    if sample is not None:
        inject_props(sample, inject)
    debug = {
        "id": new_id(), "type": "debug", "name": f"{kx['name'] or 'kernelexec'} output",
        "active": True, "tosidebar": True, "console": False, "tostatus": False,
        "complete": "true", "targetType": "full", "x": 520, "y": 100, "wires": [],
    }  # fmt: skip
    kx["wires"] = [[debug["id"]] for _ in kx["wires"]]
    return [inject, debug]


def build_flow(
    code: NodeCode,
    *,
    props: dict[str, Any] | None = None,
    name: str | None = None,
    with_test: bool = False,
    tab: str | None = None,
    notebook: str | None = None,
) -> list[dict[str, Any]]:
    """The flow (list of node objects) for ``code``; see the module docstring."""
    kx = kernelexec_node(code, props=props, name=name)
    if notebook is not None:
        kx["notebook"] = notebook
    nodes = [kx, *(_test_nodes(kx, code.sample) if with_test else [])]
    if tab is None:
        return nodes
    tab_node = {"id": new_id(), "type": "tab", "label": tab, "disabled": False, "info": ""}
    for node in nodes:
        node["z"] = tab_node["id"]
    return [tab_node, *nodes]


def _notebook_props(path: str) -> dict[str, Any]:
    if not path.endswith(".ipynb"):
        return {}
    meta = read_notebook(path).metadata.get("kernelexec", {})
    node = meta.get("node", {}) if isinstance(meta, dict) else {}
    return dict(node) if isinstance(node, dict) else {}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` command to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="export a notebook's tagged cells as a Node-RED flow or a node script",
        description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("notebook", help="the .ipynb notebook (or a node script)")
    parser.add_argument("-o", "--output", help="output file (default: standard output)")
    parser.add_argument("--name", help="node name (default: %%node --name, else the file name)")
    parser.add_argument("--with-test", action="store_true", help="add an inject and a debug node")
    parser.add_argument("--tab", metavar="LABEL", help="put the nodes on a new flow tab")
    parser.add_argument(
        "--link", action="store_true", help="set the node's notebook field: live link to this file"
    )
    parser.add_argument("--script", action="store_true", help="write a node script (.py)")
    parser.set_defaults(func=run)
    return parser


def export_text(args: argparse.Namespace) -> str:
    """The text ``kernelexec export`` writes for ``args``."""
    code = load_node_code(args.notebook)
    if args.script:
        if args.name is not None:
            code = NodeCode(code.setup, code.code, code.stop, code.sample, args.name, code.outputs)
        return script_from_node_code(code)
    props = _notebook_props(args.notebook)
    name = args.name
    if name is None and code.name is None and "name" not in props:
        name = Path(args.notebook).stem
    flow = build_flow(
        code,
        props=props,
        name=name,
        with_test=args.with_test,
        tab=args.tab,
        notebook=os.path.abspath(args.notebook) if args.link else None,
    )
    return json.dumps(flow, indent=2, ensure_ascii=False) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run ``kernelexec export``; 0 on success, 1 (message on stderr) on a notebook error."""
    try:
        text = export_text(args)
    except NotebookError as exc:
        print(f"kernelexec export: {exc}", file=sys.stderr)
        return 1
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0
