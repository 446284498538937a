"""kernelexec import: one notebook per kernelexec node; export after import round-trips."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kernelexec.commands import export, import_
from kernelexec.notebook import load_node_code, read_notebook

TAB = {"id": "tab1", "type": "tab", "label": "Flow 1"}
NODE_A = {
    "id": "a1b2c3d4e5f60718", "type": "kernelexec", "z": "tab1", "name": "Scale values",
    "func": 'factor = context.get("factor") or 2\nmsg["payload"] = [v * factor for v in '
            'msg["payload"]]\nreturn msg\n',
    "initialize": "import statistics\n", "finalize": "", "outputs": 1, "timeout": 5,
    "mode": "cold", "workers": 3, "queueLimit": 50, "keepOrder": True, "env": "env9",
    "notebook": "", "x": 400, "y": 80, "wires": [["dbg"]],
}  # fmt: skip
NODE_B = {
    "id": "0011223344556677", "type": "kernelexec", "z": "tab1", "name": "Scale values",
    "func": "node.send([msg, None])\nreturn [None, {'payload': len(str(msg))}]",
    "initialize": "", "finalize": "cleanup()", "outputs": 2, "x": 400, "y": 160,
    "wires": [[], []],
}  # fmt: skip
INJECT = {
    "id": "inj", "type": "inject", "z": "tab1", "props": [
        {"p": "payload"}, {"p": "topic", "vt": "str"}, {"p": "unit", "v": "C", "vt": "str"},
        {"p": "meta", "v": '{"room": 4}', "vt": "json"}, {"p": "raw", "v": "[1,2]", "vt": "bin"},
    ], "payload": "[1,2,3]", "payloadType": "json", "topic": "sensors",
    "wires": [["a1b2c3d4e5f60718"]],
}  # fmt: skip
FUNCTION = {"id": "fn", "type": "function", "z": "tab1", "func": "return msg;", "wires": [[]]}
FLOW = [TAB, NODE_A, NODE_B, INJECT, FUNCTION]


def write_flow(tmp_path: Path, flow: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(flow), encoding="utf-8")
    return path


def do_import(tmp_path: Path, flow: Any) -> list[Path]:
    out = tmp_path / "nbs"
    args = argparse.Namespace(flow=str(write_flow(tmp_path, flow)), output_dir=str(out))
    assert import_.run(args) == 0
    return sorted(out.glob("*.ipynb"))


def export_of(path: Path, **kw: Any) -> list[dict[str, Any]]:
    base = dict(notebook=str(path), output=None, name=None, with_test=False, tab=None,
                link=False, script=False)  # fmt: skip
    base.update(kw)
    flow: list[dict[str, Any]] = json.loads(export.export_text(argparse.Namespace(**base)))
    return flow


def test_one_valid_notebook_per_kernelexec_node(tmp_path: Path) -> None:
    paths = do_import(tmp_path, FLOW)
    assert [p.name for p in paths] == ["Scale-values-0011223344556677.ipynb", "Scale-values.ipynb"]
    for path in paths:
        nbformat.validate(nbformat.read(str(path), as_version=4))


def test_cells_are_tagged_and_magic_marked(tmp_path: Path) -> None:
    nb = read_notebook(do_import(tmp_path, FLOW)[1])
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source.split("\n")[0] for c in code] == [
        "%load_ext kernelexec", "%%setup", "msg = {'payload': [1, 2, 3],", "%%node", "%%stop",
    ]  # fmt: skip
    tags = [c.metadata.get("tags") for c in code]
    assert tags == [None, ["setup"], ["sample"], ["node"], ["stop"]]
    assert nb.metadata.kernelspec.name == "python3"
    kept = nb.metadata.kernelexec.node
    assert kept["id"] == NODE_A["id"]
    assert (kept["mode"], kept["workers"], kept["timeout"]) == ("cold", 3, 5)
    assert "func" not in kept and "wires" not in kept


def test_sample_comes_from_the_wired_inject_node(tmp_path: Path) -> None:
    code = load_node_code(do_import(tmp_path, FLOW)[1])
    assert code.sample == {"payload": [1, 2, 3], "topic": "sensors", "unit": "C",
                           "meta": {"room": 4}, "raw": b"\x01\x02"}  # fmt: skip


@pytest.mark.parametrize("original", [NODE_A, NODE_B], ids=["one-output", "two-outputs"])
def test_export_after_import_gives_back_the_same_node(tmp_path: Path, original: Any) -> None:
    paths = do_import(tmp_path, FLOW)
    path = paths[1] if original is NODE_A else paths[0]
    (node,) = export_of(path)
    for key, value in original.items():
        if key not in ("x", "y", "z", "wires"):
            assert node[key] == value, key
    assert len(node["wires"]) == original["outputs"]


def test_round_trip_with_test_nodes_keeps_the_sample(tmp_path: Path) -> None:
    path = do_import(tmp_path, FLOW)[1]
    flow = export_of(path, with_test=True)
    (again,) = do_import(tmp_path / "second", flow)
    assert load_node_code(again) == load_node_code(path)
    assert export_of(again)[0]["func"] == NODE_A["func"]


def test_notebook_export_import_export_is_stable(tmp_path: Path) -> None:
    source = "%%node --outputs 3 --name 'Split'\nreturn [msg, msg, None]"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    path = tmp_path / "split.ipynb"
    nbformat.write(nb, str(path))
    first = export_of(path, with_test=True)
    (imported,) = do_import(tmp_path, first)
    second = export_of(imported, with_test=True)
    assert imported.name == "Split.ipynb"
    for key in ("id", "name", "func", "initialize", "finalize", "outputs", "mode"):
        assert first[0][key] == second[0][key], key


def test_admin_api_v2_format_and_empty_code(tmp_path: Path) -> None:
    node = {"id": "n1", "type": "kernelexec", "name": "", "func": "", "wires": [[]]}
    (path,) = do_import(tmp_path, {"rev": "abc", "flows": [node]})
    assert path.name == "node.ipynb"
    code = load_node_code(path)
    assert (code.code, code.setup, code.stop, code.sample) == ("", "", "", {"payload": None})
    (exported,) = export_of(path)
    assert exported["name"] == "" and exported["id"] == "n1"


def test_flow_without_kernelexec_node_or_not_a_flow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(flow=str(write_flow(tmp_path, [FUNCTION])), output_dir=str(tmp_path))
    assert import_.run(args) == 1
    assert "has no kernelexec node" in capsys.readouterr().err
    args = argparse.Namespace(flow=str(write_flow(tmp_path, {"a": 1})), output_dir=str(tmp_path))
    assert import_.run(args) == 1
    assert "not a Node-RED flow" in capsys.readouterr().err


def test_inject_values_of_every_kind() -> None:
    inject = {"props": [{"p": "payload"}, {"p": "n", "v": "2.5", "vt": "num"},
                        {"p": "i", "v": "7", "vt": "num"}, {"p": "b", "v": "false", "vt": "bool"},
                        {"p": "d", "vt": "date"}],
              "payload": "", "payloadType": "date"}  # fmt: skip
    assert import_.sample_from_inject(inject) == {"payload": None, "n": 2.5, "i": 7, "b": False,
                                                  "d": None}  # fmt: skip
    legacy = {"payload": "hi", "payloadType": "str", "topic": "t"}
    assert import_.sample_from_inject(legacy) == {"payload": "hi", "topic": "t"}


def test_the_cli_commands(tmp_path: Path) -> None:
    """`kernelexec import` then `kernelexec export`, as a user types them."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kernelexec", *args], capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    flow = write_flow(tmp_path, FLOW)
    done = cli("import", str(flow), "-o", str(tmp_path / "nbs"))
    assert done.returncode == 0, done.stderr
    written = done.stdout.split()
    assert len(written) == 2 and all(Path(p).exists() for p in written)
    out = tmp_path / "again.json"
    done = cli("export", written[0], "--with-test", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text(encoding="utf-8"))[0]["func"] == NODE_A["func"]
    done = cli("export", str(flow))  # not a notebook
    assert done.returncode == 1 and "use kernelexec import" in done.stderr


def test_intro_cell_names_the_node_and_its_info(tmp_path: Path) -> None:
    node = {**NODE_B, "name": "Linked", "info": "Counts characters.", "notebook": "/srv/n.ipynb"}
    (path,) = do_import(tmp_path, [node])
    intro = read_notebook(path).cells[0]
    assert intro.cell_type == "markdown"
    assert intro.source.startswith("# Linked\n\nNode `0011223344556677` of a Node-RED flow.")
    assert "Counts characters." in intro.source and "`/srv/n.ipynb` (live link)" in intro.source
    assert export_of(path)[0]["info"] == "Counts characters."
