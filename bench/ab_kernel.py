"""A/B a change to the kernel-side code (runtime, coldfork, kernel tuning) against the current one.

Copy the package, patch the copy, and point this script at it: pool A's kernel imports
kernelexec from this checkout, pool B's from the copy (through PYTHONPATH; the bridge-side
code is the same for both). Messages alternate between A and B (the order flips each round)
so that machine noise hits both alike, which makes a small difference visible on a busy
machine where two separate runs would not.

    cp -r kernelexec /tmp/variant/ && $EDITOR /tmp/variant/kernelexec/kernel/coldfork.py
    .venv/bin/python bench/ab_kernel.py /tmp/variant --mode cold --count 400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from engine_bench import small_msg, summary  # noqa: E402

from kernelexec.config import PoolConfig  # noqa: E402
from kernelexec.pool import MemoryHooks, make_pool  # noqa: E402

PROBE = "import kernelexec\nmsg['where'] = kernelexec.__file__\nreturn msg"


async def start_pool(name: str, mode: str, variant: str | None, code: str = "return msg") -> Any:
    saved = os.environ.get("PYTHONPATH")
    if variant:
        os.environ["PYTHONPATH"] = variant
    try:
        config = PoolConfig.from_dict(name, {"code": code, "mode": mode, "workers": 1})
        pool = make_pool(config, MemoryHooks())
        await pool.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return pool


async def where(mode: str, variant: str) -> str:
    """The kernelexec package a variant kernel really imports."""
    pool = await start_pool("ab-probe", mode, variant, PROBE)
    try:
        result = await pool.submit("probe", {"payload": 0})
        found: str = result["outputs"][0][0]["where"]
        return found
    finally:
        await pool.close()


async def run(variant: str, mode: str, count: int) -> dict[str, Any]:
    location = await where(mode, variant)
    if not location.startswith(str(Path(variant).resolve())):
        message = f"the variant kernel imported {location}, not the copy in {variant}"
        raise SystemExit(message)
    pools = {
        "A current": await start_pool("ab-a", mode, None),
        "B variant": await start_pool("ab-b", mode, variant),
    }
    samples: dict[str, list[float]] = {name: [] for name in pools}
    try:
        for name, pool in pools.items():
            for i in range(5):
                await pool.submit(f"{name}-warm-{i}", small_msg(i))
        for i in range(count):
            order = list(pools.items()) if i % 2 else list(reversed(pools.items()))
            for name, pool in order:
                t0 = time.perf_counter_ns()
                result = await pool.submit(f"{name}-{i}", small_msg(i))
                samples[name].append((time.perf_counter_ns() - t0) / 1e6)
                if result.get("error"):
                    msg = f"{name}: {result['error']}"
                    raise SystemExit(msg)
    finally:
        for pool in pools.values():
            await pool.close()
    return {name: summary(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", help="directory holding the patched kernelexec package")
    parser.add_argument("--mode", choices=["hot", "cold"], default="hot")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(run(args.variant, args.mode, args.count))
    for name, s in result.items():
        print(
            f"{name}: n {s['n']}  min {s['min']:.2f}  p50 {s['p50']:.2f}  "
            f"p90 {s['p90']:.2f}  p99 {s['p99']:.2f} ms"
        )
    a, b = (s["p50"] for s in result.values())
    print(f"p50 B/A = {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
