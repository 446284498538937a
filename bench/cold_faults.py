"""Cold mode, back to back, engine only: latency and page faults per message, child and kernel.

A cold pool (1 worker) answers 20 messages, then 100 timed ones back to back; each message's
process reports its own minor faults (``getrusage``), the kernel's come from /proc/PID/stat:

    .venv/bin/python bench/cold_faults.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import make_kernelexec

CODE = "import resource\nmsg['f'] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\nreturn msg"


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


async def main(count: int = 100) -> None:
    pool = await make_kernelexec("cold")
    try:
        await pool.update_code(CODE)
        kernel = pool.workers[0].kernel.pid
        assert kernel is not None
        for i in range(20):
            await pool.submit(f"warm{i}", {"payload": 1})
        child_faults, ms = [], []
        before = minor_faults(kernel)
        for i in range(count):
            started = time.perf_counter()
            result = await pool.submit(f"m{i}", {"payload": 1})
            ms.append((time.perf_counter() - started) * 1000)
            child_faults.append(result["outputs"][0][0]["f"])
        kernel_faults = (minor_faults(kernel) - before) / count
    finally:
        await pool.close()
    print(
        f"p50 {statistics.median(ms):.2f} ms; faults per message: "
        f"child {statistics.median(child_faults):.0f} (p50), kernel {kernel_faults:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
