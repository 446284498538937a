"""GatewayKernel against a real Jupyter Kernel Gateway on 127.0.0.1 (marked ``gateway``).

The gateway runs once per session (token-protected, kernel listing on); each test drives
its own kernel and must leave none behind on the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_fixtures import free_port, gateway_kernel_ids, running_gateway

from kernelexec.config import EnvConfig
from kernelexec.errors import GatewayError, KernelDiedError
from kernelexec.kernels.gateway import (
    EVENTS_COMM_ID,
    GatewayKernel,
    GatewaySettings,
    make_gateway_kernel,
    runtime_bootstrap_code,
)

pytestmark = [pytest.mark.gateway, pytest.mark.timeout(90)]

TOKEN = "kernelexec-test-token"
HAS_RUNTIME = (Path(__file__).parent.parent / "kernelexec" / "runtime.py").is_file()


@pytest.fixture(scope="session")
def gateway_url() -> Iterator[str]:
    with running_gateway(TOKEN) as url:
        yield url


def settings(url: str, **overrides: Any) -> GatewaySettings:
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
        {"op": "run", "batch": [{"req_id": "r1", "msg": {"payload": "é😀"}}]},
    )
    assert payload(reply) == {
        "x": 42,
        "extra": {"op": "run", "batch": [{"req_id": "r1", "msg": {"payload": "é😀"}}]},
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
    for _ in range(100):
        if len(events) == 2:
            break
        await asyncio.sleep(0.02)
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


async def test_staging_without_bootstrap_is_a_clear_error(kernel: GatewayKernel) -> None:
    with pytest.raises(GatewayError, match="runtime_bootstrap_code"):
        await kernel.execute(BUFFER_DIGESTS, {}, [os.urandom(11 * 1024 * 1024)])


async def test_interrupt_stops_a_busy_loop(kernel: GatewayKernel) -> None:
    task = asyncio.ensure_future(kernel.execute("while True: pass", {}))
    await asyncio.sleep(0.5)
    assert not task.done()
    started = time.monotonic()
    await kernel.interrupt()
    reply = await asyncio.wait_for(task, 10)
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 5
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
    started = time.monotonic()
    with pytest.raises(KernelDiedError):
        await asyncio.wait_for(kernel.execute("import os; os._exit(1)", {}), 20)
    assert time.monotonic() - started < 10
    assert not kernel.is_alive()
    with pytest.raises(KernelDiedError):
        await kernel.execute("pass", {})
    await kernel.restart()
    assert kernel.is_alive()
    assert (await kernel.execute("x = 1", {}))["status"] == "ok"


async def test_kernel_deleted_behind_our_back(gateway_url: str, kernel: GatewayKernel) -> None:
    """A culled kernel: the waiting execute fails, restart() starts a new kernel."""
    from tornado.httpclient import AsyncHTTPClient

    task = asyncio.ensure_future(kernel.execute("import time; time.sleep(30)", {}))
    await asyncio.sleep(0.3)
    client = AsyncHTTPClient(force_instance=True)
    try:
        await client.fetch(
            f"{gateway_url}/api/kernels/{kernel.kernel_id}", method="DELETE",
            headers={"Authorization": f"token {TOKEN}"},
        )
    finally:
        client.close()
    with pytest.raises(KernelDiedError):
        await asyncio.wait_for(task, 15)
    old = kernel.kernel_id
    await kernel.restart()
    assert kernel.kernel_id != old
    assert (await kernel.execute("pass", {}))["status"] == "ok"


async def test_bad_token_fails_fast(gateway_url: str) -> None:
    handle = GatewayKernel(GatewaySettings.from_url(gateway_url, "wrong"))
    started = time.monotonic()
    with pytest.raises(GatewayError, match="gateway_token"):
        await handle.start()
    assert time.monotonic() - started < 2
    await handle.shutdown()


async def test_unreachable_gateway_fails_fast() -> None:
    handle = GatewayKernel(GatewaySettings.from_url(f"http://127.0.0.1:{free_port()}", TOKEN))
    started = time.monotonic()
    with pytest.raises(GatewayError, match="failed after 4 attempt"):
        await handle.start()
    assert time.monotonic() - started < 5
    await handle.shutdown()


async def test_unknown_kernel_name_is_a_clear_error(gateway_url: str) -> None:
    handle = GatewayKernel(settings(gateway_url, kernel_name="no-such-kernel"))
    with pytest.raises(GatewayError, match="no-such-kernel"):
        await handle.start()
    await handle.shutdown()
    assert gateway_kernel_ids(gateway_url, TOKEN) == []


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
    assert handle.settings.token == "t"
    assert handle.settings.kernel_env["KERNEL_CPUS"] == "0.5"
    assert handle.settings.kernel_env["KERNEL_MEMORY"] == "512M"
    with pytest.raises(GatewayError, match="unknown"):
        GatewaySettings.from_url("http://h:1/?bogus=1")
    with pytest.raises(GatewayError, match="not valid"):
        GatewaySettings.from_url("h:1")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


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
    deadline = time.monotonic() + 10
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not [pid for pid in pids if _pid_alive(pid)]
    await kept.shutdown(now=True)  # the gateway is gone: must not raise or hang
