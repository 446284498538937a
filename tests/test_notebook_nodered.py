"""Exported flows in a real Node-RED runtime: the inject node sends the notebook's sample,
the kernelexec node (with its real bridge and kernel) runs the notebook's code, and each
output carries what %%node showed in the notebook for the same message."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from kernelexec.commands import export
from kernelexec.notebook import load_node_code

ROOT = Path(__file__).resolve().parent.parent
NODE_PKG = ROOT / "nodered-node"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("node") is None or not (NODE_PKG / "node_modules" / "node-red").is_dir(),
        reason="needs node and nodered-node/node_modules (npm install in nodered-node)",
    ),
]

# Loads the flow with node-red-node-test-helper: the real inject and kernelexec nodes, one
# helper node per output instead of the debug node; presses the inject; prints what arrived.
# It runs in nodered-node/ (the test helper finds Node-RED from the working directory).
RUNNER = r"""
const path = require("path");
const fs = require("fs");
const [pkg, flowFile, expected] = process.argv.slice(2);
const mod = (name) => path.join(pkg, "node_modules", name);
const helper = require(mod("node-red-node-test-helper"));
helper.init(require.resolve(mod("node-red")));
const core = path.join(pkg, "node_modules", "@node-red", "nodes", "core", "common");
const injectNode = require(path.join(core, "20-inject.js"));
const completeNode = require(path.join(core, "24-complete.js"));
const kernelexecNode = require(path.join(pkg, "nodes", "kernelexec.js"));

const flow = JSON.parse(fs.readFileSync(flowFile, "utf8")).filter((n) => n.type !== "debug");
const kx = flow.find((n) => n.type === "kernelexec");
const inject = flow.find((n) => n.type === "inject");
kx.wires = kx.wires.map((_, i) => ["out" + i]);
kx.wires.forEach((_, i) => flow.push({ id: "out" + i, z: kx.z, type: "helper", wires: [] }));
// a Complete node: the kernelexec node called done() for the message (its outputs are out)
flow.push({ id: "kx-complete", z: kx.z, type: "complete", scope: [kx.id], uncaught: false,
            wires: [["completed"]] });
flow.push({ id: "completed", z: kx.z, type: "helper", wires: [] });

const got = kx.wires.map(() => []);
let count = 0;
let completed = false;
const finish = async (code) => {
    await helper.unload();
    process.stdout.write(JSON.stringify(got) + "\n");
    process.exit(code);
};
// the message is done and what it sent has arrived (anything more would be a bug)
const finishWhenDone = () => completed && count >= Number(expected) && finish(0);
setTimeout(() => finish(1), 60000);
helper.load([injectNode, completeNode, kernelexecNode], flow, () => {
    kx.wires.forEach((_, i) => helper.getNode("out" + i).on("input", (msg) => {
        delete msg._msgid;
        got[i].push(msg);
        count++;
        finishWhenDone();
    }));
    helper.getNode("completed").on("input", () => {
        completed = true;
        finishWhenDone();
    });
    const kxNode = helper.getNode(kx.id);
    kxNode.on("call:error", (c) => process.stderr.write("error: " + c.args[0] + "\n"));
    helper.getNode(inject.id).receive({});
});
"""


def quiet_shell() -> Config:
    """An in-process IPython shell without a history database (no thread, no file)."""
    config = Config()
    config.HistoryManager.enabled = False
    config.HistoryManager.hist_file = ":memory:"
    return config


def magic_outputs(notebook: Path) -> list[list[dict[str, Any]]]:
    """What %%node gives for the notebook's setup, code and sample, in this process."""
    code = load_node_code(notebook)
    shell = InteractiveShell.instance(config=quiet_shell())
    shell.run_line_magic("load_ext", "kernelexec")
    try:
        shell.run_cell_magic("setup", "", code.setup)
        shell.user_ns["msg"] = code.sample
        result = shell.run_cell_magic("node", f"--outputs {code.outputs} --quiet", code.code)
        assert result is None
        outputs: list[list[dict[str, Any]]] = shell.user_ns["_node_result"].outputs
        return json.loads(json.dumps(outputs))
    finally:
        shell.run_line_magic("unload_ext", "kernelexec")


def nodered_outputs(notebook: Path, tmp_path: Path, expected: int) -> list[list[dict[str, Any]]]:
    args = argparse.Namespace(notebook=str(notebook), output=None, name=None, with_test=True,
                              tab="Exported", link=False, script=False)  # fmt: skip
    flow_file = tmp_path / "flow.json"
    flow_file.write_text(export.export_text(args), encoding="utf-8")
    runner = tmp_path / "run.js"
    runner.write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "KERNELEXEC_PYTHON": sys.executable}
    proc = subprocess.Popen(
        ["node", str(runner), str(NODE_PKG), str(flow_file), str(expected)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=NODE_PKG,
    )  # fmt: skip
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{out}\n{err}"
    assert not bridges_of(proc.pid), "the bridge outlived Node-RED"
    outputs: list[list[dict[str, Any]]] = json.loads(out.strip().splitlines()[-1])
    return outputs


def bridges_of(pid: int, timeout: float = 10.0) -> list[psutil.Process]:
    """Bridge processes Node-RED process ``pid`` started that are still alive."""
    mine = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and f"{pid}" in cmdline and "--parent-pid" in cmdline:
            mine.append(process)
    _, alive = psutil.wait_procs(mine, timeout=timeout)
    return alive


@pytest.mark.parametrize(("name", "expected"), [("tutorial.ipynb", 2), ("iot-pandas.ipynb", 2)])
def test_exported_flow_in_node_red_matches_the_notebook(
    name: str, expected: int, tmp_path: Path
) -> None:
    notebook = ROOT / "notebooks" / name
    in_notebook = magic_outputs(notebook)
    assert sum(len(port) for port in in_notebook) == expected
    assert nodered_outputs(notebook, tmp_path, expected) == in_notebook
