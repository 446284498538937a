"""From a :class:`~kernelexec.notebook.model.NodeCode` to a notebook with tagged cells
(``kernelexec import``) or to a node script (``kernelexec export --script``)."""

from __future__ import annotations

import shlex
from typing import Any

from .files import nbformat_module
from .model import NodeCode
from .sample import sample_source

__all__ = ["notebook_from_node_code", "script_from_node_code"]


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
    v4 = nbformat_module().v4
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
    """The node script text for ``code`` (see :mod:`kernelexec.notebook`)."""
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
