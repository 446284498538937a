"""The runtime in-process: Node-RED function-node semantics without a kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernelexec.errors import CodeSyntaxError, SetupError, UserCodeError
from kernelexec.kernel import blobs
from kernelexec.kernel.convert import BLOB_THRESHOLD
from kernelexec.kernel.guard import clock_ticks
from kernelexec.kernel.runtime import Runtime


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime()
    runtime.init(node_id="n1", name="test", outputs=1, workdir=str(tmp_path),
                 blob_dir=str(tmp_path))
    yield runtime
    runtime.close()


def wait_events(rt: Runtime, count: int, timeout: float = 30.0) -> None:
    """Wait until the runtime has emitted ``count`` events (a poll with a generous deadline)."""
    deadline = time.monotonic() + timeout
    while len(rt.events) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def after_clock_tick(pid: int) -> None:
    """Wait until the clock (in /proc starttime ticks) has moved past the start of ``pid``:
    a message starting now counts it as older than itself (guard.kill_started_since)."""
    with open(f"/proc/{pid}/stat") as fh:
        started = int(fh.read().rsplit(") ", 1)[1].split()[19])
    while clock_ticks() <= started:
        time.sleep(0.001)


def run(rt: Runtime, code: str, msg: Any = None, **kw: Any) -> dict[str, Any]:
    rt.set_code(code)
    return rt.run_message({"payload": 1} if msg is None else msg, kw.pop("req_id", "r1"), **kw)


# --------------------------------------------------------------- return values


def test_return_msg_goes_to_output_one(rt: Runtime) -> None:
    result = run(rt, "msg['payload'] += 1\nreturn msg")
    assert result["outputs"] == [[{"payload": 2}]]
    assert result["error"] is None and result["done"] is True and result["sent"] == 0
    assert result["req_id"] == "r1" and result["exec_ms"] >= 0


def test_return_none_sends_nothing(rt: Runtime) -> None:
    assert run(rt, "return None")["outputs"] == [[]]


def test_return_list_maps_to_outputs(rt: Runtime) -> None:
    rt.outputs = 3
    result = run(rt, "a = {'payload': 'a'}\nreturn [None, a, [a, None, {'payload': 'b'}], a]")
    assert result["outputs"] == [[], [{"payload": "a"}], [{"payload": "a"}, {"payload": "b"}]]


def test_zero_outputs_drops_everything(rt: Runtime) -> None:
    rt.outputs = 0
    assert run(rt, "return msg")["outputs"] == []


def test_returning_a_non_msg_is_a_clear_user_error(rt: Runtime) -> None:
    error = run(rt, "return 'text'")["error"]
    assert error["code"] == "USER_ERROR" and error["type"] == "TypeError"
    assert "returned a str" in error["message"]


def test_unsendable_value_is_a_conversion_error_naming_the_path(rt: Runtime) -> None:
    error = run(rt, "msg['payload'] = {'model': object()}\nreturn msg")["error"]
    assert error["code"] == "CONVERSION_ERROR"
    assert error["message"] == "msg.payload.model: cannot send object of type object"


def test_non_dict_msg_is_refused(rt: Runtime) -> None:
    rt.set_code("return msg")
    assert rt.run_message([1, 2], "r")["error"]["code"] == "CONVERSION_ERROR"


# ------------------------------------------------------------------- errors


def test_user_error_has_the_true_line_and_a_clean_traceback(rt: Runtime) -> None:
    error = run(rt, "a = 1\nb = 0\nc = a / b\nreturn msg")["error"]
    assert error["code"] == "USER_ERROR" and error["type"] == "ZeroDivisionError"
    assert error["line"] == 3
    assert 'File "<node test>", line 3' in error["traceback"]
    assert "runtime.py" not in error["traceback"]


def test_syntax_error_at_init_and_via_dispatch(rt: Runtime) -> None:
    with pytest.raises(CodeSyntaxError) as info:
        rt.set_code("x = 1\nif x\n  return msg")
    assert info.value.line == 2
    answer = rt.dispatch({"op": "code", "code": "return (("})
    assert answer["error"]["code"] == "SYNTAX_ERROR" and answer["error"]["line"] == 1


def test_exit_in_user_code_does_not_end_the_process(rt: Runtime) -> None:
    error = run(rt, "import sys\nsys.exit(3)\nreturn msg")["error"]
    assert error["type"] == "SystemExit" and "exit(3)" in error["message"]


def test_unknown_op_is_an_error_answer(rt: Runtime) -> None:
    assert "unknown kernelexec op" in rt.dispatch({"op": "nope"})["error"]["message"]


# ---------------------------------------------------------------- node API


def test_node_send_during_execution_is_counted(rt: Runtime) -> None:
    result = run(rt, "node.send({'payload': 'a'})\nnode.send([None])\nreturn None")
    assert result["sent"] == 2
    sends = [e for e in rt.events if e["type"] == "send"]
    assert sends == [
        {"type": "send", "req_id": "r1", "outputs": [[{"payload": "a"}]]},
        {"type": "send", "req_id": "r1", "outputs": [[]]},
    ]


def test_node_send_from_a_thread_during_execution_counts(rt: Runtime) -> None:
    code = ("import threading\n"
            "t = threading.Thread(target=lambda: node.send({'payload': 't'}))\n"
            "t.start(); t.join()\nreturn None")
    assert run(rt, code)["sent"] == 1


def test_send_and_done_after_return_carry_the_right_req_id(rt: Runtime) -> None:
    rt.setup("import threading\nAFTER_RETURN = threading.Event()")
    code = ("import threading\n"
            "def later():\n"
            "    AFTER_RETURN.wait()\n"
            "    node.send({'payload': 'late'})\n"
            "    node.done()\n"
            "threading.Thread(target=later).start()\n"
            "return None")
    result = run(rt, code, req_id="rx")
    assert result["done"] is False and result["sent"] == 0
    rt.user_ns["AFTER_RETURN"].set()  # the thread sends only now, after the message returned
    wait_events(rt, 2)
    assert rt.events == [
        {"type": "send", "req_id": None, "outputs": [[{"payload": "late"}]]},
        {"type": "done", "req_id": "rx", "error": None},
    ]


def test_status_forms(rt: Runtime) -> None:
    run(rt, "node.status('busy')\nnode.status(fill='red', shape='dot', text='x')\n"
            "node.status({})\nnode.status()\nreturn None")
    assert [e["status"] for e in rt.events] == [
        {"text": "busy"}, {"fill": "red", "shape": "dot", "text": "x"}, {}, {}]


def test_logs_during_execution_go_in_the_result(rt: Runtime) -> None:
    result = run(rt, "node.log('a')\nnode.warn('b')\nnode.debug('c')\nnode.error('d')\nreturn msg")
    assert result["logs"] == [
        {"level": "info", "text": "a"}, {"level": "warn", "text": "b"},
        {"level": "debug", "text": "c"}, {"level": "error", "text": "d"}]
    assert result["error"] is None


def test_node_error_with_msg_fails_the_message_but_keeps_outputs(rt: Runtime) -> None:
    result = run(rt, "node.error('bad input', msg)\nreturn msg")
    assert result["error"]["message"] == "bad input" and result["error"]["code"] == "USER_ERROR"
    assert result["outputs"] == [[{"payload": 1}]]


def test_node_properties_and_env(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KX_TEST_VAR", "v")
    rt.outputs = 2
    code = ("msg['payload'] = [node.id, node.name, node.outputs, env.get('KX_TEST_VAR'),"
            " env.get('NR_NODE_ID'), env.get('MISSING', 'd')]\nreturn msg")
    assert run(rt, code)["outputs"][0][0]["payload"] == ["n1", "test", 2, "v", "n1", "d"]


# ------------------------------------------------------------------ context


def test_context_scopes_round_trip_through_json(rt: Runtime) -> None:
    code = ("context.set('n', {'a': [1, 2]})\nflow.set('b', b'\\x00\\x01')\n"
            "global_.set('g', 1.5)\n"
            "msg['payload'] = [context.get('n'), flow.get('b'), global_.get('g'),"
            " context.get('missing', 'dflt'), context.keys(), flow.keys()]\nreturn msg")
    payload = run(rt, code)["outputs"][0][0]["payload"]
    assert payload == [{"a": [1, 2]}, {"$kx": "buffer", "b64": "AAE="}, 1.5, "dflt", ["n"], ["b"]]


def test_context_errors_reach_user_code(tmp_path: Path) -> None:
    def refuse(request: dict[str, Any]) -> dict[str, Any]:
        return {"value": None, "error": "store unavailable"}

    runtime = Runtime(on_context=refuse)
    runtime.init(code="return msg", workdir=str(tmp_path))
    error = run(runtime, "x = 1\nflow.get('k')\nreturn msg")["error"]
    assert error["type"] == "ContextAccessError" and "store unavailable" in error["message"]
    assert error["line"] == 2


def test_context_requests_have_the_documented_shape(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        return {"value": 5, "error": None}

    runtime = Runtime(on_context=answer)
    runtime.init(code="return msg", workdir=str(tmp_path))
    run(runtime, "context.set('k', {1, 2})\nmsg['payload'] = flow.get('x')\nreturn msg")
    assert seen == [
        {"kernelexec": "context", "scope": "node", "op": "set", "key": "k", "value": [1, 2]},
        {"kernelexec": "context", "scope": "flow", "op": "get", "key": "x", "value": None},
    ]


# ------------------------------------------------------------------- output


def test_print_and_stderr_are_captured_and_streams_restored(rt: Runtime) -> None:
    before = sys.stdout, sys.stderr
    result = run(rt, "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nreturn None")
    assert result["stdout"] == "hello\noops\n"
    assert (sys.stdout, sys.stderr) == before


def test_print_is_captured_even_when_the_code_fails(rt: Runtime) -> None:
    result = run(rt, "print('before')\nraise ValueError('x')\nreturn msg")
    assert result["stdout"] == "before\n" and result["error"]["type"] == "ValueError"


# -------------------------------------------------------------- script style


def test_script_style_result_topic_and_additional_data(rt: Runtime) -> None:
    code = ("result = payload * 10\noutput_topic = topic + '/out'\n"
            "additional_data = {'id': execution_id, 'node': node_id}")
    result = run(rt, code, {"payload": 4, "topic": "t", "keep": True}, req_id="e1")
    assert result["outputs"] == [[{"payload": 40, "topic": "t/out", "keep": True,
                                   "additionalData": {"id": "e1", "node": "n1"}}]]


def test_script_style_without_result_sends_nothing_but_node_send_works(rt: Runtime) -> None:
    result = run(rt, "x = payload\nnode.send({'payload': x})")
    assert result["outputs"] == [[]] and result["sent"] == 1


def test_script_style_runs_in_a_fresh_copy_of_the_namespace(rt: Runtime) -> None:
    rt.setup("import math\nresult = 'from setup'\ncounter = 0")
    code = "counter = counter + 1\nresult = [math.floor(2.5), counter]"
    assert run(rt, code)["outputs"][0][0]["payload"] == [2, 1]
    assert run(rt, code)["outputs"][0][0]["payload"] == [2, 1]
    assert run(rt, "y = 1")["outputs"] == [[]]  # setup's `result` does not count
    assert rt.user_ns["counter"] == 0


def test_script_helpers(rt: Runtime, tmp_path: Path) -> None:
    code = ("save_file('a.txt', 'hi')\nsave_file('b.bin', b'\\x01')\n"
            "r = run_command('echo out; echo err >&2; exit 3')\n"
            "log('note', 'warning')\n"
            "result = [read_file('a.txt'), read_file('b.bin', binary=True), read_file('none'),"
            " r['returncode'], r['stdout'], r['stderr']]")
    result = run(rt, code)
    assert result["outputs"][0][0]["payload"] == [
        "hi", {"$kx": "buffer", "b64": "AQ=="}, None, 3, "out\n", "err\n"]
    assert result["logs"] == [{"level": "warn", "text": "note"}]
    assert (tmp_path / "a.txt").read_text() == "hi"


def test_script_helpers_stay_in_the_workdir(rt: Runtime) -> None:
    error = run(rt, "save_file('../escape.txt', 'x')")["error"]
    assert "outside the node's working directory" in error["message"]


# ------------------------------------------------------------- setup / stop


def test_setup_defines_globals_for_message_code(rt: Runtime) -> None:
    rt.setup("import json\nFACTOR = 3\ndef triple(x):\n    return x * FACTOR")
    assert run(rt, "msg['payload'] = triple(msg['payload'])\nreturn msg")["outputs"] == [
        [{"payload": 3}]]


def test_function_style_global_statement_updates_the_namespace(rt: Runtime) -> None:
    rt.setup("count = 0")
    run(rt, "global count\ncount += 1\nreturn None")
    run(rt, "global count\ncount += 1\nreturn None")
    assert rt.user_ns["count"] == 2


def test_setup_error_names_the_setup_line(rt: Runtime) -> None:
    with pytest.raises(SetupError) as info:
        rt.setup("x = 1\nraise RuntimeError('no model')")
    assert info.value.line == 2 and info.value.code == "SETUP_FAILED"
    assert "<node test setup>" in (info.value.traceback or "")
    assert rt.dispatch({"op": "setup", "code": "1/0"})["error"]["code"] == "SETUP_FAILED"


def test_setup_with_top_level_await(rt: Runtime) -> None:
    rt.setup("import asyncio\nawait asyncio.sleep(0)\nREADY = True")
    assert rt.user_ns["READY"] is True


def test_stop_code_runs_in_the_namespace(rt: Runtime) -> None:
    rt.setup("closed = []")
    assert rt.dispatch({"op": "stop", "code": "closed.append(1)"}) == {"ok": True}
    assert rt.user_ns["closed"] == [1]
    with pytest.raises(UserCodeError):
        rt.stop("raise ValueError('x')")


def test_init_answer_reports_style_and_async(rt: Runtime) -> None:
    answer = rt.dispatch({"op": "init", "node": {"node_id": "n", "code": "await x\nreturn msg"}})
    assert answer == {"ok": True, "style": "function", "async": True}


# ---------------------------------------------------------------- timeouts


def test_timeout_stops_a_busy_loop_even_through_except_exception(rt: Runtime) -> None:
    code = "while True:\n    try:\n        pass\n    except Exception:\n        pass\nreturn msg"
    error = run(rt, code, timeout=0.2)["error"]
    assert error["code"] == "TIMEOUT" and error["line"] in (1, 2, 3, 4, 5)
    assert "timeout of 0.2 s" in error["message"]
    assert run(rt, "return msg")["error"] is None  # the runtime is fine afterwards


def test_timeout_kills_processes_the_message_started(rt: Runtime) -> None:
    rt.setup("procs = []")
    code = ("import subprocess, time\nprocs.append(subprocess.Popen(['sleep', '30']))\n"
            "time.sleep(30)\nreturn msg")
    keeper = subprocess.Popen(["sleep", "30"])  # started before the message: must survive
    try:
        after_clock_tick(keeper.pid)  # the message starts in a later tick than the keeper
        assert run(rt, code, timeout=0.5)["error"]["code"] == "TIMEOUT"
        (proc,) = rt.user_ns["procs"]
        assert proc.wait(timeout=30) == -9
        assert keeper.poll() is None
    finally:
        keeper.kill()
        keeper.wait()


def test_async_code_and_its_timeout(rt: Runtime) -> None:
    ok = run(rt, "import asyncio\nawait asyncio.sleep(0.01)\nmsg['payload'] = 'a'\nreturn msg")
    assert ok["outputs"] == [[{"payload": "a"}]]
    error = run(rt, "import asyncio\nawait asyncio.sleep(30)\nreturn msg", timeout=0.2)["error"]
    assert error["code"] == "TIMEOUT"


def test_async_code_own_timeout_error_is_a_user_error(rt: Runtime) -> None:
    error = run(rt, "raise TimeoutError('mine')\nawait x\nreturn msg", timeout=5)["error"]
    assert error["code"] == "USER_ERROR" and error["message"] == "mine"


def test_interrupt_fails_the_rest_of_the_batch(rt: Runtime) -> None:
    rt.set_code("if msg['payload'] == 2:\n    raise KeyboardInterrupt\nreturn msg")
    batch = [{"req_id": str(i), "msg": {"payload": i}, "timeout": 0} for i in range(1, 5)]
    results = rt.dispatch({"op": "run", "batch": batch})["results"]
    assert [r["req_id"] for r in results] == ["1", "2", "3", "4"]
    assert results[0]["error"] is None
    assert [r["error"]["code"] for r in results[1:]] == ["TIMEOUT"] * 3
    assert rt.dispatch({"op": "run", "batch": batch[:1]})["results"][0]["error"] is None


# ------------------------------------------------------------------- blobs


def test_big_bytes_out_become_request_blobs(rt: Runtime, tmp_path: Path) -> None:
    result = run(rt, f"msg['payload'] = bytes({BLOB_THRESHOLD})\nreturn msg", req_id="big")
    assert result["outputs"][0][0]["payload"] == blobs.index_ref(0)
    [entry] = result[blobs.TABLE]
    assert entry["size"] == BLOB_THRESHOLD
    assert blobs.request_blobs("big", directory=str(tmp_path)) == [str(tmp_path / entry["name"])]


def test_blob_in_and_passthrough_out_is_the_same_file(rt: Runtime, tmp_path: Path) -> None:
    data = os.urandom(BLOB_THRESHOLD + 10)
    entry_in = blobs.write_blob(data, "p", directory=str(tmp_path), pid=1)
    inode = os.stat(tmp_path / entry_in["name"]).st_ino
    code = "msg['n'] = len(msg['payload'])\nmsg['t'] = type(msg['payload']).__name__\nreturn msg"
    result = run(rt, code, {"payload": blobs.index_ref(0)}, req_id="p", table=[entry_in])
    out = result["outputs"][0][0]
    assert out["n"] == len(data) and out["t"] == "bytes"
    [entry_out] = result[blobs.TABLE]
    assert os.stat(tmp_path / entry_out["name"]).st_ino == inode
    assert blobs.read_blob(entry_out, "p", str(tmp_path)) == data


def test_failed_message_leaves_no_output_blob(rt: Runtime, tmp_path: Path) -> None:
    code = (f"node.send({{'payload': bytes({BLOB_THRESHOLD})}})\n"
            f"msg['payload'] = [bytes({BLOB_THRESHOLD}), object()]\nreturn msg")
    result = run(rt, code, req_id="fail")
    assert result["error"]["code"] == "CONVERSION_ERROR"
    # The returned Buffer's file is gone; the one node.send() handed over is its reader's.
    sent = [e for e in rt.events if e["type"] == "send"]
    assert sent[0]["outputs"][0][0]["payload"] == blobs.index_ref(0)
    handed = str(tmp_path / sent[0][blobs.TABLE][0]["name"])
    assert blobs.request_blobs("fail", directory=str(tmp_path)) == [handed]
    assert blobs.TABLE not in result
    os.unlink(handed)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGALRM], ids=["SIGINT", "SIGALRM"])
def test_a_timeout_right_after_a_send_went_out_leaves_its_files_to_their_reader(
    tmp_path: Path, signum: int
) -> None:
    """The interrupt (SIGINT) or the alarm (SIGALRM) lands the moment the send event is
    published: the message fails with TIMEOUT, and the files the event names stay for their
    reader (the failure path removes only files it never handed over). A stress test once
    caught this ordering by chance; here the event's own delivery raises the signal."""
    sends: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "send" and not sends:
            sends.append(event)
            signal.raise_signal(signum)

    runtime = Runtime(on_event=on_event)
    runtime.init(node_id="n1", outputs=1, workdir=str(tmp_path), blob_dir=str(tmp_path))
    try:
        code = f"node.send({{'payload': bytes({BLOB_THRESHOLD})}})\nwhile True: pass"
        result = run(runtime, code, req_id="cut", timeout=30.0)
    finally:
        runtime.close()
    assert result["error"]["code"] == "TIMEOUT"
    [entry] = sends[0][blobs.TABLE]
    assert blobs.read_blob(entry, "cut", str(tmp_path)) == bytes(BLOB_THRESHOLD)
    assert blobs.remove_table([entry], "cut", str(tmp_path)) == 1
    assert blobs.request_blobs("cut", directory=str(tmp_path)) == []


def test_a_send_whose_request_ends_while_it_is_encoded_names_its_files_for_no_request(
    rt: Runtime, tmp_path: Path
) -> None:
    """The event then has no req_id, so its files must be named for none (else the reader,
    which checks names against the frame's request, refuses them)."""
    from kernelexec.kernel.runtime import Request

    req = Request("ended")

    class EndsTheRequest(dict[str, Any]):
        def items(self) -> Any:
            req.finished = True  # as if the request ended on another thread, right now
            return super().items()

    rt.emit_send(req, [[EndsTheRequest(payload=bytes(BLOB_THRESHOLD))]])
    [event] = [e for e in rt.events if e["type"] == "send"]
    assert event["req_id"] is None
    assert blobs.read_blob(event[blobs.TABLE][0], None, str(tmp_path)) == bytes(BLOB_THRESHOLD)
    blobs.remove_table(event[blobs.TABLE], None, str(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(blobs.PREFIX)]


def test_lookalikes_returned_and_sent_round_trip_as_plain_data(rt: Runtime) -> None:
    lookalike = {blobs.MARKER: "blob", "path": "/etc/passwd", "size": 10}
    code = "node.send({'payload': msg['payload']})\nreturn msg"
    result = run(rt, code, {"payload": blobs.escape(dict(lookalike))}, table=[])
    [sent] = [e for e in rt.events if e["type"] == "send"]
    for out in (result["outputs"][0][0], sent["outputs"][0][0]):
        assert out["payload"] == blobs.escape(lookalike)
        assert blobs.TABLE not in result and blobs.TABLE not in sent


# --------------------------------------------------------------- cold mode


@pytest.fixture
def cold(rt: Runtime) -> Runtime:
    rt.fork = True
    return rt


def test_cold_mode_isolates_messages(cold: Runtime) -> None:
    cold.setup("seen = []")
    code = ("import os\nseen.append(1)\nprint('pid', os.getpid())\n"
            "msg['payload'] = [len(seen), os.getpid()]\nreturn msg")
    first = run(cold, code)
    second = run(cold, code)
    assert first["outputs"][0][0]["payload"][0] == 1
    assert second["outputs"][0][0]["payload"][0] == 1
    assert first["outputs"][0][0]["payload"][1] != os.getpid()
    assert first["stdout"].startswith("pid ")
    assert cold.user_ns["seen"] == []


def test_cold_mode_relays_events_and_context(cold: Runtime) -> None:
    code = ("node.send({'payload': 's'})\nnode.status('st')\ncontext.set('k', 7)\n"
            "msg['payload'] = context.get('k')\nreturn msg")
    result = run(cold, code, req_id="c1")
    assert result["outputs"] == [[{"payload": 7}]] and result["sent"] == 1
    assert [e["type"] for e in cold.events] == ["send", "status"]
    assert cold.events[0]["req_id"] == "c1"


def test_cold_mode_timeout_kills_the_child_and_its_processes(cold: Runtime, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = (f"import subprocess, os, time\np = subprocess.Popen(['sleep', '30'])\n"
            f"with open({str(pid_file)!r}, 'w') as fh:\n"
            "    fh.write(f'{os.getpid()} {p.pid}')\n"
            "time.sleep(30)\nreturn msg")
    result = run(cold, code, timeout=0.5)
    assert result["error"]["code"] == "TIMEOUT"
    child, grandchild = (int(x) for x in pid_file.read_text().split())
    for pid in (child, grandchild):
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid)


def test_cold_mode_kills_what_an_answered_message_started_soon_after(cold: Runtime) -> None:
    """The child that answered lingers LINGER (20 ms), then dies with its process group."""
    code = ("import subprocess, os\np = subprocess.Popen(['sleep', '30'])\n"
            "msg['payload'] = [os.getpid(), p.pid]\nreturn msg")  # fmt: skip
    result = run(cold, code)
    assert result["error"] is None
    for pid in result["outputs"][0][0]["payload"]:
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_cold_mode_child_crash_is_reported(cold: Runtime) -> None:
    error = run(cold, "import os\nos._exit(9)\nreturn msg")["error"]
    assert error["code"] == "KERNEL_DIED" and "exited with code 9" in error["message"]


def test_cold_mode_user_error_keeps_the_line(cold: Runtime) -> None:
    error = run(cold, "x = 1\n\nraise ValueError('cold')\nreturn msg")["error"]
    assert error["line"] == 3 and error["message"] == "cold"


# ------------------------------------------------------------- thread safety


def test_concurrent_sends_from_many_threads_are_all_counted(rt: Runtime) -> None:
    code = ("import threading\n"
            "def work(i):\n    for _ in range(20):\n        node.send({'payload': i})\n"
            "ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]\n"
            "[t.start() for t in ts]\n[t.join() for t in ts]\nreturn None")
    result = run(rt, code)
    assert result["sent"] == 160
    assert sum(1 for e in rt.events if e["type"] == "send" and e["req_id"] == "r1") == 160


def test_events_callback(tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_event(event: dict[str, Any]) -> None:
        with lock:
            got.append(event)

    runtime = Runtime(on_event=on_event)
    runtime.init(code="node.warn('w')\nreturn None", workdir=str(tmp_path))
    runtime.run_message({}, None)
    runtime.node.log("outside")
    assert got == [{"type": "log", "req_id": None, "level": "info", "text": "outside"}]
    assert runtime.events == []


def test_async_task_outliving_the_message_sends_and_finishes(rt: Runtime) -> None:
    code = ("import asyncio\n"
            "async def later():\n"
            "    await asyncio.to_thread(AFTER_RETURN.wait)\n"
            "    node.send({'payload': 'from task'})\n"
            "    node.done()\n"
            "TASKS.append(asyncio.get_running_loop().create_task(later()))\n"
            "await asyncio.sleep(0)\n"
            "return None")
    rt.setup("import threading\nTASKS = []\nAFTER_RETURN = threading.Event()")
    result = run(rt, code, req_id="t1")
    assert result["done"] is False and result["sent"] == 0
    rt.user_ns["AFTER_RETURN"].set()  # the task sends only now, after the message returned
    wait_events(rt, 2)
    assert rt.events == [
        {"type": "send", "req_id": None, "outputs": [[{"payload": "from task"}]]},
        {"type": "done", "req_id": "t1", "error": None},
    ]


def test_in_process_timeout_is_skipped_off_the_main_thread(rt: Runtime) -> None:
    rt.set_code("import time\ntime.sleep(0.3)\nreturn msg")
    box: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: box.append(rt.run_message({}, "x", 0.05)))
    worker.start()
    worker.join()
    assert box[0]["error"] is None  # documented: SIGALRM needs the main thread
