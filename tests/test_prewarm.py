"""A spare cold-mode child copies the pages it shares with its parent before its message."""

from __future__ import annotations

import mmap
import os
import resource
import time
from collections.abc import Callable

import pytest

from kernelexec.kernel import prewarm

SIZE = 16 * 1024 * 1024
PAGES = SIZE // mmap.PAGESIZE


def in_child(work: Callable[[int], str], *, message_waiting: bool = False) -> str:
    """Fork; the child runs ``work(wake_fd)`` and sends back its text. With
    ``message_waiting``, ``wake_fd`` is readable from the start."""
    wake_r, wake_w = os.pipe()
    if message_waiting:
        os.write(wake_w, b"x")
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(out_w, work(wake_r).encode())
        finally:
            os._exit(0)
    os.close(out_w)
    try:
        work_text = os.read(out_r, 1000).decode()
    finally:
        os.waitpid(pid, 0)
        for fd in (wake_r, wake_w, out_r):
            os.close(fd)
    return work_text


def faults_to_write(memory: bytearray) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for offset in range(0, len(memory), mmap.PAGESIZE):
        memory[offset] = 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture
def memory() -> bytearray:
    shared = bytearray(b"\x01" * SIZE)  # written, so in memory before the fork
    return shared


def test_after_the_copy_the_child_writes_without_faults(memory: bytearray) -> None:
    def copied_then_write(wake_fd: int) -> str:
        copied = prewarm.copy_shared_pages(wake_fd)
        return f"{copied} {faults_to_write(memory)}"

    copied, faults = map(int, in_child(copied_then_write).split())
    assert copied >= SIZE, "the shared memory was copied"
    assert faults < PAGES // 20, f"{faults} faults writing {PAGES} pages after the copy"


def test_without_the_copy_every_shared_page_faults(memory: bytearray) -> None:
    faults = int(in_child(lambda _fd: str(faults_to_write(memory))))
    assert faults >= PAGES * 0.9  # what the copy saves (the test above could not fail else)


def test_the_copy_stops_when_the_message_arrives(memory: bytearray) -> None:
    copied = in_child(lambda fd: str(prewarm.copy_shared_pages(fd)), message_waiting=True)
    assert int(copied) == 0


def test_the_kernel_takes_back_its_pages_in_the_background(memory: bytearray) -> None:
    """The kernel's side: after a fork, a BackgroundCopy leaves no fault to its next writes."""
    sleeper = os.fork()
    if sleeper == 0:  # pragma: no cover - a child sharing the pages, as a spare does
        time.sleep(60)
        os._exit(0)
    copy = prewarm.BackgroundCopy()
    try:
        copy.start()
        assert copy._thread is not None
        copy._thread.join(30)
        faults = faults_to_write(memory)
        assert faults < PAGES // 20, f"{faults} faults writing {PAGES} pages after the copy"
    finally:
        copy.stop()
        os.kill(sleeper, 9)
        os.waitpid(sleeper, 0)
