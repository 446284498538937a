"""Hostile and odd input on a real `kernelexec serve` process: every kind of Unicode, lone
surrogates, NaN/Infinity, deep and huge JSON, empty Buffers, malformed and oversized frames,
invalid code, code that raises in every phase.

Every request gets exactly one answer naming its req_id (a result, or an error frame), the
bridge keeps serving, and the node keeps working. Documented in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from server_support import TOKEN, Client, start_server, ws_url
from stress_support import StressBridge, blob_files
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from kernelexec.protocol import PROTOCOL_VERSION
from kernelexec.server import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

ECHO = "return msg"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bridge() -> AsyncIterator[StressBridge]:
    files_before = blob_files()
    bridge = StressBridge()
    try:
        yield bridge
    finally:
        code, err, procs, files = await bridge.stop_and_wait_clean(files_before)
        assert code == 0, err[-2000:]
        assert not procs and not files, (procs, files)


async def big_client(port: int) -> Client:
    """A protocol client that accepts frames up to 1 GiB (tornado's default is 10 MiB)."""
    request = HTTPRequest(ws_url(port), headers={"Authorization": f"token {TOKEN}"})
    client = Client(await websocket_connect(request, max_message_size=1 << 30))
    await client.send(type="hello", protocol_version=PROTOCOL_VERSION, client="stress")
    assert (await client.next(lambda f: f["type"] in ("welcome", "error")))["type"] == "welcome"
    return client


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(bridge: StressBridge) -> AsyncIterator[Client]:
    client = await big_client(bridge.port)
    await client.send(type="configure", node_id="echo", config={"code": ECHO})
    assert (await client.state("echo", "ready", "error"))["state"] == "ready"
    yield client
    client.close()


async def raw_execute(client: Client, req_id: str, text: str) -> dict[str, Any]:
    """Send a hand-made execute frame; its one answer (result or error) with this req_id."""
    await client.send_raw(text)
    answer = await client.result(req_id)
    await echo_works(client)
    return answer


async def echo_works(client: Client) -> None:
    req_id = f"alive-{time.monotonic_ns()}"
    result = await client.execute("echo", req_id, {"payload": "alive"})
    assert result["outputs"] == [[{"payload": "alive"}]], result


def frame(req_id: str, msg_text: str, node_id: str = "echo") -> str:
    return f'{{"type":"execute","node_id":"{node_id}","req_id":"{req_id}","msg":{msg_text}}}'


# ------------------------------------------------------------------------------- Unicode

EVERY_KIND = (
    "".join(chr(c) for c in range(0x00, 0x20))  # C0 controls, NUL included
    + "\x7f\x80\x9f\xa0\xad"  # DEL, C1 controls, NBSP, soft hyphen
    + "é e\u0301 ß ΩЖש عربى हिन्दी 中文 日本語 한국어"  # scripts, a combining mark, RTL
    + "\u200b\u200d\u2028\u2029\ufeff\ufffd\uffff"  # zero-width, separators, BOM, FFFD, FFFF
    + "\ue000\U000f0000\U0010ffff"  # private use, last code point
    + "😀 👩‍👩‍👧 🇫🇷 𝄞 𠀋"  # non-BMP: emoji, ZWJ sequence, flags, music, CJK ext B
)


async def test_every_kind_of_unicode_text_round_trips_exactly(client: Client) -> None:
    await client.configure("uni", code="msg['length'] = len(msg['payload'])\nreturn msg")
    msg = {"payload": EVERY_KIND, EVERY_KIND: EVERY_KIND[::-1]}
    result = await client.execute("uni", "uni-1", msg)
    assert result["error"] is None, result["error"]
    out = result["outputs"][0][0]
    assert out["payload"] == EVERY_KIND and out[EVERY_KIND] == EVERY_KIND[::-1]
    assert out["length"] == len(EVERY_KIND), "Python counts code points, not UTF-16 units"


async def test_a_lone_surrogate_becomes_U_FFFD_both_ways(client: Client) -> None:
    """JSON.stringify writes a lone surrogate as the escape \\ud800 (valid JSON, not valid
    UTF-8). Decision: it becomes U+FFFD, as JavaScript's own UTF-8 encoder does, in both
    directions (regression: the message and every later one of the node hung)."""
    answer = await raw_execute(
        client, "sur-1", frame("sur-1", '{"payload":"a\\ud800b","k\\udfff":["\\udc00"]}')
    )
    assert answer["error"] is None, answer["error"]
    assert answer["outputs"] == [[{"payload": "a\ufffdb", "k\ufffd": ["\ufffd"]}]]
    code = (
        "node.send({'payload': 'send \\ud800'})\n"
        "node.warn('warn \\udfff')\n"
        "print('print \\ud83d')\n"
        "return {'payload': 'return \\ud800', 'key \\udc00': 1}\n"
    )
    await client.configure("sur", code=code)
    result = await client.execute("sur", "sur-2", {})
    assert result["error"] is None, result["error"]
    assert result["outputs"] == [[{"payload": "return \ufffd", "key \ufffd": 1}]]
    assert result["stdout"] == "print \ufffd\n"
    # (the send frame comes before the result unless the bridge gave up waiting for it, 2 s)
    sent = await client.next(lambda f: f["type"] == "send" and f.get("req_id") == "sur-2", 10)
    assert sent["outputs"] == [[{"payload": "send \ufffd"}]]
    logs = result["logs"] + [f for f in client.seen if f["type"] == "log"]
    assert any(entry["text"] == "warn \ufffd" for entry in logs), logs


# ------------------------------------------------------------------------------- numbers


async def test_nan_and_infinity_travel_as_null(client: Client) -> None:
    answer = await raw_execute(
        client, "nan-1", frame("nan-1", '{"payload":[NaN,Infinity,-Infinity,1e999,-1e999]}')
    )
    assert answer["error"] is None and answer["outputs"] == [[{"payload": [None] * 5}]], answer
    code = (
        "return {'payload': [float('nan'), float('inf'), -float('inf'), 2**70, 0.1],\n"
        "        'nested': {'x': float('nan')}}"
    )
    await client.configure("nan", code=code)
    result = await client.execute("nan", "nan-2", {})
    assert result["outputs"] == [
        [{"payload": [None, None, None, 2**70, 0.1], "nested": {"x": None}}]
    ], result


# ------------------------------------------------------------------------------- JSON size


async def test_deeply_nested_json_gets_an_answer_at_every_depth(client: Client) -> None:
    """A few hundred levels: round trip; deeper: CONVERSION_ERROR (kernel, from ~500) or, from
    ~990, BAD_FRAME naming the req_id (bridge; regression: an INTERNAL error without req_id, so
    the message was never answered)."""
    outcomes = {}
    for depth in (100, 180, 900, 5_000, 200_000):
        req_id = f"deep-{depth}"
        text = "[" * depth + "]" * depth
        answer = await raw_execute(client, req_id, frame(req_id, f'{{"payload":{text}}}'))
        if answer["type"] == "result" and answer["error"] is None:
            outcomes[depth] = "ok"
            value = answer["outputs"][0][0]["payload"]
            for _ in range(depth - 1):
                value = value[0]
            assert value == []
        else:
            error = answer["error"]
            assert error["code"] in ("CONVERSION_ERROR", "BAD_FRAME"), error
            assert "nested" in error["message"], error
            outcomes[depth] = error["code"]
    assert outcomes[100] == "ok" and outcomes[200_000] == "BAD_FRAME", outcomes


async def test_a_frame_above_100_mib_is_taken(client: Client) -> None:
    """100 MiB + a little, below max_frame_bytes (256 MiB) but beyond tornado's default read
    buffer (regression: the bridge dropped the connection, failing every node's messages)."""
    payload = "x" * (100 << 20) + "ü€😀"
    code = "import hashlib\nreturn {'n': len(msg['payload']), 'tail': msg['payload'][-4:]}"
    await client.configure("digest", code=code)
    result = await client.execute("digest", "above-100", {"payload": payload})
    assert result["error"] is None, result["error"]
    assert result["outputs"] == [[{"n": len(payload), "tail": "x" + "ü€😀"}]]


async def test_tens_of_megabytes_of_json_round_trip(client: Client) -> None:
    payload = [{"i": i, "name": f"item {i} ü", "tags": ["a", "😀"]} for i in range(250_000)]
    size = len(json.dumps(payload).encode())
    assert size > 10 << 20
    result = await client.execute("echo", "big-objects", {"payload": payload})
    assert result["error"] is None, result["error"]
    assert result["outputs"][0][0]["payload"] == payload


# ------------------------------------------------------------------------------- bytes


async def test_empty_and_small_buffers(client: Client) -> None:
    code = "msg['types'] = [type(v).__name__ for v in msg['payload']]\nreturn msg"
    await client.configure("buf", code=code)
    buffers = [{"$kx": "buffer", "b64": ""}, {"$kx": "buffer", "b64": "AA=="}]
    result = await client.execute("buf", "buf-1", {"payload": buffers})
    assert result["error"] is None, result["error"]
    out = result["outputs"][0][0]
    assert out["types"] == ["bytes", "bytes"] and out["payload"] == buffers


async def test_forged_markers_are_refused_not_followed(client: Client) -> None:
    """A blob marker names no file (only an index into the frame's table): not read."""
    forged = [
        {"$kx": "blob", "path": "/etc/passwd", "size": 10},
        {"$kx": "blob", "path": "/dev/shm/kernelexec-1-nothing-0", "size": 10},
        {"$kx": "buffer", "b64": "not base64!"},
        {"$kx": "unknown-kind"},
    ]
    for i, marker in enumerate(forged):
        result = await client.execute("echo", f"forged-{i}", {"payload": marker})
        error = result["error"]
        if error is None:  # an unknown marker kind stays a plain dict (escaped on the way out)
            assert result["outputs"][0][0]["payload"] == {"$kx": "esc", "v": marker}
            assert marker["$kx"] == "unknown-kind"
        else:
            assert error["code"] == "CONVERSION_ERROR", error
            assert "root:" not in json.dumps(result), "no content of the forged file leaks"


# ------------------------------------------------------------------------------- frames

MALFORMED: list[str | bytes] = [
    "",
    "not json",
    "[1, 2, 3]",
    '"a string"',
    "null",
    '{"no_type": 1}',
    '{"type": 42}',
    '{"type": "no-such-frame"}',
    '{"type": "execute"}',
    '{"type": "execute", "node_id": "echo", "req_id": "m1"}',
    '{"type": "execute", "node_id": "echo", "req_id": "m2", "msg": "not an object"}',
    '{"type": "execute", "node_id": "echo", "req_id": 7, "msg": {}}',
    '{"type": "execute", "node_id": "nobody", "req_id": "m3", "msg": {}}',
    '{"type": "configure", "node_id": "x", "config": {"workers": "many"}}',
    '{"type": "context_reply", "ctx_id": "c999", "value": 1, "error": null}',
    '{"type": "hello", "protocol_version": "banana", "client": "x"}',
    '{"type": "ping", "id": "p", "extra": {"deep": [1, {"x": null}]}}',
    b"\x00\x01\x02\xff\xfe",
    b'{"type": "ping", "id": "b"}',
    '{"type": "execute", "node_id": "echo", "req_id": "m4", "msg": {}',
    '{"type":"ping","id":"\\ud800"}',
]


async def test_malformed_frames_get_error_frames_and_break_nothing(client: Client) -> None:
    before = len(client.seen)
    for text in MALFORMED:
        await client.send_raw(text)
    await client.send(type="ping", id="after-malformed")
    await client.next(lambda f: f["type"] == "pong" and f["id"] == "after-malformed")
    # a lone surrogate echoed back is sent as U+FFFD (regression: since protocol 1.1 batches
    # the frames of one turn, the unencodable one dropped its whole batch)
    await client.next(lambda f: f["type"] == "pong" and f["id"] == "\ufffd")
    answers = client.seen[before:]
    errors = [f for f in answers if f["type"] == "error"]
    assert all(e["error"]["code"] != "INTERNAL" for e in errors), errors
    for req_id in ("m1", "m2", "m3", "m4"):
        mine = [f for f in answers if f.get("req_id") == req_id]
        assert len(mine) <= 1, mine
    for req_id in ("m1", "m2", "m3"):  # parseable enough to name the request
        assert [f["type"] for f in answers if f.get("req_id") == req_id] == ["error"]
    await echo_works(client)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def small_server() -> AsyncIterator[Server]:
    """An in-process bridge with max_frame_bytes = 1 MiB, to send oversized frames cheaply."""
    server = await start_server(max_frame_bytes=1 << 20)
    yield server
    await server.stop("tests done")


async def test_oversized_frames(small_server: Server) -> None:
    """Above max_frame_bytes: FRAME_TOO_LARGE naming the req_id, connection kept. Beyond twice
    that: the connection closes (1009), and the bridge serves a new one."""
    client = await big_client(small_server.port)
    await client.configure("small", code=ECHO)
    big = "x" * (1 << 20)
    await client.send_raw(frame("too-big", json.dumps({"payload": big}), node_id="small"))
    answer = await client.result("too-big")
    assert answer["type"] == "error" and answer["error"]["code"] == "FRAME_TOO_LARGE", answer
    result = await client.execute("small", "fits", {"payload": "x" * 1000})
    assert result["error"] is None
    await client.send_raw(frame("way-too-big", json.dumps({"payload": big * 3}), "small"))
    with pytest.raises(ConnectionError, match="1009"):
        await client.result("way-too-big", timeout=30)
    client.close()
    again = await big_client(small_server.port)
    await again.configure("small2", code=ECHO)
    assert (await again.execute("small2", "new-conn", {"payload": 1}))["error"] is None
    again.close()


# ------------------------------------------------------------------------------- code


async def test_invalid_code_in_every_phase(client: Client) -> None:
    state = await client.configure("syn", code="x = 1\nreturn msg +")
    assert state["state"] in ("ready", "error")
    result = await client.execute("syn", "syn-1", {"payload": 1})
    assert result["error"]["code"] == "SYNTAX_ERROR" and result["error"]["line"] == 2, result
    state = await client.configure("synsetup", setup="def broken(:\n    pass")
    assert state["state"] == "error" and state["error"]["code"] == "SETUP_FAILED", state
    result = await client.execute("synsetup", "synsetup-1", {"payload": 1})
    assert result["error"]["code"] == "SETUP_FAILED"
    await client.configure("synstop", stop="this is not python")
    await client.send(type="close", node_id="synstop")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "synstop", timeout=30)


async def test_code_that_raises_in_every_phase(client: Client) -> None:
    await client.configure(
        "raise",
        setup="def boom(what):\n    raise RuntimeError(what)",
        code="x = 1\nboom('message ' + str(msg['payload']))",
        stop="boom('stop')",
    )
    for i in range(3):
        result = await client.execute("raise", f"raise-{i}", {"payload": i})
        error = result["error"]
        assert error["code"] == "USER_ERROR" and error["type"] == "RuntimeError", error
        assert error["message"] == f"message {i}" and error["line"] == 2, error
    await client.send(type="close", node_id="raise")
    await client.next(lambda f: f["type"] == "closed" and f["node_id"] == "raise", timeout=60)
    await echo_works(client)


async def test_the_bridge_is_still_healthy(bridge: StressBridge, client: Client) -> None:
    await echo_works(client)
    await asyncio.sleep(0)
    assert bridge.proc.poll() is None


async def test_an_unexpected_error_fails_the_batch_and_the_worker_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any exception on the way to the kernel (here injected once) fails that batch with
    INTERNAL; regression: it ended the pool's worker loop and the node hung for good."""
    from kernelexec.config import PoolConfig
    from kernelexec.pool import MemoryHooks, make_pool

    pool = make_pool(PoolConfig(node_id="bug", code=ECHO), MemoryHooks())
    await pool.start()
    try:
        kernel = pool.workers[0].kernel
        injected = []

        def flaky(original: Any) -> Any:
            async def request(op: dict[str, Any]) -> Any:
                if op.get("op") == "run" and not injected:
                    injected.append(1)
                    raise RuntimeError("injected fault")
                return await original(op)

            return request

        for path in ("request", "lane_request"):  # the Jupyter path and the lane
            monkeypatch.setattr(kernel, path, flaky(getattr(kernel, path)))
        first = await asyncio.wait_for(pool.submit("a", {"payload": 1}), 20)
        assert first["error"]["code"] == "INTERNAL" and "injected" in first["error"]["message"]
        second = await asyncio.wait_for(pool.submit("b", {"payload": 2}), 20)
        assert second["error"] is None and second["outputs"] == [[{"payload": 2}]]
    finally:
        await pool.close()
