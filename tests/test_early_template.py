"""`python -X kernelexec_cmdline_room=... -m kernelexec serve` (as Node-RED starts it) forks
the kernel template first thing (kernelexec/handles/early.py), on a real bridge and kernel."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psutil
import pytest
from server_support import TOKEN, BridgeProcess, Client, gone

from kernelexec.handles import early, template
from kernelexec.kernel import clone

pytestmark = pytest.mark.skipif(not template.can_fork_kernels(), reason="no kernel template here")

#: the interpreter option as lib/bridge_process.js passes it
ROOM = ("-X", f"{early.ROOM_XOPTION}={' ' * early.ROOM}")


def test_early_spells_what_it_cannot_import_as_its_homes_do() -> None:
    """early.py imports nothing of kernelexec (it runs before any import); the two things it
    must know anyway are checked against their homes here."""
    assert set(early._MACHINES) == set(clone._SYS_CLONE)
    assert early._SWITCH == template.SWITCH


def _template_of(bridge: BridgeProcess) -> psutil.Process:
    found = [p for p in bridge.descendants() if p.name() == template.TEMPLATE_COMM.decode()]
    assert len(found) == 1, found
    return found[0]


def _fds(pid: int) -> dict[int, str]:
    directory = Path(f"/proc/{pid}/fd")
    return {int(fd.name): os.readlink(fd) for fd in directory.iterdir()}


def _cmdline_bytes(pid: int) -> int:
    return len(Path(f"/proc/{pid}/cmdline").read_bytes())


@pytest.mark.asyncio(loop_scope="module")
async def test_the_template_is_forked_holding_no_fd_and_no_secret_of_the_bridge() -> None:
    """Forked, the template's command line area is the bridge's own (a spawned one has its
    own); it holds stdin (/dev/null), stdout, stderr and its socket only (not the bridge's
    other sockets); neither it nor a kernel forked from it shows the bridge's token in
    /proc/PID/environ; the kernel's command line is whole."""
    node_end, bridge_end = socket.socketpair()  # the node's socket, as Node-RED gives it
    node_fd = str(bridge_end.fileno())
    bridge = BridgeProcess(
        "--watch-stdin", "--node-fd", node_fd, pass_fds=(bridge_end.fileno(),), python_options=ROOM
    )
    bridge_socket = _fds(bridge.proc.pid)[int(node_fd)]
    bridge_end.close()
    try:
        forked = _template_of(bridge)
        assert forked.ppid() == bridge.proc.pid
        assert _cmdline_bytes(forked.pid) == _cmdline_bytes(bridge.proc.pid)
        fds = _fds(forked.pid)
        assert fds[0] == os.devnull, fds
        assert bridge_socket.startswith("socket:") and bridge_socket not in fds.values(), fds
        bridges = {target for fd, target in _fds(bridge.proc.pid).items() if fd > 2}
        assert not bridges & {target for fd, target in fds.items() if fd > 2}, (fds, bridges)
        client = await Client.connect(bridge.port)
        state = await client.configure("early1", code="return msg")
        assert state["state"] == "ready", state
        result = await client.execute("early1", "r1", {"payload": 1})
        assert result["error"] is None and result["outputs"] == [[{"payload": 1}]], result
        kernels = [p for p in bridge.descendants() if p.pid != forked.pid]
        assert kernels, "no kernel"
        for process in (forked, *kernels):
            environ = Path(f"/proc/{process.pid}/environ").read_bytes()
            assert TOKEN.encode() not in environ, process
        kernel_line = [word for word in kernels[0].cmdline() if word]  # NUL-padded
        assert kernel_line[1:4] == ["-m", "kernelexec.kernel", "-f"], kernel_line
        assert kernel_line[4].endswith(".json") and os.path.exists(kernel_line[4]), kernel_line
        client.close()
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.wait()[0] == 0
        assert not gone([forked, *kernels])
    finally:
        node_end.close()
        bridge.kill()


@pytest.mark.asyncio(loop_scope="module")
async def test_without_the_room_the_template_is_spawned() -> None:
    """A bridge started by hand (no room for the kernels' command lines) spawns its template
    as before: its command line area is its own."""
    bridge = BridgeProcess("--watch-stdin")
    try:
        spawned = _template_of(bridge)
        assert spawned.ppid() == bridge.proc.pid
        assert _cmdline_bytes(spawned.pid) != _cmdline_bytes(bridge.proc.pid)
        bridge.proc.send_signal(signal.SIGTERM)
        assert bridge.wait()[0] == 0
        assert not gone([spawned])
    finally:
        bridge.kill()
