"""Function-node parity of the in-kernel API (issue 18), in-process: what the code asks of
its node (named stores, several keys, env.get, node.linkcall, node.trace) and the requests
that carry it. The same through a real Node-RED: nodered-node/test/parity_spec.js."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernelexec.kernel.nodeapi import MemoryContext
from kernelexec.kernel.runtime import Runtime


class Answering:
    """on_context: the in-memory stores, plus scripted env and linkcall answers; records."""

    def __init__(self) -> None:
        self.memory = MemoryContext()
        self.requests: list[dict[str, Any]] = []
        self.env: dict[str, Any] = {}
        self.link: dict[str, Any] = {"value": None, "error": "timeout"}

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if request.get("op") == "env":
            return {"value": self.env.get(str(request.get("key"))), "error": None}
        if request.get("op") == "linkcall":
            return self.link
        return self.memory(request)


@pytest.fixture
def answers() -> Answering:
    return Answering()


@pytest.fixture
def rt(tmp_path: Path, answers: Answering) -> Iterator[Runtime]:
    runtime = Runtime(on_context=answers)
    runtime.init(node_id="n1", name="test", outputs=1, workdir=str(tmp_path))
    yield runtime
    runtime.close()


def payload(rt: Runtime, code: str) -> Any:
    rt.set_code(code)
    result = rt.run_message({"payload": 1}, "r1")
    assert result["error"] is None, result["error"]
    return result["outputs"][0][0]["payload"]


def test_named_stores_are_separate_and_travel_in_the_request(
    rt: Runtime, answers: Answering
) -> None:
    code = (
        "context.set('a', 1)\ncontext.set('a', 2, store='file')\n"
        "return {'payload': [context.get('a'), context.get('a', store='file'),"
        " context.keys(store='file'), context.get('b', 'dflt', store='file')]}"
    )
    assert payload(rt, code) == [1, 2, ["a"], "dflt"]
    stores = [r.get("store") for r in answers.requests]
    assert stores == [None, "file", None, "file", "file", "file"]


def test_several_keys_at_once(rt: Runtime, answers: Answering) -> None:
    code = (
        "flow.set(['x', 'y', 'z'], [1, 2])\n"
        "return {'payload': [flow.get(['x', 'y', 'z'], 0), flow.keys()]}"
    )
    assert payload(rt, code) == [[1, 2, 0], ["x", "y"]]
    assert answers.requests[0]["key"] == ["x", "y", "z"]
    assert answers.requests[0]["value"] == [1, 2, None]


def test_several_keys_need_a_list_of_values(rt: Runtime) -> None:
    rt.set_code("flow.set(['x', 'y'], 5)\nreturn msg")
    error = rt.run_message({"payload": 1}, "r1")["error"]
    assert error["type"] == "TypeError"
    assert "needs a list of at most 2 values" in error["message"]


def test_context_global_and_flow_as_in_the_function_node(rt: Runtime) -> None:
    code = (
        "global_.set('g', 'G')\nflow.set('f', 'F')\n"
        "return {'payload': [context.global_.get('g'), context.flow.get('f')]}"
    )
    assert payload(rt, code) == ["G", "F"]


def test_env_get_asks_the_node_each_time(rt: Runtime, answers: Answering) -> None:
    rt.set_code("return {'payload': [env.get('LATE', 'dflt'), env.get('NR_NODE_NAME')]}")
    first = rt.run_message({"payload": 1}, "r1")["outputs"][0][0]["payload"]
    answers.env["LATE"] = "set after deploy"
    second = rt.run_message({"payload": 1}, "r2")["outputs"][0][0]["payload"]
    assert first == ["dflt", "test"]
    assert second == ["set after deploy", "test"]
    assert [r["key"] for r in answers.requests] == ["LATE", "LATE"]


def test_node_path_is_nr_node_path(rt: Runtime, answers: Answering) -> None:
    answers.env["NR_NODE_PATH"] = "tab1/n1"
    assert payload(rt, "return {'payload': node.path}") == "tab1/n1"


def test_trace_is_its_own_level(rt: Runtime) -> None:
    rt.set_code("node.trace('t')\nnode.debug('d')\nreturn msg")
    logs = rt.run_message({"payload": 1}, "r1")["logs"]
    assert logs == [{"level": "trace", "text": "t"}, {"level": "debug", "text": "d"}]


def test_linkcall_awaited_and_blocking(rt: Runtime, answers: Answering) -> None:
    answers.link = {"value": {"payload": 42, "_msgid": "m1"}, "error": None}
    code = (
        "a = await node.linkcall('double', {'payload': 21}, timeout=2)\n"
        "b = node.linkcall_sync('double', {'payload': 21})\n"
        "return {'payload': [a['payload'], b['payload']]}"
    )
    assert payload(rt, code) == [42, 42]
    calls = [r for r in answers.requests if r["op"] == "linkcall"]
    assert [(c["key"], c["value"], c["timeout"]) for c in calls] == [
        ("double", {"payload": 21}, 2.0),
        ("double", {"payload": 21}, 5.0),
    ]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("timeout", ["LinkCallTimeout", "timeout", True]),
        ("Multiple link-in nodes named 'x' found", ["LinkCallError", "Multiple", False]),
    ],
)
def test_linkcall_errors_are_exceptions(
    rt: Runtime, answers: Answering, error: str, expected: list[Any]
) -> None:
    answers.link = {"value": None, "error": error}
    code = (
        "try:\n    node.linkcall_sync('x', {'payload': 1})\nexcept Exception as exc:\n"
        "    return {'payload': [type(exc).__name__, str(exc).split()[0],"
        " isinstance(exc, TimeoutError)]}"
    )
    assert payload(rt, code) == expected


def test_linkcall_sends_no_target_or_msg_it_cannot_send(
    rt: Runtime, answers: Answering
) -> None:
    answers.link = {"value": None, "error": "not valid"}
    code = (
        "for t, m in [(3, {}), ('x', [1])]:\n    try:\n        node.linkcall_sync(t, m)\n"
        "    except Exception:\n        pass\nreturn msg"
    )
    payload(rt, code)
    calls = [(r["key"], r["value"]) for r in answers.requests if r["op"] == "linkcall"]
    assert calls == [(None, {}), ("x", None)]  # Node-RED refuses them with its own messages



def test_without_node_red_env_stores_and_linkcall_answer_sensibly(tmp_path: Path) -> None:
    """``kernelexec run`` (a real kernel, no Node-RED): MemoryHooks answer env from the
    environment, keep named stores apart, and refuse link calls with a reason."""
    code = (
        "context.set(['a', 'b'], [1, 2], store='file')\n"
        "try:\n    node.linkcall_sync('x', {})\n    link = None\n"
        "except Exception as exc:\n    link = str(exc)\n"
        "return {'payload': [env.get('KX_PARITY_RUN'), context.get(['a', 'b'], store='file'),"
        " context.get('a'), link]}"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "kernelexec", "run", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KX_PARITY_RUN": "here"},
        cwd=tmp_path,
    )
    body = json.loads(proc.stdout)
    assert body["error"] is None, body["error"]
    assert body["outputs"][0][0]["payload"] == [
        "here",
        [1, 2],
        None,
        "link calls need Node-RED (no Node-RED here)",
    ]
