"""The notebooks in notebooks/: run each with nbclient on a real kernel, check its outputs."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from kernelexec.commands import export
from kernelexec.notebook import load_node_code

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["tutorial.ipynb", "image-processing.ipynb", "iot-pandas.ipynb"]


def kernel_children() -> list[psutil.Process]:
    """Kernel processes this test process started (a session gateway's kernels are not)."""
    found = []
    for process in psutil.Process().children():
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "ipykernel_launcher" in cmdline or "kernelexec.kernel" in cmdline:
            found.append(process)
    return found


def test_every_notebook_is_listed() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_clean_and_exportable(name: str) -> None:
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit without outputs"
    code = load_node_code(NOTEBOOKS / name)
    assert code.outputs == 2 and code.name
    args = argparse.Namespace(notebook=str(NOTEBOOKS / name), output=None, name=None,
                              with_test=True, tab=None, link=False, script=False)  # fmt: skip
    flow = json.loads(export.export_text(args))
    assert [n["type"] for n in flow] == ["kernelexec", "inject", "debug"]
    assert flow[0]["func"] == code.code and flow[0]["initialize"] == code.setup


@pytest.fixture(scope="module", params=NAMES)
def executed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The notebook after a run in a copy of notebooks/ (cells that fail fail the test)."""
    name: str = request.param
    workdir = tmp_path_factory.mktemp(name.split(".")[0])
    shutil.copy(NOTEBOOKS / name, workdir / name)
    nb = nbformat.read(str(workdir / name), as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    assert not kernel_children(), "nbclient left a kernel running"
    return name, nb


def outputs(nb: Any, first_line: str) -> list[Any]:
    """Outputs of the first code cell whose first line starts with ``first_line``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(first_line):
            found: list[Any] = cell.outputs
            return found
    raise AssertionError(f"no cell starts with {first_line!r}")


def text(outs: list[Any], mime: str = "text/plain") -> str:
    parts = [o.get("text", "") for o in outs if o.output_type == "stream"]
    parts += [o.data.get(mime, "") for o in outs if "data" in o]
    return "".join(parts)


def normalized(value: str) -> str:
    return re.sub(r"\d+\.\d ms", "T ms", value)


@pytest.mark.slow
def test_notebook_runs_and_shows_its_node(executed: Any) -> None:
    name, nb = executed
    nbformat.validate(nb)
    node_out = outputs(nb, "%%node")
    assert [o.output_type for o in node_out] == ["execute_result"]
    assert "<table>" in node_out[0].data["text/html"]
    checks = {"tutorial.ipynb": check_tutorial, "image-processing.ipynb": check_image,
              "iot-pandas.ipynb": check_iot}  # fmt: skip
    checks[name](nb)


def check_tutorial(nb: Any) -> None:
    assert normalized(text(outputs(nb, "%%node"))) == (
        "Greenhouse summary: 2 outputs, T ms\n"
        "  port 0 -> 1 message\n"
        "    {'topic': 'greenhouse/1', 'payload': {'n': 4, 'mean': 25.45, 'max': 35.2}}\n"
        "  port 1 -> 1 message\n"
        "    {'topic': 'greenhouse/1', 'payload': 'too hot: 35.2 °C'}\n"
        "  status: {'fill': 'green', 'shape': 'dot', 'text': '1 batches'}"
    )
    assert "port 1 -> nothing" in text(outputs(nb, "%node --msg cool"))
    broken = text(outputs(nb, "%node --msg broken"))
    assert 'File "<node Greenhouse summary>", line 8' in broken
    assert "closing after 2 batches" in text(outputs(nb, "%%stop"))
    assert "('inject', 'sample message')" in text(outputs(nb, "import json"))
    assert "# %% node --outputs 2 --name 'Greenhouse summary'" in text(
        outputs(nb, "!{sys.executable} -m kernelexec export tutorial.ipynb --script")
    )


def check_image(nb: Any) -> None:
    html = text(outputs(nb, "%%node"), "text/html")
    assert "data:image/png;base64," in html  # the thumbnail, drawn inline
    assert "{'payload': <Buffer" in text(outputs(nb, "%%node"))
    assert outputs(nb, "%node --msg big --quiet") == []
    assert "UnidentifiedImageError" in text(outputs(nb, "%node --msg not_an_image"))
    shown = [o for o in outputs(nb, "thumb = Image.open") if "image/png" in o.get("data", {})]
    assert shown, "the thumbnail is displayed"


def check_iot(nb: Any) -> None:
    assert any("image/png" in o.get("data", {}) for o in outputs(nb, "%matplotlib inline"))
    node_text = text(outputs(nb, "%%node"))
    assert "port 1 -> 1 message" in node_text and "'reason': 'out of range'" in node_text
    assert "2 anomalies in 12 readings" in node_text
    assert "port 1 -> nothing" in text(outputs(nb, "%node --msg calm"))
    assert "stdout" not in node_text, "no warnings printed by the node code"


@pytest.fixture(autouse=True, scope="module")
def _no_kernel_left() -> Iterator[None]:
    yield
    assert not kernel_children()
