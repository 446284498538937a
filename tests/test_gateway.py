"""GatewayKernel against real gateways on 127.0.0.1 (marked ``gateway``).

Each gateway of the matrix (tests/gateway_fixtures.py: Kernel Gateway 3.0 with ipykernel 7
and with ipykernel 6.29, Enterprise Gateway 3.3 with jupyter_client 6.1 kernels) runs once
for this module, token-protected with kernel listing on, started when a test first needs
it. Tests parametrised over ``flavour`` run on every one (hello, setup state, node.send,
blobs each way, timeouts, errors with their line, a wrong token, a kernel that stops
answering); the others on Kernel Gateway with ipykernel 7. Each test drives its own kernels
and must leave none behind on the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_fixtures import (
    DEFAULT_FLAVOUR,
    FLAVOURS,
    Gateways,
    free_port,
    gateway_kernel_ids,
    matrix,
    running_gateway,
)
from server_support import wait_for_file

from kernelexec.config import EnvConfig
from kernelexec.errors import GatewayError, KernelDiedError
from kernelexec.handles.gateway import (
    EVENTS_COMM_ID,
    GatewayKernel,
    GatewaySettings,
    make_gateway_kernel,
    runtime_bootstrap_code,
)
from kernelexec.kernel.blobs import pid_alive

pytestmark = [pytest.mark.gateway, pytest.mark.timeout(90)]

TOKEN = "kernelexec-test-token"


@pytest.fixture(scope="module")
def gateways() -> Iterator[Gateways]:
    """The gateways of this module; gone (with their kernels) before other modules run."""
    started = Gateways(TOKEN)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def gateway_url(gateways: Gateways) -> str:
    return gateways.url(DEFAULT_FLAVOUR)


#: (ipykernel, jupyter_client) version prefixes each flavour's kernels must report
EXPECTED_VERSIONS = {
    "kg3-ipykernel7": ("7.", "8."),
    "kg3-ipykernel6": ("6.29.", "8."),
    "eg3.3-jc6.1": ("6.29.5", "6.1.12"),
}


def settings(url: str, flavour: str = DEFAULT_FLAVOUR, **overrides: Any) -> GatewaySettings:
    env = overrides.pop("kernel_env", {})
    overrides["kernel_env"] = {**FLAVOURS[flavour].kernel_env_vars, **env}
    return GatewaySettings.from_url(url, TOKEN, **overrides)


@pytest.fixture
async def kernel(gateway_url: str) -> AsyncIterator[GatewayKernel]:
    handle = GatewayKernel(settings(gateway_url, liveness_interval=1.0))
    await handle.start()
    try:
        yield handle
    finally:
        await handle.shutdown()
        assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll until ``check()`` holds or the (generous) deadline passes."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def payload(reply: dict[str, Any]) -> Any:
    assert reply["status"] == "ok", reply
    return next(p["data"] for p in reply["payload"] if p.get("source") == "kernelexec")


ANSWER = (
    "def __answer(value):\n"
    "    get_ipython().payload_manager.write_payload({'source': 'kernelexec', 'data': value})\n"
    "def __parent():\n"
    "    return get_ipython().kernel.get_parent('shell')\n"
)


async def test_execute_plain_cell_and_extra_field(kernel: GatewayKernel) -> None:
    assert kernel.is_alive()
    reply = await kernel.execute(ANSWER + "x = 41", {})
    assert reply["status"] == "ok"
    reply = await kernel.execute(
        "__answer({'x': x + 1, 'extra': __parent()['content']['kernelexec']})",
        {"op": "echo", "batch": [{"req_id": "r1", "msg": {"payload": "é😀"}}]},
    )
    assert payload(reply) == {
        "x": 42,
        "extra": {"op": "echo", "batch": [{"req_id": "r1", "msg": {"payload": "é😀"}}]},
    }


async def test_user_error_is_a_reply_not_an_exception(kernel: GatewayKernel) -> None:
    reply = await kernel.execute("1/0", {})
    assert reply["status"] == "error"
    assert reply["ename"] == "ZeroDivisionError"
    assert kernel.is_alive()


async def test_events_with_buffers_reach_on_event(kernel: GatewayKernel) -> None:
    events: list[tuple[dict[str, Any], list[bytes]]] = []
    kernel.on_event = lambda event, buffers: events.append((event, buffers))
    code = (
        "from ipykernel.comm import Comm\n"
        f"c = Comm(target_name='kernelexec', comm_id={EVENTS_COMM_ID!r}, primary=False)\n"
        "c.send({'type': 'log', 'req_id': 'r1', 'level': 'info', 'text': 'hi'},"
        " buffers=[b'\\x00\\x01', b'xyz'])\n"
        "c.send({'type': 'status', 'status': {'text': 'ok'}})\n"
    )
    reply = await kernel.execute(code, {})
    assert reply["status"] == "ok", reply
    await until(lambda: len(events) >= 2)  # IOPub may trail the reply
    assert events == [
        ({"type": "log", "req_id": "r1", "level": "info", "text": "hi"}, [b"\x00\x01", b"xyz"]),
        ({"type": "status", "status": {"text": "ok"}}, []),
    ]


async def test_stdin_context_round_trip(kernel: GatewayKernel) -> None:
    prompts: list[str] = []

    async def answer(prompt: str) -> str:
        prompts.append(prompt)
        request = json.loads(prompt)
        return json.dumps({"value": f"value of {request['key']}", "error": None})

    kernel.on_stdin = answer
    prompt = {"kernelexec": "context", "scope": "flow", "op": "get", "key": "k"}
    code = ANSWER + f"import json\n__answer(json.loads(input({json.dumps(prompt)!r})))"
    reply = await kernel.execute(code, {})
    assert payload(reply) == {"value": "value of k", "error": None}
    assert [json.loads(p) for p in prompts] == [prompt]


async def test_stdin_handler_failure_answers_with_an_error(kernel: GatewayKernel) -> None:
    async def broken(prompt: str) -> str:
        raise RuntimeError("no store")

    kernel.on_stdin = broken
    code = ANSWER + "import json\n__answer(json.loads(input('{}')))"
    assert payload(await kernel.execute(code, {})) == {
        "value": None,
        "error": "RuntimeError: no store",
    }


BUFFER_DIGESTS = ANSWER + (
    "import hashlib\n"
    "__answer([hashlib.sha256(b).hexdigest() for b in __parent()['buffers']])"
)


@pytest.mark.parametrize("sizes", [[3, 70_000], [25 * 1024 * 1024, 5, 11 * 1024 * 1024]])
async def test_buffers_reach_the_kernel(kernel: GatewayKernel, sizes: list[int]) -> None:
    """Small requests carry their buffers; above the 10 MiB cap they are staged in chunks."""
    reply = await kernel.execute(runtime_bootstrap_code(), {})
    assert reply["status"] == "ok", reply
    buffers = [os.urandom(n) for n in sizes]
    reply = await kernel.execute(BUFFER_DIGESTS, {"op": "x"}, buffers)
    assert payload(reply) == [hashlib.sha256(b).hexdigest() for b in buffers]


@pytest.mark.parametrize("flavour", matrix())
async def test_bootstrap_packs_like_local_kernels(gateways: Gateways, flavour: str) -> None:
    """A lone surrogate or a NaN in a reply must not break it (stock packer: no reply), on
    every kernel line (jupyter_client 6.1 has no json_default: the packer must not need it);
    the bootstrap reports the kernel's versions and its kernelexec_request handler."""
    url = gateways.url(flavour)
    kernel = GatewayKernel(settings(url, flavour, bootstrap_timeout=20))
    await kernel.start()
    try:
        assert (await kernel.execute(runtime_bootstrap_code(), {}))["status"] == "ok"
        versions = kernel.bootstrap_info["versions"]
        ipykernel, jupyter_client = EXPECTED_VERSIONS[flavour]
        assert versions["ipykernel"].startswith(ipykernel), versions
        assert versions["jupyter_client"].startswith(jupyter_client), versions
        assert kernel.bootstrap_info["features"] == {
            "wire_pack": True,
            "request": "kernelexec_request",
        }
        assert kernel._speaks_requests  # the gateway forwards kernelexec_request
        code = ANSWER + "__answer({'s': 'a\\ud800b', 'n': float('nan')})"
        # ipykernel json_clean()s execute_replies itself with jupyter_client < 7 (NaN: 'nan')
        nan = "nan" if jupyter_client.startswith("6.") else None
        assert payload(await asyncio.wait_for(kernel.execute(code, {}), 10)) == {
            "s": "a\ufffdb",
            "n": nan,
        }
        # kernelexec_request replies are packed by wire_pack alone, on every kernel line
        await kernel.execute("__kernelexec__.respond = lambda: {'n': float('nan')}", {})
        reply = await asyncio.wait_for(kernel.request({"op": "x"}), 10)
        assert payload(reply) == {"n": None}
    finally:
        await kernel.shutdown()
    assert gateway_kernel_ids(url, TOKEN) == []


async def test_a_kernel_too_old_is_refused_naming_its_versions(kernel: GatewayKernel) -> None:
    await kernel.execute("import ipykernel; ipykernel.__version__ = '6.28.0'", {})
    reply = await kernel.execute(runtime_bootstrap_code(), {})
    assert reply["status"] == "error" and reply["ename"] == "RuntimeError", reply
    assert "ipykernel 6.28.0 (needs >= 6.29)" in reply["evalue"], reply["evalue"]
    assert "jupyter_client 8." in reply["evalue"] and "upgrade" in reply["evalue"]
    assert not kernel._speaks_requests


async def test_staging_without_bootstrap_is_a_clear_error(kernel: GatewayKernel) -> None:
    with pytest.raises(GatewayError, match="runtime_bootstrap_code"):
        await kernel.execute(BUFFER_DIGESTS, {}, [os.urandom(11 * 1024 * 1024)])


async def test_interrupt_stops_a_busy_loop(kernel: GatewayKernel, tmp_path: Path) -> None:
    running = tmp_path / "running"
    code = f"open({str(running)!r}, 'w').close()\nwhile True: pass"
    task = asyncio.ensure_future(kernel.execute(code, {}))
    await wait_for_file(running)  # the loop runs: the interrupt cannot reach an idle kernel
    assert not task.done()
    await kernel.interrupt()
    reply = await asyncio.wait_for(task, 30)
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"
    assert (await kernel.execute("pass", {}))["status"] == "ok"


async def test_restart_gives_a_fresh_namespace(kernel: GatewayKernel) -> None:
    await kernel.execute("survivor = 1", {})
    kernel_id = kernel.kernel_id
    await kernel.restart()
    assert kernel.kernel_id == kernel_id
    assert kernel.is_alive()
    reply = await kernel.execute("survivor", {})
    assert reply["ename"] == "NameError"


async def test_kernel_death_raises_and_restart_recovers(kernel: GatewayKernel) -> None:
    with pytest.raises(KernelDiedError):
        await asyncio.wait_for(kernel.execute("import os; os._exit(1)", {}), 30)
    assert not kernel.is_alive()
    with pytest.raises(KernelDiedError):
        await kernel.execute("pass", {})
    await kernel.restart()
    assert kernel.is_alive()
    assert (await kernel.execute("x = 1", {}))["status"] == "ok"


async def test_kernel_deleted_behind_our_back(
    gateway_url: str, kernel: GatewayKernel, tmp_path: Path
) -> None:
    """A culled kernel: the waiting execute fails, restart() starts a new kernel."""
    from tornado.httpclient import AsyncHTTPClient

    running = tmp_path / "running"
    code = f"import time; open({str(running)!r}, 'w').close(); time.sleep(30)"
    task = asyncio.ensure_future(kernel.execute(code, {}))
    await wait_for_file(running)  # the execute is under way when the kernel goes
    client = AsyncHTTPClient(force_instance=True)
    try:
        await client.fetch(
            f"{gateway_url}/api/kernels/{kernel.kernel_id}", method="DELETE",
            headers={"Authorization": f"token {TOKEN}"},
        )
    finally:
        client.close()
    try:  # ipykernel 7 dies under the request; ipykernel 6 may still answer it (aborted)
        reply = await asyncio.wait_for(task, 15)
        assert reply["status"] != "ok"
    except KernelDiedError:
        pass
    deadline = time.monotonic() + 30
    while kernel.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    with pytest.raises(KernelDiedError):
        await kernel.execute("pass", {})
    old = kernel.kernel_id
    await kernel.restart()
    assert kernel.kernel_id != old
    assert (await kernel.execute("pass", {}))["status"] == "ok"


async def test_lost_connection_is_reconnected_and_replayed(
    kernel: GatewayKernel, tmp_path: Path
) -> None:
    """A dropped WebSocket comes back with the same session: the server replays the reply."""
    await kernel.execute("import time", {})
    running = tmp_path / "running"
    code = ANSWER + f"open({str(running)!r}, 'w').close()\ntime.sleep(1)\n__answer('late')"
    task = asyncio.ensure_future(kernel.execute(code, {}))
    await wait_for_file(running)  # the request is under way when the connection drops
    conn = kernel._channels.ws
    assert conn is not None and conn.stream is not None
    conn.stream.close()  # as if the network dropped the connection
    await asyncio.sleep(0)
    # a request made while reconnecting waits for the connection instead of failing
    assert (await asyncio.wait_for(kernel.execute("pass", {}), 15))["status"] == "ok"
    assert payload(await asyncio.wait_for(task, 15)) == "late"
    assert kernel.is_alive() and kernel._channels.ws is not conn
    assert (await kernel.execute("pass", {}))["status"] == "ok"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_gateway_restart_loses_the_kernel_and_restart_makes_a_new_one() -> None:
    """The gateway process restarts (a new pod): the old kernel is gone; the waiting side
    sees KernelDiedError, and restart() starts a kernel on the new gateway."""
    port = free_port()
    handle = GatewayKernel(
        settings(f"http://127.0.0.1:{port}", reconnect_timeout=2.0, liveness_interval=1.0)
    )
    try:
        with running_gateway(TOKEN, port=port):
            await handle.start()
            assert (await handle.execute("x = 1", {}))["status"] == "ok"
            old = handle.kernel_id
        deadline = time.monotonic() + 30
        while handle.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not handle.is_alive()
        with running_gateway(TOKEN, port=port) as url:
            with pytest.raises(KernelDiedError):
                await handle.execute("x", {})
            await handle.restart()
            assert handle.kernel_id != old and handle.is_alive()
            assert (await handle.execute("x = 2", {}))["status"] == "ok"
            await handle.shutdown()
            assert gateway_kernel_ids(url, TOKEN) == []
    finally:
        await handle.shutdown(now=True)


@pytest.mark.parametrize("flavour", matrix())
async def test_bad_token_fails_fast(
    gateways: Gateways, flavour: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kernelexec")
    handle = GatewayKernel(GatewaySettings.from_url(gateways.url(flavour), "wrong"))
    with pytest.raises(GatewayError, match="gateway_token"):
        await handle.start()
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries == []  # no retry: one request
    await handle.shutdown()


@pytest.mark.parametrize("flavour", matrix())
async def test_a_kernel_that_stops_answering_fails_the_bootstrap_in_bounded_time(
    gateways: Gateways, flavour: str
) -> None:
    """A kernel that no longer answers (here: stopped with SIGSTOP, as a wedged kernel
    would be) fails the bootstrap with a GatewayError after bootstrap_timeout, saying what
    the gateway and the kernel said; without the bound the worker would wait forever."""
    import signal

    url = gateways.url(flavour)
    handle = GatewayKernel(settings(url, flavour, bootstrap_timeout=2, liveness_interval=0.5))
    await handle.start()
    pid = payload(await handle.execute(ANSWER + "import os; __answer(os.getpid())", {}))
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(GatewayError) as caught:  # the bootstrap bound, not the 30 s here
            await asyncio.wait_for(handle.execute(runtime_bootstrap_code(), {}), 30)
        text = str(caught.value)
        assert "did not answer the kernelexec bootstrap within 2 s" in text, text
        assert "the gateway reports the kernel" in text, text
        assert "the kernel reported ipython" in text and ", Python 3." in text, text
        assert "bootstrap_timeout" in text, text
        assert not handle.is_alive()
    finally:
        os.kill(pid, signal.SIGCONT)
        await handle.shutdown()
    assert gateway_kernel_ids(url, TOKEN) == []


@pytest.mark.timeout(120)
async def test_a_gateway_that_drops_kernelexec_request_gets_execute_requests() -> None:
    """Does the gateway pass a shell message type it does not know? Kernel Gateway and
    Enterprise Gateway do, unless allowed_message_types says otherwise: then the probe
    after the bootstrap goes unanswered and runtime ops go as execute_requests."""
    allowed = ("execute_request", "kernel_info_request", "input_reply", "interrupt_request")
    args = tuple(f"--MappingKernelManager.allowed_message_types={t}" for t in allowed)
    with running_gateway(TOKEN, extra_args=args) as url:
        code = "msg['payload'] += 1\nreturn msg"
        pool, _ = await gateway_pool(f"{url}?probe_timeout=1", code, setup="x = 1")
        try:
            assert not any(w.kernel._speaks_requests for w in pool.workers)
            assert outs(await pool.submit("f1", {"payload": 1})) == [2]
        finally:
            await pool.close()
        assert gateway_kernel_ids(url, TOKEN) == []


async def test_unreachable_gateway_fails_fast() -> None:
    handle = GatewayKernel(GatewaySettings.from_url(f"http://127.0.0.1:{free_port()}", TOKEN))
    with pytest.raises(GatewayError, match="failed after 4 attempt"):  # ~1.75 s of backoff
        await handle.start()
    await handle.shutdown()


async def test_kernel_start_timeout_is_a_clear_error(gateway_url: str) -> None:
    """A kernel that never answers (a busy cluster): GatewayError after start_timeout, and
    the half-started kernel is deleted."""
    handle = GatewayKernel(settings(gateway_url, kernel_name="never-ready", start_timeout=3))
    with pytest.raises(GatewayError, match="raise start_timeout"):
        await handle.start()
    await handle.shutdown()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_unknown_kernel_name_is_a_clear_error(gateway_url: str) -> None:
    handle = GatewayKernel(settings(gateway_url, kernel_name="no-such-kernel"))
    with pytest.raises(GatewayError, match="no-such-kernel"):
        await handle.start()
    await handle.shutdown()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


@pytest.mark.timeout(180)
async def test_legacy_websocket_protocol() -> None:
    """A server without the v1 subprotocol: JSON text frames and binary frames work too."""
    legacy = ("--ZMQChannelsWebsocketConnection.kernel_ws_protocol=",)
    with running_gateway(TOKEN, extra_args=legacy) as url:
        handle = GatewayKernel(settings(url))
        await handle.start()
        try:
            assert handle._channels.subprotocol is None
            events: list[tuple[dict[str, Any], list[bytes]]] = []
            handle.on_event = lambda event, buffers: events.append((event, buffers))

            async def answer(prompt: str) -> str:
                return json.dumps({"value": prompt, "error": None})

            handle.on_stdin = answer
            assert (await handle.execute(runtime_bootstrap_code(), {}))["status"] == "ok"
            assert handle._speaks_requests  # kernelexec_request passes the legacy protocol too
            answer = payload(await handle.request({"op": "nope"}))
            assert "unknown kernelexec op 'nope'" in answer["error"]["message"]
            extra = {"op": "echo", "msg": {"payload": "é😀"}}
            code = ANSWER + "__answer(__parent()['content']['kernelexec'])"
            assert payload(await handle.execute(code, extra)) == extra
            buffers = [b"abc", os.urandom(11 * 1024 * 1024)]
            reply = await handle.execute(BUFFER_DIGESTS, {"op": "x"}, buffers)
            assert payload(reply) == [hashlib.sha256(b).hexdigest() for b in buffers]
            code = (
                ANSWER + "from ipykernel.comm import Comm\n"
                f"Comm(target_name='k', comm_id={EVENTS_COMM_ID!r}, primary=False)"
                ".send({'type': 'log'}, buffers=[b'xy'])\n"
                "__answer(input('q'))"
            )
            assert payload(await handle.execute(code, {})) == json.dumps(
                {"value": "q", "error": None}
            )
            await until(lambda: bool(events))  # IOPub may trail the reply
            assert events == [({"type": "log"}, [b"xy"])]
        finally:
            await handle.shutdown()


def test_settings_from_url_and_factory() -> None:
    env = EnvConfig(
        gateway_url="https://eg.example:8888/gw/?kernel_name=python_k8s&start_timeout=300",
        gateway_token="t", cpu_limit=0.5, memory_limit="512M",
    )
    handle = make_gateway_kernel(env, node_id="n1")
    assert handle.settings.url == "https://eg.example:8888/gw"
    assert handle.settings.ws_url == "wss://eg.example:8888/gw"
    assert handle.settings.kernel_name == "python_k8s"
    assert handle.settings.start_timeout == 300.0
    assert handle.settings.token == "t" and "'t'" not in repr(handle.settings)
    assert handle.settings.kernel_env["KERNEL_CPUS"] == "0.5"
    assert handle.settings.kernel_env["KERNEL_MEMORY"] == "512M"
    with pytest.raises(GatewayError, match="unknown"):
        GatewaySettings.from_url("http://h:1/?bogus=1")
    with pytest.raises(GatewayError, match="not valid"):
        GatewaySettings.from_url("h:1")


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("KERNELEXEC_KERNEL_NAMESPACE", "ns\nx", "a newline"),
        ("KERNELEXEC_KERNEL_IMAGE", "img:$(id)", "'$'"),
        ("KERNELEXEC_KERNEL_IMAGE", "img`id`", "a backtick"),
        ("KERNELEXEC_KERNEL_NAMESPACE", "ns'x", "a single quote"),
        ("KERNELEXEC_KERNEL_NAMESPACE", 'ns"x', "a double quote"),
    ],
)
def test_kernel_variables_are_validated(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    """KERNEL_* values reach Enterprise Gateway's launch commands and pod templates."""
    env = EnvConfig(gateway_url="http://127.0.0.1:1")
    monkeypatch.setenv(name, value)
    with pytest.raises(GatewayError, match=f"KERNEL_{name[18:]} .*contains {re.escape(said)}"):
        make_gateway_kernel(env, node_id="n1")


def test_memory_limit_is_validated_and_names_its_origin() -> None:
    env = EnvConfig(gateway_url="http://127.0.0.1:1", memory_limit="512M\nKERNEL_X=1")
    with pytest.raises(GatewayError, match=r"KERNEL_MEMORY \(from memory_limit\).*newline"):
        make_gateway_kernel(env, node_id="n1")
    env = EnvConfig(gateway_url="http://127.0.0.1:1", memory_limit="512M\0")
    with pytest.raises(GatewayError, match=r"KERNEL_MEMORY \(from memory_limit\).*a NUL"):
        make_gateway_kernel(env, node_id="n1")
    fine = make_gateway_kernel(EnvConfig(gateway_url="http://127.0.0.1:1"), node_id="n-1.a")
    assert fine.settings.kernel_env["KERNEL_KERNELEXEC_NODE"] == "n-1.a"


async def test_kernel_variables_given_directly_are_validated_at_start() -> None:
    bad = GatewaySettings.from_url("http://127.0.0.1:1", TOKEN, kernel_env={"KERNEL_A B": "1"})
    with pytest.raises(GatewayError, match="not a valid name"):
        await GatewayKernel(bad).start()


def test_shipped_code_parses_as_python_3_9() -> None:
    """What the bootstrap sends into a stock kernel must run on Python 3.9: no 3.10+ syntax
    (match, parenthesised context managers, except*...) in any module it ships."""
    import ast

    from kernelexec.handles.gateway.bootstrap import shipped_sources

    files = shipped_sources()
    assert "kernelexec/kernel/runtime.py" in files
    assert "kernelexec/handles/gateway/kernel_side.py" in files
    for name, source in files.items():
        try:
            tree = ast.parse(source, filename=name, feature_version=(3, 9))
        except SyntaxError as exc:
            pytest.fail(f"{name} is shipped into kernels but is not Python 3.9: {exc}")
        assert not _calls_newer_than_3_9(tree), f"{name}: {_calls_newer_than_3_9(tree)}"
    with pytest.raises(SyntaxError):  # the checks can fail
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
    assert _calls_newer_than_3_9(ast.parse("@dataclass(slots=True)\nclass A: pass"))


#: keyword arguments that Python 3.9 does not know, of calls the runtime might make
_NEWER_KEYWORDS = {"dataclass": {"slots", "kw_only", "match_args"}, "zip": {"strict"}}


def _calls_newer_than_3_9(tree: Any) -> list[str]:
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            newer = _NEWER_KEYWORDS.get(name, set())
            found += [f"line {node.lineno}: {name}({k.arg}=...)" for k in node.keywords
                      if k.arg in newer]  # fmt: skip
    return found


def test_kernelexec_run_on_a_kernel_that_never_answers_ends(gateway_url: str) -> None:
    """Issue 17's symptom: `kernelexec run --gateway-url` printed nothing and never returned.
    Now it ends after the bootstrap timeout with the reason, and leaves no kernel."""
    import subprocess
    import sys

    argv = [
        sys.executable, "-m", "kernelexec", "run", "-c", "return msg",
        "--gateway-url", f"{gateway_url}?kernel_name=mute", "--gateway-token", TOKEN,
        "--gateway-bootstrap-timeout", "2",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done
    error = json.loads(done.stdout)["error"]
    assert "did not answer the kernelexec bootstrap within 2 s" in error["message"], error
    deadline = time.monotonic() + 30
    while gateway_kernel_ids(gateway_url, TOKEN) and time.monotonic() < deadline:
        time.sleep(0.1)  # the gateway kills a kernel that ignores its shutdown_request
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


def test_gateway_options_from_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernelexec.handles.gateway.settings import with_options

    assert GatewaySettings.from_url("http://h:1").bootstrap_timeout == 60.0
    monkeypatch.setenv("KERNELEXEC_GATEWAY_BOOTSTRAP_TIMEOUT", "7")
    assert GatewaySettings.from_url("http://h:1").bootstrap_timeout == 7.0

    url = with_options("http://h:1/gw?kernel_name=k&bootstrap_timeout=9", bootstrap_timeout=2.5)
    parsed = GatewaySettings.from_url(url)
    assert parsed.bootstrap_timeout == 2.5 and parsed.kernel_name == "k"
    assert with_options("http://h:1", bootstrap_timeout=None) == "http://h:1"
    import argparse

    from kernelexec.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--gateway-url", "http://h:1", "--gateway-bootstrap-timeout", "3"])
    assert GatewaySettings.from_url(str(serve._gateway_url(args))).bootstrap_timeout == 3.0


@pytest.mark.timeout(180)
async def test_no_kernel_process_survives_the_gateway() -> None:
    """Shutdown leaves nothing on the gateway; stopping the gateway leaves no kernel."""
    pids: list[int] = []
    with running_gateway(TOKEN) as url:
        kept = GatewayKernel(settings(url))
        await kept.start()
        pids.append(payload(await kept.execute(ANSWER + "import os; __answer(os.getpid())", {})))
        closed = GatewayKernel(settings(url))
        await closed.start()
        pids.append(payload(await closed.execute(ANSWER + "import os; __answer(os.getpid())", {})))
        await closed.shutdown()
        assert gateway_kernel_ids(url, TOKEN) == [kept.kernel_id]
        kept._rest.close()  # the gateway goes away under this one
    deadline = time.monotonic() + 30
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not [pid for pid in pids if pid_alive(pid)]
    await kept.shutdown(now=True)  # the gateway is gone: must not raise or hang


# --------------------------------------------------------------------------------------
# the pool on gateway kernels (the same semantics as tests/test_pool.py, remote)



async def gateway_pool(url: str, code: str, **fields: Any) -> tuple[Any, Any]:
    from kernelexec.config import PoolConfig
    from kernelexec.pool import MemoryHooks, make_pool

    hooks = MemoryHooks()
    env = {"gateway_url": url, "gateway_token": TOKEN}
    config = PoolConfig.from_dict(fields.pop("node_id", "gw"), {"code": code, "env": env, **fields})
    pool = make_pool(config, hooks)
    await pool.start()
    return pool, hooks


def outs(result: dict[str, Any], port: int = 0) -> list[Any]:
    assert result["error"] is None, result["error"]
    return [m.get("payload") for m in result["outputs"][port]]


@pytest.mark.parametrize("flavour", matrix())
async def test_pool_hot_state_events_and_context(gateways: Gateways, flavour: str) -> None:
    """Hello, setup state across messages, node.send, node.status, context; the runtime
    ops go as kernelexec_request (the fast path) on every gateway of the matrix."""
    gateway_url = gateways.url(flavour)
    code = (
        "global count\ncount += 1\n"
        "context.set('n', (context.get('n') or 0) + 1)\n"
        "node.send({'payload': 'early'})\n"
        "node.status({'text': 'busy'})\n"
        "msg['payload'] = [count, context.get('n'), os.getpid()]\nreturn msg"
    )
    pool, hooks = await gateway_pool(gateway_url, code, setup="import os\ncount = 0")
    try:
        first, second = await pool.submit("a", {}), await pool.submit("b", {})
        assert outs(first)[0][:2] == [1, 1] and outs(second)[0][:2] == [2, 2]
        assert outs(first)[0][2] == outs(second)[0][2]
        types = [e["type"] for _, e in hooks.events]
        assert types.count("send") == 2 and "status" in types
        assert all(w.kernel._speaks_requests for w in pool.workers)
    finally:
        await pool.close()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_pool_cold_messages_never_see_each_other(gateway_url: str) -> None:
    code = "import os\nseen.append(msg['payload'])\nmsg['payload'] = list(seen)\nreturn msg"
    pool, _ = await gateway_pool(gateway_url, code, setup="seen = []", mode="cold")
    try:
        results = [await pool.submit(f"c{i}", {"payload": i}) for i in range(3)]
        assert [outs(r)[0] for r in results] == [[0], [1], [2]]
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("flavour", "size"),
    [(f, 2 * 1024 * 1024) for f in matrix()] + [(DEFAULT_FLAVOUR, 12 * 1024 * 1024)],
)
async def test_pool_blobs_cross_as_buffers(gateways: Gateways, flavour: str, size: int) -> None:
    """Blob refs name files of one machine: in and out they travel as buffers (and in
    chunks above the gateway's 10 MiB message cap); the node sees ordinary blob refs."""
    from kernelexec.kernel import blobs

    gateway_url = gateways.url(flavour)
    code = (
        "data = msg['payload']\n"
        "node.send({'payload': data[:1000] * 100})\n"
        "msg['payload'] = data[::-1]\nreturn msg"
    )
    pool, hooks = await gateway_pool(gateway_url, code)
    entry = blobs.write_blob(os.urandom(size), "big1")
    data = blobs.read_blob(entry, "big1")
    try:
        result = await pool.submit("big1", {"payload": blobs.index_ref(0)}, [entry])
        assert outs(result)[0] == blobs.index_ref(0)
        [out] = result[blobs.TABLE]
        assert out["name"] != entry["name"]
        assert blobs.read_blob(out, "big1") == data[::-1]
        blobs.remove_table([out], "big1")
        sent = next(e for _, e in hooks.events if e["type"] == "send")
        assert sent["outputs"][0][0]["payload"] == blobs.index_ref(0)
        assert blobs.read_blob(sent[blobs.TABLE][0], "big1") == data[:1000] * 100
        blobs.remove_table(sent[blobs.TABLE], "big1")
    finally:
        blobs.remove_table([entry], "big1")
        await pool.close()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


@pytest.mark.parametrize("flavour", matrix())
async def test_pool_timeout_interrupts_and_keeps_the_kernel(
    gateways: Gateways, flavour: str
) -> None:
    """A timeout interrupts the message and the next one works; an error names its line."""
    gateway_url = gateways.url(flavour)
    code = (
        "if msg['payload'] == 'spin':\n    while True:\n        pass\n"
        "if msg['payload'] == 'boom':\n    raise ValueError('bad payload')\nreturn msg"
    )
    pool, _ = await gateway_pool(gateway_url, code, setup="import os", timeout=1.0)
    try:
        result = await pool.submit("t1", {"payload": "spin"})
        assert result["error"]["code"] == "TIMEOUT"
        assert outs(await pool.submit("t2", {"payload": "ok"})) == ["ok"]
        error = (await pool.submit("t3", {"payload": "boom"}))["error"]
        assert error["type"] == "ValueError" and "bad payload" in error["message"]
        assert error["line"] == 5, error
        assert pool.stats().restarts == 0
    finally:
        await pool.close()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_pool_timeout_restarts_a_kernel_that_ignores_interrupts(gateway_url: str) -> None:
    code = (
        "import signal, time\n"
        "if msg['payload'] == 'stuck':\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGINT})\n"
        "    time.sleep(60)\n"
        "return msg"
    )
    pool, _ = await gateway_pool(gateway_url, code, timeout=1.0)
    try:
        result = await pool.submit("s1", {"payload": "stuck"})
        assert result["error"]["code"] == "TIMEOUT"
        assert outs(await pool.submit("s2", {"payload": 1})) == [1]
        assert pool.stats().restarts == 1
    finally:
        await pool.close()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_pool_dead_kernel_fails_its_message_and_is_replaced(gateway_url: str) -> None:
    code = "import os\nif msg['payload'] == 'die':\n    os._exit(3)\nreturn msg"
    pool, _ = await gateway_pool(gateway_url, code, setup="x = 1")
    try:
        result = await pool.submit("d1", {"payload": "die"})
        assert result["error"]["code"] == "KERNEL_DIED"
        assert outs(await pool.submit("d2", {"payload": "fine"})) == ["fine"]
    finally:
        await pool.close()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


@pytest.mark.parametrize("flavour", matrix())
async def test_pool_setup_failure_is_one_clear_error(gateways: Gateways, flavour: str) -> None:
    from kernelexec.config import PoolConfig
    from kernelexec.errors import SetupError
    from kernelexec.pool import MemoryHooks, make_pool

    gateway_url = gateways.url(flavour)
    env = {"gateway_url": gateway_url, "gateway_token": TOKEN}
    setup = "x = 1\nraise ValueError('no db')"
    config = PoolConfig.from_dict("gw-bad", {"code": "return msg", "setup": setup, "env": env})
    pool = make_pool(config, MemoryHooks())
    try:
        with pytest.raises(SetupError) as caught:
            await pool.start()
        assert "no db" in caught.value.message
        assert "line 2" in (caught.value.traceback or "")
        result = await asyncio.wait_for(pool.submit("m", {}), 5)
        assert result["error"]["code"] == "SETUP_FAILED"
    finally:
        await pool.close()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_pool_setup_that_runs_past_setup_timeout_fails_the_pool(gateway_url: str) -> None:
    from kernelexec.config import PoolConfig
    from kernelexec.pool import MemoryHooks, make_pool

    env = {"gateway_url": f"{gateway_url}?setup_timeout=1", "gateway_token": TOKEN}
    setup = "import time\ntime.sleep(60)"
    config = PoolConfig.from_dict("gw-slow", {"code": "return msg", "setup": setup, "env": env})
    pool = make_pool(config, MemoryHooks())
    try:
        with pytest.raises(GatewayError, match=r"'setup' request within 1 s.*setup_timeout"):
            await pool.start()  # the setup_timeout path (its message), not the 60 s sleep
    finally:
        await pool.close()
    deadline = time.monotonic() + 30
    while gateway_kernel_ids(gateway_url, TOKEN) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # a kernel busy in setup may need the gateway's kill
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_pool_close_runs_stop_code_and_deletes_the_kernels(
    gateway_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "stopped"
    pool, _ = await gateway_pool(
        gateway_url, "return msg", stop=f"open({str(marker)!r}, 'w').write('bye')", workers=2
    )
    assert len(gateway_kernel_ids(gateway_url, TOKEN)) == 2
    await pool.close()
    assert marker.read_text() == "bye"
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


async def test_a_blob_parcel_for_an_unknown_request_is_dropped() -> None:
    """Output blobs (a comm_msg with buffers) for a msg_id no execute waits for are not kept
    (they were, forever: a kernel could fill the bridge's memory)."""
    from kernelexec.handles.gateway.blob_transfer import BLOBS_COMM_ID
    from kernelexec.handles.gateway.wire import Message

    handle = GatewayKernel(GatewaySettings.from_url(f"http://127.0.0.1:{free_port()}", TOKEN))
    for i in range(100):
        content = {"comm_id": BLOBS_COMM_ID, "data": {"msg_id": f"nobody-asked-{i}"}}
        handle._on_iopub(Message("iopub", {"msg_type": "comm_msg"}, {}, content, [b"x" * 1000]))
    assert handle._blob_parcels == {}
