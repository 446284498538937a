"""Cold mode's spare child copies, while the node is idle, the memory it shares with the kernel.

After ``fork()`` the child and the kernel share every page copy-on-write: the first write to a
page by either of them copies it, in a page fault of ~3-8 µs on this kind of machine
(bench/cow_faults.py). A cold message wrote ~1,000 such pages in the child and ~300 in the
kernel, 5-6 ms on the message's path. A spare child (forked ahead of time, waiting for its
message) can take those copies before the message comes: ``madvise(MADV_POPULATE_WRITE)`` over
the pages the kernel had in memory makes them the child's own, and the kernel's pages its own
again. The copy runs in small chunks and stops as soon as the message arrives, so it never
delays a message by more than one chunk.

The kernel does the same for its own pages, in a background thread (:class:`BackgroundCopy`),
once the spare is forked: its writes on the next message then take no fault at all (~320
"reuse" faults of ~1.3-1.5 µs each otherwise). The thread stops when a message arrives.

It is skipped (the child just takes the faults) where it cannot help or could hurt: on kernels
without MADV_POPULATE_WRITE (Linux < 5.14), when the copy would exceed :data:`LIMIT_BYTES`, or
when the kernel's cgroup memory limit leaves too little room for a second copy.

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import select
import threading

__all__ = ["LIMIT_BYTES", "BackgroundCopy", "copy_shared_pages", "enabled"]

#: The most a spare child copies (a bigger kernel keeps the copy-on-write faults instead).
LIMIT_BYTES = 512 * 1024 * 1024
_MADV_POPULATE_WRITE = 23
_CHUNK_PAGES = 64  # 256 KiB, ~0.3 ms: the longest a message waits for the copy to notice it
_PAGE = mmap.PAGESIZE
_RESIDENT = re.compile(rb"[\x01-\xff]+")
_PRIVATE_WRITABLE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) rw-p ")


def enabled() -> bool:
    """Off with KERNELEXEC_PREWARM=0 (to measure what it saves)."""
    return os.environ.get("KERNELEXEC_PREWARM", "1") != "0"


class BackgroundCopy:
    """:func:`copy_shared_pages` in a daemon thread, stopped by :meth:`stop` (the kernel's
    side, after a prefork; ctypes releases the GIL during each madvise)."""

    def __init__(self) -> None:
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.stop()
        self._thread = threading.Thread(
            target=copy_shared_pages, args=(self._stop_r,), name="kernelexec-prewarm", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop a running copy (within one chunk) and wait for its thread. Costs nothing
        when no copy runs (it is called on every cold message)."""
        thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            return
        os.write(self._stop_w, b"x")
        thread.join()
        os.read(self._stop_r, 64)  # the byte written above: the next copy starts unstopped


def copy_shared_pages(wake_fd: int) -> int:
    """Make the pages this process has in memory its own; stop early when ``wake_fd`` is
    readable. Returns the bytes copied (0 when skipped). Never raises."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        runs = list(_resident_runs(libc))
        total = sum(length for _, length in runs)
        if total > min(LIMIT_BYTES, _memory_room()):
            return 0
        return _populate(libc, runs, wake_fd)
    except (OSError, AttributeError, ValueError):
        return 0


def _resident_runs(libc: ctypes.CDLL) -> list[tuple[int, int]]:
    """(address, length) of the runs of resident pages in private writable mappings."""
    runs = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            found = _PRIVATE_WRITABLE.match(line)
            if found is None or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            start, end = int(found.group(1), 16), int(found.group(2), 16)
            pages = (end - start) // _PAGE
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(end - start), vector) != 0:
                continue
            for run in _RESIDENT.finditer(bytes(vector)):
                runs.append((start + run.start() * _PAGE, (run.end() - run.start()) * _PAGE))
    return runs


def _populate(libc: ctypes.CDLL, runs: list[tuple[int, int]], wake_fd: int) -> int:
    copied = 0
    chunk = _CHUNK_PAGES * _PAGE
    for address, length in runs:
        for offset in range(0, length, chunk):
            if select.select([wake_fd], [], [], 0)[0]:
                return copied  # the message is here: it goes first
            size = min(chunk, length - offset)
            if libc.madvise(ctypes.c_void_p(address + offset), ctypes.c_size_t(size),
                            _MADV_POPULATE_WRITE) != 0:  # fmt: skip
                if ctypes.get_errno() == 22:  # EINVAL: this kernel has no POPULATE_WRITE
                    return copied
                continue  # EFAULT etc. on an odd mapping: the next one
            copied += size
    return copied


def _memory_room() -> int:
    """Bytes this process may still allocate: its cgroup's limit minus usage, else the
    machine's available memory; half of it is left to everything else."""
    room = _meminfo_available()
    with contextlib.suppress(OSError, ValueError):
        room = min(room, _cgroup_room())
    return room // 2


def _meminfo_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _cgroup_room() -> int:
    """Limit minus usage of this process's memory cgroup (v2 or v1); large when unlimited."""
    with open("/proc/self/cgroup") as cgroups:
        lines = cgroups.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            return _room(os.path.join(base, "memory.max"), os.path.join(base, "memory.current"))
        if "memory" in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            limit = os.path.join(base, "memory.limit_in_bytes")
            return _room(limit, os.path.join(base, "memory.usage_in_bytes"))
    message = "no memory cgroup"
    raise ValueError(message)


def _room(limit_file: str, usage_file: str) -> int:
    with open(limit_file) as limit_text:
        limit = limit_text.read().strip()
    if limit == "max":
        message = "unlimited"
        raise ValueError(message)
    with open(usage_file) as usage_text:
        return int(limit) - int(usage_text.read().strip())
