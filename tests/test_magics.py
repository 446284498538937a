"""%%node and friends: the same results as a flow's pool on the same code and message.

The flow side runs each case through a real pool (make_pool: real kernels, the worker's ops);
the notebook side runs the same cases with %%node in one real notebook kernel (nbclient).
Both results are reduced to what the next node would receive (per port, node.send messages
first, then the returned ones) and compared.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat.v4 as v4
import pytest
from IPython.core.interactiveshell import InteractiveShell
from nbclient import NotebookClient
from server_support import wait_for_file
from traitlets.config import Config

from kernelexec.config import PoolConfig
from kernelexec.kernel.convert import from_json, to_json
from kernelexec.magics import NodeCodeError, NodeResult
from kernelexec.pool import MemoryHooks, make_pool


@dataclass
class Case:
    name: str
    code: str
    msgs: list[dict[str, Any]]
    setup: str = ""
    outputs: int = 1
    timeout: float = 0.0
    compare: tuple[str, ...] = ("outputs", "logs", "stdout", "status", "error")
    results: list[Any] = field(default_factory=list)


CASES = [
    Case("ports", "if msg['payload'] > 1:\n    return [None, msg, [msg, {'payload': 0}]]\n"
         "return [msg, None]", [{"payload": 5, "topic": "t"}, {"payload": 1}], outputs=3),
    Case("script_style", "result = payload * 2\noutput_topic = 'doubled'", [{"payload": 21}]),
    Case("send_log_status", "node.send({'payload': 'first'})\nnode.warn('careful')\n"
         "node.log('info line')\nnode.status(fill='green', shape='dot', text='ok')\n"
         "print('printed')\nreturn {'payload': 'last'}", [{"payload": None}]),
    Case("context", "n = (context.get('kx_count') or 0) + 1\ncontext.set('kx_count', n)\n"
         "flow.set('kx_last', msg['payload'])\nreturn {'payload': [n, flow.get('kx_last')]}",
         [{"payload": "a"}, {"payload": "b"}]),
    Case("conversions", "import datetime\nimport numpy as np\nimport pandas as pd\n"
         "df = pd.DataFrame({'s': ['a', 'b'], 'v': [1.5, float('nan')]})\n"
         "return {'payload': {'df': df, 'arr': np.arange(3), 'mean': np.float64(2.5),\n"
         "  'when': datetime.datetime(2026, 1, 2, 3, 4, 5), 'inf': float('inf'),\n"
         "  'tup': (1, 2), 'raw': msg['payload'][::-1]}}", [{"payload": b"\x00\x01\xff"}]),
    Case("setup_state", "return {'payload': scale(msg['payload'])}", [{"payload": 2}],
         setup="FACTOR = 10\ndef scale(x):\n    return x * FACTOR"),
    Case("async", "import asyncio\nawait asyncio.sleep(0.01)\nreturn {'payload': 'awaited'}",
         [{"payload": 0}]),
    Case("user_error", "x = 1\ny = msg['missing']\nreturn msg", [{"payload": 1}],
         compare=("outputs", "error")),
    Case("node_error", "node.error('bad input', msg)\nreturn None", [{"payload": 1}],
         compare=("outputs", "error")),
    Case("bad_return", "return 42", [{"payload": 1}], compare=("outputs", "error")),
    Case("timeout", "import time\ntime.sleep(10)\nreturn msg", [{"payload": 1}],
         timeout=0.5, compare=("outputs", "error_code")),
]  # fmt: skip


def reduce(view: dict[str, Any], case: Case) -> dict[str, Any]:
    """The parts of a result both sides must agree on."""
    out = {k: view[k] for k in case.compare if k in view}
    if "error" in case.compare and view["error"] is not None:
        error = view["error"]
        out["error"] = {k: error[k] for k in ("code", "type", "message", "line")}
    if "error_code" in case.compare:
        out["error_code"] = view["error"] and view["error"]["code"]
    return out


# ---- the flow side: a real pool ---------------------------------------------------------


async def flow_results(case: Case) -> list[dict[str, Any]]:
    hooks = MemoryHooks()
    config = PoolConfig.from_dict(
        f"magic-{case.name}",
        {"name": case.name, "code": case.code, "setup": case.setup, "outputs": case.outputs,
         "timeout": case.timeout},
    )  # fmt: skip
    pool = make_pool(config, hooks)
    await pool.start()
    views = []
    try:
        for index, msg in enumerate(case.msgs):
            req_id = f"{case.name}-{index}"
            result = await pool.submit(req_id, to_json(msg, use_blobs=False))
            sends = [e for _, e in hooks.events if e["type"] == "send" and e["req_id"] == req_id]
            status = [e["status"] for _, e in hooks.events if e["type"] == "status"]
            hooks.events.clear()
            outputs: list[list[Any]] = [[] for _ in result["outputs"]]
            for event in sends:
                for port, messages in zip(outputs, event["outputs"], strict=True):
                    port.extend(messages)
            for port, messages in zip(outputs, result["outputs"], strict=True):
                port.extend(messages)
            views.append({
                "outputs": from_json(outputs), "logs": result["logs"], "stdout": result["stdout"],
                "status": status, "error": result["error"],
            })  # fmt: skip
    finally:
        await pool.close()
    return views


# ---- the notebook side: %%node in a real kernel -----------------------------------------

DUMP = (
    "import json as _json\nfrom kernelexec.kernel.convert import to_json as _to_json\n"
    "print('RESULT ' + _json.dumps(_to_json({'outputs': _node_result.outputs, "
    "'logs': _node_result.logs, 'stdout': _node_result.stdout, 'status': _node_result.status, "
    "'error': _node_result.error}, use_blobs=False)))"
)


def notebook_cells(cases: list[Case]) -> list[Any]:
    cells = [v4.new_code_cell("%load_ext kernelexec")]
    for case in cases:
        if case.setup:
            cells.append(v4.new_code_cell(f"%%setup\n{case.setup}"))
        opts = f"--outputs {case.outputs} --name {case.name} --timeout {case.timeout} --no-raise"
        for index, msg in enumerate(case.msgs):
            cells.append(v4.new_code_cell(f"msg = {msg!r}"))
            if index == 0:
                cells.append(v4.new_code_cell(f"%%node {opts}\n{case.code}"))
            else:
                cells.append(v4.new_code_cell("%node"))
            cells.append(v4.new_code_cell(DUMP, metadata={"case": case.name}))
    return cells


def notebook_results(cases: list[Case]) -> dict[str, list[dict[str, Any]]]:
    nb = v4.new_notebook(cells=notebook_cells(cases))
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    found: dict[str, list[dict[str, Any]]] = {}
    for cell in nb.cells:
        if "case" in cell.metadata:
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            line = next(ln for ln in text.splitlines() if ln.startswith("RESULT "))
            found.setdefault(cell.metadata["case"], []).append(from_json(json.loads(line[7:])))
    return found


@pytest.fixture(scope="module")
def both_sides() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    async def flows() -> dict[str, list[dict[str, Any]]]:
        views = await asyncio.gather(*(flow_results(c) for c in CASES))
        return {c.name: v for c, v in zip(CASES, views, strict=True)}

    yield asyncio.run(flows()), notebook_results(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_magic_matches_the_flow(
    case: Case, both_sides: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    flow, notebook = both_sides
    assert len(flow[case.name]) == len(notebook[case.name]) == len(case.msgs)
    for flow_view, nb_view in zip(flow[case.name], notebook[case.name], strict=True):
        assert reduce(nb_view, case) == reduce(flow_view, case)


@pytest.mark.slow
def test_expected_values_on_both_sides(both_sides: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Not only equal: right (a bug on both sides would otherwise pass)."""
    _, nb = both_sides
    five = {"payload": 5, "topic": "t"}
    assert nb["ports"][0]["outputs"] == [[], [five], [five, {"payload": 0}]]
    assert nb["script_style"][0]["outputs"] == [[{"payload": 42, "topic": "doubled"}]]
    assert nb["send_log_status"][0]["outputs"] == [[{"payload": "first"}, {"payload": "last"}]]
    assert {"level": "warn", "text": "careful"} in nb["send_log_status"][0]["logs"]
    assert nb["send_log_status"][0]["stdout"] == "printed\n"
    assert [r["outputs"][0][0]["payload"] for r in nb["context"]] == [[1, "a"], [2, "b"]]
    payload = nb["conversions"][0]["outputs"][0][0]["payload"]
    assert payload["df"] == [{"s": "a", "v": 1.5}, {"s": "b", "v": None}]
    assert (payload["arr"], payload["inf"], payload["raw"]) == ([0, 1, 2], None, b"\xff\x01\x00")
    assert payload["when"] == "2026-01-02T03:04:05"
    assert nb["setup_state"][0]["outputs"] == [[{"payload": 20}]]
    error = nb["user_error"][0]["error"]
    assert (error["code"], error["type"], error["line"]) == ("USER_ERROR", "KeyError", 2)
    assert 'File "<node user_error>", line 2' in error["traceback"]
    assert nb["timeout"][0]["error"]["code"] == "TIMEOUT"


# ---- in-process: the magics' own behaviour ----------------------------------------------


def quiet_shell() -> Config:
    """An in-process IPython shell without a history database (no thread, no file)."""
    config = Config()
    config.HistoryManager.enabled = False
    config.HistoryManager.hist_file = ":memory:"
    return config


@pytest.fixture
def shell() -> Iterator[Any]:
    sh = InteractiveShell.instance(config=quiet_shell())
    sh.run_line_magic("load_ext", "kernelexec")
    yield sh
    sh.run_line_magic("unload_ext", "kernelexec")
    for name in ("msg", "other", "_node_result", "node", "context", "flow", "global_", "env"):
        sh.user_ns.pop(name, None)


def run(shell: Any, source: str) -> Any:
    result = shell.run_cell(source)
    return result


def test_result_is_returned_and_stored(shell: Any) -> None:
    shell.user_ns["msg"] = {"payload": [1, 2]}
    out = run(shell, "%%node --name Sum\nreturn {'payload': sum(msg['payload'])}")
    assert out.success and isinstance(out.result, NodeResult)
    assert shell.user_ns["_node_result"] is out.result
    assert out.result.first == {"payload": 3} and out.result.port(0) == [{"payload": 3}]
    assert repr(out.result).splitlines()[:3] == [
        f"Sum: 1 output, {out.result.exec_ms:.1f} ms", "  port 0 -> 1 message",
        "    {'payload': 3}",
    ]  # fmt: skip


def test_the_notebook_msg_is_not_changed(shell: Any) -> None:
    shell.user_ns["msg"] = {"payload": 1}
    run(shell, "%%node\nmsg['payload'] = 99\nreturn msg")
    assert shell.user_ns["msg"] == {"payload": 1}  # every message is a fresh copy in a flow
    assert shell.user_ns["_node_result"].first == {"payload": 99}


def test_setup_cell_and_ordinary_cells_share_the_namespace(
    shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(shell, "%%setup\nLIMIT = 3\nprint('set up')").success
    assert "set up" in capsys.readouterr().out
    run(shell, "OFFSET = 100\nmsg = {'payload': 1}")
    out = run(shell, "%%node\nreturn {'payload': msg['payload'] + LIMIT + OFFSET}")
    assert out.result.first == {"payload": 104}


def test_error_fails_the_cell_with_the_user_traceback(shell: Any) -> None:
    shell.user_ns["msg"] = {"payload": 1}
    out = run(shell, "%%node\nx = 1\nraise ValueError('boom')")
    assert not out.success and isinstance(out.error_in_exec, NodeCodeError)
    lines = out.error_in_exec._render_traceback_()
    assert lines[0] == "USER_ERROR: node code failed"
    assert any('File "<node code>", line 2' in line for line in lines)
    assert not any("kernelexec" in line for line in lines[1:])
    assert shell.user_ns["_node_result"].error["line"] == 2


def test_no_raise_shows_the_error(shell: Any) -> None:
    shell.user_ns["msg"] = {"payload": 1}
    out = run(shell, "%%node --no-raise\nreturn msg +")
    assert out.success and out.result.error["code"] == "SYNTAX_ERROR"
    assert "error: invalid syntax" in repr(out.result)


def test_line_form_reruns_the_last_node_cell(shell: Any) -> None:
    run(shell, "other = {'payload': 5}\nmsg = {'payload': 1}")
    run(shell, "%%node --outputs 2\nreturn [None, {'payload': msg['payload'] * 2}]")
    out = run(shell, "%node --msg other")
    assert out.result.outputs == [[], [{"payload": 10}]]
    out = run(shell, "%node --quiet")
    assert out.result is None and shell.user_ns["_node_result"].outputs == [[], [{"payload": 2}]]


def test_errors_of_the_magics_themselves(shell: Any) -> None:
    out = run(shell, "%node")
    assert not out.success and "run a %%node cell first" in str(out.error_in_exec)
    out = run(shell, "%%node --msg nothing_here\nreturn msg")
    assert not out.success and "no variable 'nothing_here'" in str(out.error_in_exec)
    out = run(shell, "%%node --outputs many\nreturn msg")
    assert not out.success and "--outputs" in str(out.error_in_exec)


def test_sample_magic(shell: Any) -> None:
    assert run(shell, "%%sample\nsensor = {'payload': 21.5, 'ok': True}").success
    assert shell.user_ns["sensor"] == {"payload": 21.5, "ok": True}
    assert run(shell, '%%sample\n{"payload": null}').success
    assert shell.user_ns["msg"] == {"payload": None}
    out = run(shell, "%%sample\nmsg = make_msg()")
    assert not out.success and "literal" in str(out.error_in_exec)


def test_stop_cell_and_setup_errors(shell: Any) -> None:
    out = run(shell, "%%setup\nimport does_not_exist_kx")
    assert not out.success and out.error_in_exec.error["code"] == "SETUP_FAILED"
    assert run(shell, "%%stop\nSTOPPED = True").success and shell.user_ns["STOPPED"] is True


def test_html_shows_images_and_buffers() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(20)
    result = NodeResult(outputs=[[{"payload": png}], []], logs=[{"level": "warn", "text": "<w>"}])
    html = result._repr_html_()
    assert "data:image/png;base64," in html and "&lt;Buffer 28 bytes&gt;" in html
    assert "&lt;w&gt;" in html and "port 1" in html and "nothing" in html


def test_big_buffers_come_back_as_bytes_and_leave_no_file(shell: Any) -> None:
    import glob
    import os

    shell.user_ns["msg"] = {"payload": bytes(range(256)) * 1000}  # 256 kB: a blob in a flow
    out = run(shell, "%%node\nnode.send({'payload': msg['payload'][:70000]})\nreturn msg")
    assert [len(m["payload"]) for m in out.result.port(0)] == [70000, 256000]
    assert out.result.first["payload"][:3] == b"\x00\x01\x02"
    assert glob.glob(f"/dev/shm/kernelexec-{os.getpid()}-*") == []


@pytest.mark.slow
async def test_interrupting_a_node_cell_in_a_real_kernel(tmp_path: Path) -> None:
    """Jupyter's stop button: the cell ends with KeyboardInterrupt, the magic keeps working."""
    from jupyter_client.manager import start_new_async_kernel

    km, kc = await start_new_async_kernel(kernel_name="python3")

    async def execute(code: str, stop_on_error: bool = True) -> dict[str, Any]:
        msg_id = kc.execute(code, stop_on_error=stop_on_error)
        while True:
            reply = await kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                content: dict[str, Any] = reply["content"]
                return content

    try:
        assert (await execute("%load_ext kernelexec\nmsg = {'payload': 1}"))["status"] == "ok"
        began = tmp_path / "began"
        cell = f"%%node\nimport time\nopen({str(began)!r}, 'w').close()\ntime.sleep(30)\nreturn msg"
        # stop_on_error=False: with True, ipykernel aborts what arrives while it still
        # handles this cell's error, and on a loaded machine the next cell arrives then
        running = asyncio.ensure_future(execute(cell, stop_on_error=False))
        await wait_for_file(began)  # the node code runs: the interrupt reaches it
        await km.interrupt_kernel()
        reply = await asyncio.wait_for(running, 30)
        assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
        again = await execute("%%node --quiet\nreturn {'payload': msg['payload'] + 1}")
        assert again["status"] == "ok"
        check = await execute("assert _node_result.first == {'payload': 2}")
        assert check["status"] == "ok", check
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def test_sends_after_the_run_are_printed(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    shell.user_ns["msg"] = {"payload": 1}
    code = (
        "import threading\n"
        "def later():\n"
        "    AFTER_RUN.wait(30)\n"
        "    node.send({'payload': 'late'})\n"
        "    node.warn('late warning')\n"
        "LATE = threading.Thread(target=later)\n"
        "LATE.start()\n"
        "return None"
    )
    run(shell, "%%setup\nimport threading\nLATE = None\nAFTER_RUN = threading.Event()")
    out = run(shell, f"%%node\nglobal LATE\n{code}")
    assert out.result.outputs == [[]]
    shell.user_ns["AFTER_RUN"].set()  # the thread sends only now, after the run
    shell.user_ns["LATE"].join(30)
    printed = capsys.readouterr().out
    assert "after the run: node.send -> port 0: {'payload': 'late'}" in printed
    assert "after the run: warn: late warning" in printed
