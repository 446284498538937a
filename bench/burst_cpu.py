"""The engine burst with CPU time: hot pool, 1 worker, ``return msg``, rounds of 5,000 messages.

Prints the median burst rate (msgs/s) and the median CPU time per message of the bridge
process and of the kernel process. CPU time varies less than the rate on a shared machine,
so it is the figure to compare two versions with (docs/reliability.md, "Exactly once")::

    .venv/bin/python bench/burst_cpu.py --rounds 7                   # this checkout
    .venv/bin/python bench/burst_cpu.py --rounds 7 --root /other/checkout

``--root`` imports kernelexec (bridge and kernels: PYTHONPATH) from another checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cpu(process: object) -> float:
    times = process.cpu_times()  # type: ignore[attr-defined]
    return float(times.user + times.system)


async def measure(rounds: int, count: int) -> dict[str, float]:
    import engine_bench
    import psutil

    pool = await engine_bench.make_kernelexec("hot")
    bridge, kernel = psutil.Process(), psutil.Process(pool.workers[0].kernel.pid)
    rates, bridge_us, kernel_us = [], [], []
    try:
        runner = engine_bench.Runner("hot", pool.submit, "kernelexec")
        await runner.latency(200)
        for _ in range(rounds):
            b0, k0 = _cpu(bridge), _cpu(kernel)
            rates.append((await runner.burst(count))["msgs_per_s"])
            bridge_us.append((_cpu(bridge) - b0) / count * 1e6)
            kernel_us.append((_cpu(kernel) - k0) / count * 1e6)
    finally:
        await pool.close()
    med = statistics.median
    return {
        "msgs_per_s": med(rates),
        "bridge_us": med(bridge_us),
        "kernel_us": med(kernel_us),
        "total_us": med([b + k for b, k in zip(bridge_us, kernel_us, strict=True)]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--root", default=str(HERE.parent), help="the checkout to measure")
    args = parser.parse_args()
    root = str(Path(args.root).resolve())
    os.environ["PYTHONPATH"] = root  # the kernels import the same kernelexec
    sys.path[:0] = [str(HERE), root]
    import kernelexec

    if not kernelexec.__file__ or not kernelexec.__file__.startswith(root):
        print(f"kernelexec comes from {kernelexec.__file__}, not {root}", file=sys.stderr)
        return 2
    figures = asyncio.run(measure(args.rounds, args.count))
    print(
        f"{root}: burst {figures['msgs_per_s']:.0f} msgs/s; CPU per message: bridge "
        f"{figures['bridge_us']:.1f} us, kernel {figures['kernel_us']:.1f} us, "
        f"total {figures['total_us']:.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
