"""A/B: the kernelexec_request message against the execute_request of ``__kernelexec__.handle()``.

One hot pool (1 worker, ``return msg``); the worker's kernel speaks both, so the two paths
alternate on the same kernel in rounds (``LocalKernel._speaks_requests`` switched between
rounds) and machine noise spreads over both. Prints p50/p90 of ``pool.submit``:

    .venv/bin/python bench/request_vs_execute.py [--rounds 10] [--per-round 300]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine_bench import check_result, make_kernelexec, small_msg

from kernelexec.handles.local import LocalKernel


async def main(rounds: int, per_round: int) -> None:
    pool = await make_kernelexec("hot")
    kernel = pool.workers[0].kernel
    assert isinstance(kernel, LocalKernel)
    times: dict[str, list[float]] = {"kernelexec_request": [], "execute_request": []}
    try:
        for r in range(rounds):
            for label in times:
                kernel._speaks_requests = label == "kernelexec_request"
                for i in range(per_round):
                    began = time.perf_counter()
                    check_result(await pool.submit(f"{label}-{r}-{i}", small_msg(i)))
                    times[label].append(time.perf_counter() - began)
    finally:
        await pool.close()
    for label, values in times.items():
        values.sort()
        p50, p90 = values[len(values) // 2] * 1e3, values[int(len(values) * 0.9)] * 1e3
        print(f"{label:20s} p50 {p50:.3f} ms  p90 {p90:.3f} ms  (n={len(values)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.per_round))
