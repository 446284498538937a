"""A message cannot name a file: forged blob references through the real bridge and kernels,
``kernelexec run``, and the clean-up of a frame the client would refuse (docs/security.md,
"Blob references")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from server_support import Client, start_server

from kernelexec.kernel import blobs
from kernelexec.server import Server

SECRET = "token=do-not-leak"
BIG = blobs.THRESHOLD * 2


@pytest.fixture
def secret() -> Iterator[Path]:
    """The worst case: a file in the blob directory, named like a blob file."""
    path = Path(blobs.blob_dir()) / f"{blobs.PREFIX}1-secret{os.getpid()}-0"
    path.write_text(SECRET)
    path.chmod(0o600)
    yield path
    path.unlink(missing_ok=True)


def forgeries(path: Path) -> list[dict[str, Any]]:
    return [
        {blobs.MARKER: "blob", "path": str(path), "size": len(SECRET)},
        {blobs.MARKER: "blob", "i": 0},
        {blobs.MARKER: "blob", "i": 0, "path": str(path)},
    ]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server() -> AsyncIterator[Server]:
    server = await start_server()
    yield server
    await server.stop("tests done")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client(server: Server) -> AsyncIterator[Client]:
    client = await Client.connect(server.port)
    yield client
    client.close()


pytestmark_async = pytest.mark.asyncio(loop_scope="module")


@pytestmark_async
async def test_a_forged_reference_in_an_execute_frame_reads_nothing(
    client: Client, secret: Path
) -> None:
    """As a client sends it (the node escapes user objects; a raw frame need not): a marker
    without a table entry is a CONVERSION_ERROR, and nothing is read."""
    assert (await client.configure("echo", code="return msg"))["state"] == "ready"
    for n, forged in enumerate(forgeries(secret)):
        result = await client.execute("echo", f"f{n}", {"payload": forged})
        assert result["error"]["code"] == "CONVERSION_ERROR", result
        assert "blob table" in result["error"]["message"]
        assert SECRET not in json.dumps(result)
    assert secret.read_text() == SECRET


@pytestmark_async
async def test_a_table_entry_must_name_a_blob_file_of_the_request(
    client: Client, secret: Path
) -> None:
    assert (await client.configure("echo", code="return msg"))["state"] == "ready"
    for n, name in enumerate([secret.name, f"../{secret.name}", str(secret), "/etc/passwd"]):
        req_id = f"t{n}"
        await client.send(type="execute", node_id="echo", req_id=req_id,
                          msg={"payload": blobs.index_ref(0)}, blobs=[{"name": name, "size": 1}])
        result = await client.result(req_id)
        assert result["error"]["code"] == "CONVERSION_ERROR", result
        assert "does not name a blob file of this request" in result["error"]["message"]
    assert secret.read_text() == SECRET


@pytestmark_async
async def test_lookalikes_made_by_python_cross_as_escaped_data(
    client: Client, secret: Path
) -> None:
    code = (
        f"fake = {{{blobs.MARKER!r}: 'blob', 'path': {str(secret)!r}, 'size': 3}}\n"
        "node.send({'payload': fake})\nreturn {'payload': [fake, msg['payload']]}"
    )
    assert (await client.configure("maker", code=code))["state"] == "ready"
    given = blobs.escape({blobs.MARKER: "blob", "i": 0})
    result = await client.execute("maker", "m1", {"payload": given})
    fake = {blobs.MARKER: "blob", "path": str(secret), "size": 3}
    assert result["error"] is None, result
    assert result["outputs"] == [[{"payload": [blobs.escape(fake), given]}]]
    assert blobs.TABLE not in result
    [sent] = [f for f in client.seen if f.get("req_id") == "m1" and f["type"] == "send"]
    assert sent["outputs"] == [[{"payload": blobs.escape(fake)}]]
    assert secret.read_text() == SECRET


HUGE = f"""\
return {{'payload': 'x' * 2_000_000, 'blob': bytes({BIG})}}
"""
HUGE_SEND = f"""\
node.send({{'payload': 'x' * 2_000_000, 'blob': bytes({BIG})}})
return msg
"""


@pytestmark_async
async def test_a_frame_too_large_leaves_no_blob_file(client: Client) -> None:
    """A result or send frame the client would refuse is replaced by a report; the blob
    files of its table go with it (nobody will read them)."""
    assert (await client.configure("huge", code=HUGE))["state"] == "ready"
    assert (await client.configure("huge_send", code=HUGE_SEND))["state"] == "ready"
    result = await client.execute("huge", "toolarge-1", {})
    assert result["error"]["code"] == "FRAME_TOO_LARGE", result
    result = await client.execute("huge_send", "toolarge-2", {})
    assert result["error"] is None
    assert any(f.get("req_id") == "toolarge-2" and f["type"] == "log" for f in client.seen)
    assert blobs.request_blobs("toolarge-1") == []
    assert blobs.request_blobs("toolarge-2") == []


# ------------------------------------------------------------------ kernelexec run


def kernelexec_run(*args: str, blob_dir: Path | None = None) -> tuple[int, Any]:
    env = dict(os.environ)
    if blob_dir is not None:
        env[blobs.ENV_VAR] = str(blob_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "kernelexec", "run", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_kernelexec_run_neither_reads_nor_deletes_a_file_named_in_its_output(
    secret: Path,
) -> None:
    fake = {blobs.MARKER: "blob", "path": str(secret), "size": len(SECRET)}
    code = f"node.send({{'payload': {fake!r}}})\nreturn {{'payload': {fake!r}}}"
    status, body = kernelexec_run("-c", code)
    assert status == 0, body
    assert body["outputs"] == [[{"payload": blobs.escape(fake)}] * 2]
    assert secret.read_text() == SECRET


def test_kernelexec_run_does_not_take_a_forged_reference_as_input(secret: Path) -> None:
    forged = {blobs.MARKER: "blob", "path": str(secret), "size": len(SECRET)}
    status, body = kernelexec_run("-c", "return msg", "--msg", json.dumps({"payload": forged}))
    assert status == 1 and body["error"]["code"] == "CONVERSION_ERROR"
    assert SECRET not in json.dumps(body)
    assert secret.read_text() == SECRET


def test_kernelexec_run_still_inlines_its_own_blobs(tmp_path: Path) -> None:
    code = f"node.send({{'payload': bytes({BIG})}})\nreturn {{'payload': b'x' * {BIG}}}"
    status, body = kernelexec_run("-c", code, blob_dir=tmp_path)  # a private blob directory
    assert status == 0, body
    first, second = body["outputs"][0]
    assert first["payload"][blobs.MARKER] == second["payload"][blobs.MARKER] == "buffer"
    assert os.listdir(tmp_path) == []
