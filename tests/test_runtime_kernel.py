"""The runtime inside a real IPython kernel, driven through execute_requests as the worker
does: reply payloads, IOPub comm events, stdin context requests, signals, fork."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from runtime_helpers import KernelSession, MemoryStore

from kernelexec.kernel import blobs
from kernelexec.kernel.convert import BLOB_THRESHOLD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelSession]:
    session = KernelSession(str(tmp_path_factory.mktemp("kernel")))
    yield session
    session.shutdown()
    assert not session.km.is_alive()


@pytest.fixture
def k(kernel: KernelSession) -> KernelSession:
    kernel.on_context = MemoryStore()
    kernel.streams.clear()
    return kernel


def test_run_batch_answers_in_the_reply_payload(k: KernelSession) -> None:
    assert k.init("msg['payload'] *= 2\nreturn msg") == {
        "ok": True,
        "style": "function",
        "async": False,
    }
    results = k.run([{"payload": 1}, {"payload": "ab"}])
    assert [r["outputs"] for r in results] == [[[{"payload": 2}]], [[{"payload": "abab"}]]]
    assert [r["req_id"] for r in results] == ["r0", "r1"]
    assert all(r["error"] is None and r["done"] for r in results)


def test_syntax_error_answer(k: KernelSession) -> None:
    error = k.init("x = 1\nreturn (")["error"]
    assert error["code"] == "SYNTAX_ERROR" and error["line"] == 2


def test_setup_then_message_code_share_the_namespace(k: KernelSession) -> None:
    k.init("msg['payload'] = SCALE * msg['payload']\nreturn msg")
    assert k.op({"op": "setup", "code": "SCALE = 10"}) == {"ok": True}
    assert k.run([{"payload": 3}])[0]["outputs"] == [[{"payload": 30}]]
    failed = k.op({"op": "setup", "code": "x = 1\nraise ValueError('bad')"})["error"]
    assert failed["code"] == "SETUP_FAILED" and failed["line"] == 2
    assert k.op({"op": "code", "code": "return None"})["ok"] is True
    assert k.op({"op": "stop", "code": "del SCALE"}) == {"ok": True}


def test_user_error_keeps_the_kernel_and_the_line(k: KernelSession) -> None:
    k.init("a = 1\nb = a / 0\nreturn msg")
    error = k.run([{}])[0]["error"]
    assert error["code"] == "USER_ERROR" and error["line"] == 2
    assert "handle" not in error["traceback"]
    k.init("return msg")
    assert k.run([{"payload": 1}])[0]["error"] is None


def test_events_go_out_on_iopub(k: KernelSession) -> None:
    k.init("node.send({'payload': 'a'})\nnode.status(text='busy')\nreturn None")
    result = k.run([{}])[0]
    assert result["sent"] == 1
    events = k.wait_events(2)
    assert {"type": "send", "req_id": "r0", "outputs": [[{"payload": "a"}]]} in events
    # in the kernel a status set during a request names it (the worker waits for it)
    assert {"type": "status", "status": {"text": "busy"}, "req_id": "r0"} in events


def test_sends_after_return_from_threads_and_tasks(k: KernelSession, tmp_path: Path) -> None:
    returned = tmp_path / "returned"
    code = (
        "import os, threading, time\n"
        "def later():\n"
        f"    while not os.path.exists({str(returned)!r}):\n"
        "        time.sleep(0.005)\n"
        "    node.send({'payload': 'late'})\n"
        "    node.done()\n"
        "threading.Thread(target=later).start()\n"
        "return None"
    )
    k.init(code)
    result = k.run([{}], prefix="late")[0]
    assert result["done"] is False
    returned.touch()  # the thread sends only now, after the message returned
    events = k.wait_events(2)
    assert {"type": "send", "req_id": None, "outputs": [[{"payload": "late"}]]} in events
    assert {"type": "done", "req_id": "late0", "error": None} in events


def test_print_is_captured_not_streamed(k: KernelSession) -> None:
    k.init("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nreturn None")
    assert k.run([{}])[0]["stdout"] == "to stdout\nto stderr\n"
    k.wait_idle()  # a stream would come before the kernel's idle status for the request
    assert not any("to std" in text for text in k.streams)


def test_print_from_a_thread_outside_an_execution_is_a_log_event(
    k: KernelSession, tmp_path: Path
) -> None:
    returned = tmp_path / "returned"
    code = (
        "import os, threading, time\n"
        "def later():\n"
        f"    while not os.path.exists({str(returned)!r}):\n"
        "        time.sleep(0.005)\n"
        "    print('background line')\n"
        "threading.Thread(target=later).start()\nreturn None"
    )
    k.init(code)
    k.run([{}])
    returned.touch()  # the thread prints only now, outside the execution
    events = k.wait_events(1)
    assert {"type": "log", "req_id": None, "level": "info", "text": "background line"} in events


def test_context_goes_through_stdin(k: KernelSession) -> None:
    store = MemoryStore()
    k.on_context = store
    k.init(
        "n = flow.get('n', 0) + 1\nflow.set('n', n)\nmsg['payload'] = [n, flow.keys()]\nreturn msg"
    )
    results = k.run([{}, {}])
    assert [r["outputs"][0][0]["payload"] for r in results] == [[1, ["n"]], [2, ["n"]]]
    assert store.requests[0] == {
        "kernelexec": "context",
        "scope": "flow",
        "op": "get",
        "key": "n",
        "value": None,
    }


def test_context_from_another_thread_during_execution(k: KernelSession) -> None:
    code = (
        "import threading\nout = []\n"
        "t = threading.Thread(target=lambda: out.append(global_.get('g')))\n"
        "t.start(); t.join()\nmsg['payload'] = out\nreturn msg"
    )
    k.on_context = MemoryStore()
    k.on_context.data["global"] = {"g": "from-thread"}  # type: ignore[attr-defined]
    k.init(code)
    assert k.run([{}])[0]["outputs"] == [[{"payload": ["from-thread"]}]]


def test_timeout_in_the_kernel_and_the_kernel_lives_on(k: KernelSession) -> None:
    k.init("import time\nwhile True:\n    time.sleep(0.01)\nreturn msg")
    results = k.run([{}, {}], timeout=0.3)
    assert [r["error"]["code"] for r in results] == ["TIMEOUT", "TIMEOUT"]
    assert results[0]["error"]["line"] in (2, 3)
    k.init("return msg")
    assert k.run([{"payload": 1}])[0]["outputs"] == [[{"payload": 1}]]


def test_interrupt_fails_the_message_and_the_rest_of_the_batch(
    k: KernelSession, tmp_path: Path
) -> None:
    running = tmp_path / "running"
    k.init(f"import pathlib, time\npathlib.Path({str(running)!r}).touch()\n"
           "time.sleep(30)\nreturn msg")

    def interrupt_once_running() -> None:  # as interrupt_kernel, once the message runs
        deadline = time.monotonic() + 60
        while not running.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(k.pid, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_running)
    interrupter.start()
    results = k.run([{}, {}, {}])
    interrupter.join()
    assert [r["error"]["code"] for r in results] == ["TIMEOUT"] * 3
    assert "interrupted" in results[0]["error"]["message"]
    k.init("return msg")
    assert k.run([{"payload": 2}])[0]["error"] is None


def test_async_code_runs_and_times_out(k: KernelSession) -> None:
    k.init("import asyncio\nawait asyncio.sleep(0.01)\nnode.send({'payload': 's'})\nreturn msg")
    assert k.run([{"payload": 1}])[0]["outputs"] == [[{"payload": 1}]]
    k.init("import asyncio\nawait asyncio.sleep(30)\nreturn msg")
    assert k.run([{}], timeout=0.3)[0]["error"]["code"] == "TIMEOUT"


def test_blobs_in_and_out(k: KernelSession, tmp_path: Path) -> None:
    data = os.urandom(BLOB_THRESHOLD * 3)
    d = str(tmp_path)
    entry = blobs.write_blob(data, "b0", directory=d)
    inode = os.stat(tmp_path / entry["name"]).st_ino
    k.init(
        "msg['size'] = len(msg['payload'])\nmsg['copy'] = bytes(msg['payload'])\nreturn msg",
        blob_dir=d,
    )
    try:
        result = k.run([{"payload": blobs.index_ref(0)}], prefix="b", tables=[[entry]])[0]
        out, table = result["outputs"][0][0], result[blobs.TABLE]
        assert out["size"] == len(data)
        assert blobs.read_blob(table[out["copy"]["i"]], "b0", d) == data
        assert os.stat(tmp_path / table[out["payload"]["i"]]["name"]).st_ino == inode  # adopted
        assert table[out["copy"]["i"]]["name"].startswith(f"kernelexec-{k.pid}-b0-")
    finally:
        assert blobs.remove_request_blobs("b0", directory=d) == 2


def test_cold_mode_in_a_kernel(k: KernelSession) -> None:
    k.op({"op": "setup", "code": "state = []"})
    code = (
        "import os\nstate.append(1)\nnode.send({'payload': 'child'})\n"
        "context.set('pid', os.getpid())\nmsg['payload'] = [len(state), os.getpid()]\n"
        "return msg"
    )
    k.init(code, fork=True)
    results = k.run([{}, {}], prefix="c")
    payloads = [r["outputs"][0][0]["payload"] for r in results]
    assert [p[0] for p in payloads] == [1, 1]
    assert payloads[0][1] != payloads[1][1] != k.pid
    assert all(r["sent"] == 1 for r in results)
    events = k.wait_events(2)
    assert [e["req_id"] for e in events if e["type"] == "send"] == ["c0", "c1"]


def test_cold_mode_timeout_kills_the_child(k: KernelSession, tmp_path: Path) -> None:
    """The process of the message that timed out (its pid written first thing) is killed at
    once; the kernel's other children (the next message's, forked ahead) are not it. The code
    blocks until it is killed; the 2 s timeout is room for its first line, not a wait."""
    mark = tmp_path / "pid"
    pid_line = f"open({str(mark)!r}, 'w').write(str(os.getpid()))"
    code = f"import os, threading\n{pid_line}\nthreading.Event().wait()"
    k.init(code + "\nreturn msg", fork=True)
    assert k.run([{}], timeout=2.0)[0]["error"]["code"] == "TIMEOUT"
    try:
        child = psutil.Process(int(mark.read_text()))
    except psutil.NoSuchProcess:
        return  # killed and reaped already
    _, alive = psutil.wait_procs([child], timeout=30)
    assert not alive or child.status() == psutil.STATUS_ZOMBIE
