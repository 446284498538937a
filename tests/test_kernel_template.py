"""Kernels forked from the kernel template (handles/forking.py, handles/template.py): they are
kernels like launched ones (their own environment, directory, session and randomness, this
process's children), none outlives its bridge or a cancelled start, and a template that
fails or refuses makes kernels be launched instead. Pool semantics on forked kernels:
tests/test_pool.py runs whole on both paths, and every bridge test runs on forked kernels."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from kernelexec.handles import forking
from kernelexec.handles.base import LaunchSpec
from kernelexec.handles.local import LocalKernel, default_launch_spec, kernel_environment

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBE = (
    "import json, os, random\n"
    "facts = {'cwd': os.getcwd(), 'ppid': os.getppid(), 'sid': os.getsid(0),"
    " 'random': random.random(), 'marker': os.environ.get('KX_TEMPLATE_TEST'),"
    " 'token': os.environ.get('KERNELEXEC_TOKEN')}\n"
    "with open({path!r}, 'w') as fh:\n"
    "    json.dump(facts, fh)\n"
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def template() -> AsyncIterator[forking.KernelTemplate]:
    made = forking.start_template(kernel_environment())
    assert made is not None
    yield made
    forking.stop_template()


async def probe(kernel: LocalKernel, where: Path) -> dict[str, Any]:
    """What the kernel says of itself (written to a file in ``where``)."""
    path = where / f"facts-{kernel.pid}.json"
    reply = await kernel.execute(PROBE.replace("{path!r}", repr(str(path))), {})
    assert reply["status"] == "ok", reply
    return dict(json.loads(path.read_text()))


async def test_a_forked_kernel_has_its_own_environment_directory_session_and_randomness(
    template: forking.KernelTemplate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNELEXEC_TOKEN", "secret-of-the-bridge")
    launch = default_launch_spec(cwd=str(tmp_path))
    launch = LaunchSpec(**{**launch.__dict__, "env": {"KX_TEMPLATE_TEST": "given"}})
    kernels = [LocalKernel(launch), LocalKernel(launch)]
    await asyncio.gather(*(k.start() for k in kernels))
    try:
        seen = [await probe(k, tmp_path) for k in kernels]
        for kernel, facts in zip(kernels, seen, strict=True):
            assert kernel.pid is not None
            assert kernel._km is not None
            assert isinstance(kernel._km.provisioner, forking.ForkProvisioner)
            argv = [a for a in psutil.Process(kernel.pid).cmdline() if a]
            assert argv[1:4] == ["-m", "kernelexec.kernel", "-f"]  # ps shows what it is
            assert argv[4] == kernel.connection_file
            assert facts["cwd"] == str(tmp_path)
            assert facts["ppid"] == os.getpid()
            assert facts["sid"] == kernel.pid  # its own session, as jupyter_client launches it
            assert facts["marker"] == "given"
            assert facts["token"] is None
        assert seen[0]["random"] != seen[1]["random"]
    finally:
        await asyncio.gather(*(k.shutdown() for k in kernels))


async def test_a_forked_kernel_is_interrupted_and_its_death_is_seen(
    template: forking.KernelTemplate, tmp_path: Path
) -> None:
    kernel = LocalKernel(default_launch_spec(cwd=str(tmp_path)))
    await kernel.start()
    try:
        started = tmp_path / "started"
        running = asyncio.ensure_future(
            kernel.execute(f"import time; open({str(started)!r}, 'w').close(); time.sleep(100)", {})
        )
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the code never started"
            await asyncio.sleep(0.01)
        await kernel.interrupt()
        reply = await asyncio.wait_for(running, 30)
        assert reply["ename"] == "KeyboardInterrupt"
        with pytest.raises(Exception, match=r"died|exit"):
            await kernel.execute("import os; os._exit(7)", {})
        assert kernel._exit_code() == 7
    finally:
        await kernel.shutdown()


async def test_a_cancelled_start_leaves_no_kernel(
    template: forking.KernelTemplate, tmp_path: Path
) -> None:
    """Starts cancelled at once (a redeploy while a pool starts): each kernel the template
    forks meanwhile is killed and reaped, not left running (nor as a zombie)."""
    from jupyter_client.connect import write_connection_file

    def children() -> set[int]:
        return {c.pid for c in psutil.Process().children() if c.pid != template.process.pid}

    before = children()
    argv = list(default_launch_spec().argv[:3])
    env = kernel_environment()
    for i in range(5):
        connection, _info = write_connection_file(
            str(tmp_path / f"c{i}.json"), transport="ipc", ip=str(tmp_path / f"ipc{i}")
        )
        task = asyncio.ensure_future(template.fork([*argv, "-f", connection], env, None, ()))
        await asyncio.sleep(0)  # the exchange has begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    connection, _info = write_connection_file(
        str(tmp_path / "last.json"), transport="ipc", ip=str(tmp_path / "ipclast")
    )
    pid = await template.fork([*argv, "-f", connection], env, None, ())  # still in step
    assert children() - before == {pid}
    process = forking.ForkedProcess(pid)
    process.kill()
    assert process.wait(30) == -signal.SIGKILL
    assert children() == before


async def test_a_cancelled_start_that_closes_its_pipes_leaves_the_template_in_use(
    template: forking.KernelTemplate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starts queued for the template and cancelled, whose callers then close the pipes they
    were to hand over (a worker's shutdown does) before their turn comes: the template forks
    with its own copies, the kernels are killed, and it still forks the next kernel."""
    from jupyter_client.connect import write_connection_file

    def children() -> set[int]:
        return {c.pid for c in psutil.Process().children() if c.pid != template.process.pid}

    before = children()
    argv = list(default_launch_spec().argv[:3])
    env = kernel_environment()
    exchanges_made = asyncio.Event()
    made: list[tuple[int, ...]] = []
    make_exchange = template._exchange

    def recording_exchange(request: dict[str, Any], fds: tuple[int, ...]) -> Any:
        made.append(fds)
        if len(made) == 4:
            exchanges_made.set()
        return make_exchange(request, fds)

    monkeypatch.setattr(template, "_exchange", recording_exchange)
    tasks, pipes = [], []
    for i in range(4):
        connection, _info = write_connection_file(
            str(tmp_path / f"c{i}.json"), transport="ipc", ip=str(tmp_path / f"ipc{i}")
        )
        read_end, write_end = os.pipe()
        pipes += [read_end, write_end]
        fork = template.fork([*argv, "-f", connection], env, None, (write_end,))
        tasks.append(asyncio.ensure_future(fork))
    # each fork has taken its copies of the fds and made its exchange, which waits for its
    # turn (cancelled before that, the tasks would test nothing)
    await asyncio.wait_for(exchanges_made.wait(), 30)
    for task in tasks:
        task.cancel()
    for fd in pipes:  # before any exchange has sent its fds: they wait for the lock in turn
        os.close(fd)
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    connection, _info = write_connection_file(
        str(tmp_path / "last.json"), transport="ipc", ip=str(tmp_path / "ipclast")
    )
    pid = await template.fork([*argv, "-f", connection], env, None, ())
    process = forking.ForkedProcess(pid)
    try:
        assert template.failed is None
        assert children() - before == {pid}
    finally:  # not left running when an assertion fails
        process.kill()
        assert process.wait(30) == -signal.SIGKILL
    assert children() == before  # the unwanted ones were killed as their exchanges ended


async def test_the_template_forks_only_kernels_of_its_interpreter(
    template: forking.KernelTemplate,
) -> None:
    with pytest.raises(RuntimeError, match="not a kernel command of this interpreter"):
        await template.fork(["/bin/sh", "-c", "true"], {}, None, ())
    assert forking.template_for(LaunchSpec(argv=("/bin/sh",), forkable=True)) is None
    assert forking.template_for(LaunchSpec(argv=default_launch_spec().argv)) is None
    assert forking.template_for(default_launch_spec()) is template


async def test_kernels_are_launched_when_the_template_is_gone(
    template: forking.KernelTemplate, tmp_path: Path
) -> None:
    template.process.kill()
    template.process.wait()
    kernel = LocalKernel(default_launch_spec(cwd=str(tmp_path)))
    await kernel.start()
    try:
        assert kernel.pid is not None
        assert kernel._km is not None
        assert not isinstance(kernel._km.provisioner.process, forking.ForkedProcess)
        assert (await probe(kernel, tmp_path))["cwd"] == str(tmp_path)
    finally:
        await kernel.shutdown()
    assert template.failed is not None


async def test_no_template_or_kernel_outlives_a_killed_bridge(tmp_path: Path) -> None:
    """A bridge killed with SIGKILL: its template (PR_SET_PDEATHSIG) and its forked kernels
    (ipykernel's parent poller, as for launched kernels) exit on their own."""
    script = textwrap.dedent(
        """
        import asyncio, os, signal, sys
        from kernelexec.handles import forking
        from kernelexec.handles.local import LocalKernel, default_launch_spec, kernel_environment

        async def main():
            template = forking.start_template(kernel_environment())
            kernel = LocalKernel(default_launch_spec(cwd=sys.argv[1]))
            await kernel.start()
            print(template.process.pid, kernel.pid, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    bridge = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bridge.returncode == -signal.SIGKILL, bridge.stderr[-2000:]
    pids = [int(p) for p in bridge.stdout.split()]
    assert len(pids) == 2, bridge.stdout
    deadline = time.monotonic() + 30
    for pid in pids:
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
            assert time.monotonic() < deadline, f"process {pid} outlived its bridge"
            await asyncio.sleep(0.05)


async def test_a_template_that_does_not_answer_a_fork_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A template that said it is ready but never answers a fork request: the fork fails
    after _FORK_TIMEOUT (not the 60 s a start may take) and the template is marked failed,
    so the kernels are launched from then on. (A stand-in process holds the other end: a
    real template cannot be made to hang on demand.)"""
    import socket

    monkeypatch.setattr(forking, "_FORK_TIMEOUT", 0.3)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stand_in = subprocess.Popen(  # alive until its stdin closes, and answering nothing
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    template = forking.KernelTemplate(stand_in, ours)
    try:
        theirs.send(json.dumps({"ready": True}).encode())
        with pytest.raises(asyncio.TimeoutError):
            await template.fork([sys.executable, "-m", "kernelexec.kernel"], {}, None, ())
        assert template.failed is not None and "template failed" in template.failed
    finally:
        template.close()
        theirs.close()
        assert stand_in.stdin is not None
        stand_in.stdin.close()
