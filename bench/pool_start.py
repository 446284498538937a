"""A kernel's start, engine only: a hot 1-worker pool on the bridge's kernel template, started,
answering one message and closed, N times in a row (no Node-RED, no bridge process).

The first start waits for the template's own imports and is shown but left out of the
median. What a redeploy costs a pool, without Node-RED's noise around it:

    .venv/bin/python bench/pool_start.py [--count 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernelexec.config import PoolConfig
from kernelexec.handles import forking
from kernelexec.handles.environment import kernel_environment
from kernelexec.pool import MemoryHooks, make_pool


async def one_start(name: str) -> float:
    """Seconds from make_pool to the first answer (setup ``import json``, as bench/'s)."""
    fields = {"code": "return msg", "setup": "import json", "workers": 1}
    started = time.perf_counter()
    pool = make_pool(PoolConfig.from_dict(name, fields), MemoryHooks())
    try:
        await pool.start()
        result = await pool.submit("first", {"payload": 1})
        assert result["error"] is None, result["error"]
        return time.perf_counter() - started
    finally:
        await pool.close()


async def main(count: int) -> None:
    if forking.start_template(kernel_environment()) is None:
        sys.exit("no kernel template on this machine (Linux only)")
    try:
        seconds = [await one_start(f"pool-start-{i}") for i in range(count + 1)]
    finally:
        forking.stop_template()
    ms = [round(s * 1000, 1) for s in seconds]
    print(f"first start (the template's imports included): {ms[0]} ms")
    print(f"then: {ms[1:]}")
    print(f"median {statistics.median(ms[1:]):.1f} ms, min {min(ms[1:])}, max {max(ms[1:])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30)
    asyncio.run(main(parser.parse_args().count))
