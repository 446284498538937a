"""kernelexec export: tagged notebook cells -> a Node-RED flow or a node script."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import nbformat
import nbformat.v4 as v4
import pytest

from kernelexec.commands import export
from kernelexec.notebook import (
    NodeCode,
    NotebookError,
    load_node_code,
    node_code_from_notebook,
    parse_node_options,
    parse_sample,
    parse_script,
    script_from_node_code,
)


def cell(source: str, *tags: str) -> Any:
    return v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})


def notebook(*cells: Any) -> Any:
    return v4.new_notebook(cells=[v4.new_markdown_cell("# title"), *cells])


def write(tmp_path: Path, nb: Any, name: str = "thermo.ipynb") -> Path:
    path = tmp_path / name
    nbformat.write(nb, str(path))
    return path


def args(path: Path, **kw: Any) -> argparse.Namespace:
    base = dict(notebook=str(path), output=None, name=None, with_test=False, tab=None,
                link=False, script=False)  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


THERMO = notebook(
    cell("%load_ext kernelexec"),
    cell("import math\nLIMIT = 25", "setup"),
    cell('msg = {"payload": 21.5, "topic": "kitchen"}', "sample"),
    cell(
        "%%node --outputs 2\nif msg['payload'] > LIMIT:\n    return [None, msg]\nreturn [msg, None]"
    ),
    cell("%%stop\nprint('bye')"),
    cell("assert _node_result is not None", "other-tag"),
)


def test_tagged_and_magic_cells_give_the_node_code() -> None:
    code = node_code_from_notebook(THERMO)
    assert code == NodeCode(
        setup="import math\nLIMIT = 25",
        code="if msg['payload'] > LIMIT:\n    return [None, msg]\nreturn [msg, None]",
        stop="print('bye')",
        sample={"payload": 21.5, "topic": "kitchen"},
        outputs=2,
    )


def test_several_setup_cells_are_joined_in_order() -> None:
    nb = notebook(cell("import a", "setup"), cell("return msg", "node"), cell("%%setup\nb = 1"))
    assert node_code_from_notebook(nb).setup == "import a\n\nb = 1"


def test_flow_has_the_kernelexec_node_with_code_and_defaults(tmp_path: Path) -> None:
    flow = json.loads(export.export_text(args(write(tmp_path, THERMO))))
    assert len(flow) == 1
    node = flow[0]
    assert node["type"] == "kernelexec"
    assert node["name"] == "thermo"  # the file name when nothing else names the node
    assert node["func"].startswith("if msg['payload'] > LIMIT")
    assert node["initialize"] == "import math\nLIMIT = 25"
    assert node["finalize"] == "print('bye')"
    assert node["outputs"] == 2 and node["wires"] == [[], []]
    assert (node["mode"], node["workers"], node["timeout"]) == ("hot", 1, 0)
    assert (node["queueLimit"], node["keepOrder"], node["env"]) == (1000, False, "")
    assert len(node["id"]) == 16 and int(node["id"], 16) >= 0
    assert "z" not in node  # Node-RED's Import dialog puts it on the current tab


def test_with_test_adds_inject_with_sample_and_debug_wired(tmp_path: Path) -> None:
    flow = json.loads(export.export_text(args(write(tmp_path, THERMO), with_test=True)))
    kx, inject, debug = flow
    assert inject["type"] == "inject" and inject["wires"] == [[kx["id"]]]
    assert (inject["payload"], inject["payloadType"], inject["topic"]) == ("21.5", "num", "kitchen")
    assert inject["props"] == [{"p": "payload"}, {"p": "topic", "vt": "str"}]
    assert debug["type"] == "debug" and kx["wires"] == [[debug["id"]], [debug["id"]]]
    assert len({n["id"] for n in flow}) == 3


def test_sample_property_types_reach_the_inject_node() -> None:
    sample = {"payload": {"a": [1, None]}, "flag": True, "n": 3, "s": "x", "raw": b"\x00\xff"}
    flow = export.build_flow(NodeCode(sample=sample), with_test=True)
    inject = flow[1]
    assert (inject["payload"], inject["payloadType"]) == ('{"a": [1, null]}', "json")
    assert inject["props"][1:] == [
        {"p": "flag", "v": "true", "vt": "bool"},
        {"p": "n", "v": "3", "vt": "num"},
        {"p": "s", "v": "x", "vt": "str"},
        {"p": "raw", "v": "[0, 255]", "vt": "bin"},
    ]


def test_tab_name_and_link_options(tmp_path: Path) -> None:
    path = write(tmp_path, THERMO)
    flow = json.loads(
        export.export_text(args(path, tab="Prototypes", name="Thermo", link=True, with_test=True))
    )
    tab, kx = flow[0], flow[1]
    assert tab["type"] == "tab" and tab["label"] == "Prototypes"
    assert all(n["z"] == tab["id"] for n in flow[1:])
    assert kx["name"] == "Thermo"
    assert kx["notebook"] == str(path.resolve())


def test_node_line_name_is_used(tmp_path: Path) -> None:
    nb = notebook(cell("%%node --name 'Heat alarm'\nreturn msg"))
    flow = json.loads(export.export_text(args(write(tmp_path, nb))))
    assert flow[0]["name"] == "Heat alarm"


def test_run_writes_the_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "flow.json"
    assert export.run(args(write(tmp_path, THERMO), output=str(out))) == 0
    assert json.loads(out.read_text())[0]["type"] == "kernelexec"
    assert export.run(args(write(tmp_path, THERMO))) == 0
    assert json.loads(capsys.readouterr().out)[0]["type"] == "kernelexec"


def test_script_round_trips_through_parse_script(tmp_path: Path) -> None:
    text = export.export_text(args(write(tmp_path, THERMO), script=True))
    assert "# %% setup\nimport math\nLIMIT = 25\n" in text
    assert "# %% node --outputs 2\nif msg['payload'] > LIMIT:" in text
    assert parse_script(text) == node_code_from_notebook(THERMO)
    script = tmp_path / "thermo.py"
    script.write_text(text)
    assert load_node_code(script) == node_code_from_notebook(THERMO)


def test_script_without_markers_is_all_message_code() -> None:
    assert parse_script("x = msg['payload']\nreturn msg\n").code == "x = msg['payload']\nreturn msg"


def test_script_keeps_name_and_empty_parts() -> None:
    text = script_from_node_code(NodeCode(code="return msg", name="my node"))
    assert text.splitlines()[1:] == ["# %% setup", "# %% node --name 'my node'", "return msg",
                                     "# %% stop"]  # fmt: skip
    assert parse_script(text) == NodeCode(code="return msg", name="my node")


# ---- errors name the cell ---------------------------------------------------------------


def error_of(nb: Any) -> NotebookError:
    with pytest.raises(NotebookError) as info:
        node_code_from_notebook(nb)
    return info.value


def test_no_node_cell() -> None:
    err = error_of(notebook(cell("import x", "setup")))
    assert "no node cell" in str(err) and "%%node" in str(err)


def test_two_node_cells_are_both_named() -> None:
    err = error_of(notebook(cell("return msg", "node"), cell("x = 1"), cell("%%node\nreturn 2")))
    text = str(err)
    assert "2 node cells" in text
    assert "cell 2 (index 1: 'return msg')" in text
    assert "cell 4 (index 3: '%%node')" in text
    assert err.cell_index == 3


def test_invalid_python_names_cell_index_first_line_and_line() -> None:
    err = error_of(notebook(cell("a = 1"), cell("y = (\nreturn msg +", "node")))
    text = str(err)
    assert text.startswith("cell 3 (index 2: 'y = (')")
    assert "node code is not valid Python" in text and "line " in text
    assert err.cell_index == 2 and err.code == "BAD_CONFIG"


def test_invalid_setup_code_is_named_too() -> None:
    err = error_of(notebook(cell("%%setup\nimport"), cell("return msg", "node")))
    assert str(err).startswith("cell 2 (index 1: '%%setup')") and "setup code" in str(err)


def test_top_level_return_and_await_are_valid_node_code() -> None:
    code = "import asyncio\nawait asyncio.sleep(0)\nif msg:\n    return msg\nreturn None"
    assert node_code_from_notebook(notebook(cell(code, "node"))).code == code


def test_top_level_yield_is_rejected_like_the_runtime_does() -> None:
    err = error_of(notebook(cell("yield msg\nreturn msg", "node")))
    assert "node.send" in str(err)


def test_cell_with_two_roles_is_an_error() -> None:
    err = error_of(notebook(cell("%%node\nreturn msg", "setup")))
    assert "marked as node and setup" in str(err) and err.cell_index == 1


def test_bad_sample_and_bad_options() -> None:
    err = error_of(notebook(cell("msg = make()", "sample"), cell("return msg", "node")))
    assert str(err).startswith("cell 2 (index 1: 'msg = make()'): sample")
    err = error_of(notebook(cell("%%node --outputs x\nreturn msg")))
    assert "--outputs" in str(err) and err.cell_index == 1


def test_unreadable_notebook_and_run_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    assert export.run(args(bad)) == 1
    assert "bad.ipynb: cannot read the notebook" in capsys.readouterr().err
    path = write(tmp_path, notebook(cell("x = 1")), "empty.ipynb")
    assert export.run(args(path)) == 1
    assert f"{path}: no node cell" in capsys.readouterr().err


def test_sample_forms() -> None:
    assert parse_sample('{"payload": true, "x": null}') == {"payload": True, "x": None}
    assert parse_sample("msg = {'payload': b'ab', 't': (1, 2)}") == {"payload": b"ab", "t": (1, 2)}
    assert parse_sample("{'payload': 1}") == {"payload": 1}
    with pytest.raises(ValueError, match="must be a dict"):
        parse_sample("[1, 2]")


def test_node_options() -> None:
    opts = parse_node_options("--msg m2 --outputs 3 --name 'a b' --timeout 1.5 --no-raise")
    assert (opts.msg, opts.outputs, opts.name, opts.timeout, opts.no_raise) == (
        "m2", 3, "a b", 1.5, True
    )  # fmt: skip
    with pytest.raises(NotebookError, match="0 to 32"):
        parse_node_options("--outputs 40")
    with pytest.raises(NotebookError, match="unrecognized"):
        parse_node_options("--bogus")
