"""What a copy-on-write fault costs here, and what kernelexec/kernel/prewarm.py saves.

Writes one byte per page of a 32 MiB region the process wrote before forking, in a child and
in the parent after the fork, without and with the prewarm copy (the child runs
``copy_shared_pages`` first, as a spare cold-mode child does):

    .venv/bin/python bench/cow_faults.py [--mib 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernelexec.kernel.prewarm import copy_shared_pages


def write_pages(memory: mmap.mmap) -> float:
    """µs per page to write one byte into every page."""
    began = time.perf_counter()
    for offset in range(0, len(memory), mmap.PAGESIZE):
        memory[offset] = 2
    return (time.perf_counter() - began) / (len(memory) // mmap.PAGESIZE) * 1e6


def one_round(memory: mmap.mmap, prewarm: bool) -> tuple[float, float]:
    """(child µs/page, parent µs/page) after a fork, the child copying first or not."""
    result_r, result_w = os.pipe()
    ready_r, ready_w = os.pipe()
    never_r, never_w = os.pipe()  # the copy's "message arrived" pipe: never written
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        if prewarm:
            copy_shared_pages(never_r)
        os.write(ready_w, b"x")
        os.write(result_w, f"{write_pages(memory):.4f}".encode())
        time.sleep(0.5)  # still sharing while the parent measures
        os._exit(0)
    os.read(ready_r, 1)
    parent = write_pages(memory)
    child = float(os.read(result_r, 64))
    os.waitpid(pid, 0)
    for fd in (result_r, result_w, ready_r, ready_w, never_r, never_w):
        os.close(fd)
    return child, parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    memory = mmap.mmap(-1, args.mib << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    write_pages(memory)  # in memory before the fork
    print(f"no fork: {statistics.median(write_pages(memory) for _ in range(3)):.2f} µs/page")
    for prewarm in (False, True):
        rounds = [one_round(memory, prewarm) for _ in range(args.rounds)]
        child = statistics.median(c for c, _ in rounds)
        parent = statistics.median(p for _, p in rounds)
        label = "with the prewarm copy" if prewarm else "without copy         "
        print(f"{label}: child {child:.2f} µs/page, parent {parent:.2f} µs/page")


if __name__ == "__main__":
    main()
