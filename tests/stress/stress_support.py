"""Helpers of the stress suite: a real `kernelexec serve` process, leftover checks (processes
and /dev/shm files), blob handling as the Node-RED node does it, RSS from /proc."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from server_support import TOKEN, BridgeProcess, Client

from kernelexec.handles.template import TEMPLATE_COMM
from kernelexec.kernel import blobs

__all__ = [
    "KERNEL_PATTERN",
    "StressBridge",
    "blob_files",
    "leftovers",
    "rss_kib",
    "take_blobs",
    "wait_clean",
]

MARK = "KERNELEXEC_STRESS_RUN"
#: What `pgrep -af 'ipykernel|kernelexec.kernel|kernelexec.handles.template'` looks for.
KERNEL_PATTERN = re.compile(r"ipykernel|kernelexec\.kernel|kernelexec\.handles\.template")
TEMPLATE_NAME = TEMPLATE_COMM.decode()
BRIDGE_PATTERN = re.compile(r"kernelexec serve")


def _ours(process: psutil.Process) -> bool:
    try:
        return process.environ().get(MARK) == os.environ[MARK]
    except (psutil.Error, OSError):
        return False


def leftovers(pattern: re.Pattern[str] = KERNEL_PATTERN) -> list[str]:
    """Live processes of this test session (not this process) whose command line matches."""
    me = os.getpid()
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        info = process.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        line = " ".join(info["cmdline"] or ())
        if (pattern.search(line) or BRIDGE_PATTERN.search(line)) and _ours(process):
            found.append(f"{info['pid']} {line}")
    return found


def blob_files() -> set[str]:
    directory = Path(blobs.blob_dir())
    return {p.name for p in directory.glob("kernelexec-*")}


async def wait_clean(files_before: set[str], timeout: float = 30.0) -> tuple[list[str], list[str]]:
    """Wait until no process of ours and no new blob file is left; returns what is left."""
    deadline = time.monotonic() + timeout
    while True:
        procs, files = leftovers(), sorted(blob_files() - files_before)
        if (not procs and not files) or time.monotonic() > deadline:
            return procs, files
        await asyncio.sleep(0.2)


def take_blobs(frame: Any, *, missing_ok: bool = False) -> list[bytes]:
    """Read and remove the blob files of a frame's table, as the Node-RED node does."""
    if not isinstance(frame, dict):
        return []
    req_id = frame.get("req_id") if isinstance(frame.get("req_id"), str) else None
    found: list[bytes] = []
    for entry in frame.get(blobs.TABLE) or []:
        try:
            found.append(blobs.read_blob(entry, req_id))
        except FileNotFoundError:
            if not missing_ok:
                raise
        finally:
            blobs.remove_table([entry], req_id)
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class StressBridge(BridgeProcess):
    """`python -m kernelexec serve` with default limits (max_frame_bytes 256 MiB)."""

    killed = False

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(*args, env=env)
        self.clients: list[Client] = []

    async def connect(self) -> Client:
        client = await Client.connect(self.port, token=TOKEN)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def stop(self, timeout: float = 40.0) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    async def stop_and_wait_clean(
        self, files_before: set[str]
    ) -> tuple[int, str, list[str], list[str]]:
        """Close the clients, stop the bridge; (exit code, stderr, processes left, blob files
        left) once its processes and new blob files are gone or the wait ran out."""
        self.close_clients()
        code, _out, err = self.stop()
        procs, files = await wait_clean(files_before)
        return code, err, procs, files

    def kernel_pids(self) -> list[int]:
        """The bridge's kernels, launched or forked (not the kernel template they fork from,
        which shares their command line: handles/template.py names it TEMPLATE_COMM)."""
        return [
            p.pid
            for p in self.descendants()
            if KERNEL_PATTERN.search(" ".join(_cmd(p))) and _name(p) != TEMPLATE_NAME
        ]


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.Error:
        return ""


def _cmd(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
