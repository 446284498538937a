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

Modules (each re-exported here, so callers write ``from kernelexec.notebook import ...``)::

    model.py    NodeCode, NodeOptions, NotebookError, PARTS
    cells.py    one cell: its part (tag or %%magic), %%node options, compile check, its name
    sample.py   the sample message: parse_sample, sample_source
    files.py    nbformat imported lazily; read_notebook, write_notebook
    reading.py  notebook or script -> NodeCode: load_node_code, parse_script (export, live link)
    writing.py  NodeCode -> notebook or script (import, export --script)
    watch.py    the live link: watch_notebook, NotebookChange
"""

from __future__ import annotations

from .cells import check_code, parse_node_options
from .cells import describe_cell as describe_cell
from .files import read_notebook, write_notebook
from .model import PARTS, NodeCode, NodeOptions, NotebookError
from .reading import load_node_code, node_code_from_notebook, parse_script
from .sample import parse_sample, sample_source
from .watch import ChangeCallback as ChangeCallback
from .watch import NotebookChange, watch_notebook
from .writing import notebook_from_node_code, script_from_node_code

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
