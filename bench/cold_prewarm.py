"""A/B: cold mode with and without the prewarm copies (kernel/prewarm.py), sparse messages.

Two cold pools (1 worker, ``return msg``), one started with KERNELEXEC_PREWARM=0; messages go
to them in turn, each after an idle gap (so the spare child is forked and copied first).
Prints the p50 latency of ``pool.submit`` and the kernel's page faults per message:

    .venv/bin/python bench/cold_prewarm.py [--count 20] [--gap 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine_bench import check_result, make_kernelexec, small_msg


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


async def main(count: int, gap: float) -> None:
    pools: dict[str, Any] = {}
    for label, value in (("prewarm off", "0"), ("prewarm on", "1")):
        os.environ["KERNELEXEC_PREWARM"] = value  # read by the kernel, inherited at start
        pools[label] = await make_kernelexec("cold")
    os.environ.pop("KERNELEXEC_PREWARM")
    ms: dict[str, list[float]] = {label: [] for label in pools}
    faults: dict[str, list[int]] = {label: [] for label in pools}
    try:
        for i in range(count):
            for label, pool in pools.items():
                await asyncio.sleep(gap)
                pid = pool.workers[0].kernel.pid
                before, began = minor_faults(pid), time.perf_counter()
                check_result(await pool.submit(f"{label}-{i}", small_msg(i)))
                ms[label].append((time.perf_counter() - began) * 1e3)
                faults[label].append(minor_faults(pid) - before)
    finally:
        for pool in pools.values():
            await pool.close()
    for label in pools:
        print(
            f"{label:12s} p50 {statistics.median(ms[label]):.2f} ms, kernel page faults per "
            f"message {statistics.median(faults[label]):.0f}  (n={count}, gap {gap:g} s)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.3)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.gap))
