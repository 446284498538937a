"""Round-trip latency of one execute: local kernel vs. the same through a Kernel Gateway.

    .venv/bin/python bench/gateway_latency.py [-n 300] [--json]

Starts a real ``jupyter kernelgateway`` on 127.0.0.1 (token-protected), then measures
``execute_request -> execute_reply`` of the worker's constant cell shape (silent,
store_history=False, a small ``content["kernelexec"]``) n times per variant, after a warm-up:

- local: kernelexec's LocalKernel (tuned kernel, zmq ipc), the baseline;
- gateway: GatewayKernel with TCP_NODELAY and TCP_QUICKACK on our socket (the default),
  with only one of them, and with neither (stock sockets);
- gateway, 1 MiB buffer: the same request carrying a 1 MiB binary buffer;
- gateway, 24 MiB buffer: above the server's 10 MiB WebSocket cap, so staged in chunks.

Gateway kernels are stock ``python3`` kernels tuned by runtime_bootstrap_code(), as the
pool runs them. Prints p50/p90/p99 in milliseconds (docs/scale-out.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gateway_fixtures import running_gateway  # noqa: E402

from kernelexec.handles.base import KernelHandle  # noqa: E402
from kernelexec.handles.gateway import (  # noqa: E402
    GatewayKernel,
    GatewaySettings,
    runtime_bootstrap_code,
)

TOKEN = "bench-token"
EXTRA = {"op": "run", "batch": [{"req_id": "r", "msg": {"payload": 1}, "timeout": 0}]}


async def measure(
    kernel: KernelHandle, n: int, buffers: list[bytes] | None = None
) -> dict[str, float]:
    for _ in range(min(20, n)):
        await kernel.execute("pass", EXTRA, buffers)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        reply = await kernel.execute("pass", EXTRA, buffers)
        samples.append((time.perf_counter() - started) * 1000)
        assert reply["status"] == "ok", reply
    samples.sort()

    def pct(p: float) -> float:
        return round(samples[min(len(samples) - 1, int(p * len(samples)))], 2)

    return {
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "mean": round(statistics.fmean(samples), 2),
        "n": n,
    }


async def with_kernel(
    factory: Callable[[], KernelHandle], body: Callable[[KernelHandle], Awaitable[Any]]
) -> Any:
    kernel = factory()
    started = time.perf_counter()
    await kernel.start()
    start_ms = round((time.perf_counter() - started) * 1000, 1)
    try:
        result = await body(kernel)
        result["start_ms"] = start_ms
        return result
    finally:
        await kernel.shutdown()


async def run(n: int) -> dict[str, dict[str, float]]:
    from kernelexec.handles.local import LocalKernel, default_launch_spec

    results: dict[str, dict[str, float]] = {}
    results["local (LocalKernel, ipc)"] = await with_kernel(
        lambda: LocalKernel(default_launch_spec()), lambda k: measure(k, n)
    )
    bootstrap = runtime_bootstrap_code()
    with running_gateway(TOKEN) as url:
        variants = [
            ("gateway, NODELAY+QUICKACK (default)", True, True),
            ("gateway, NODELAY only", True, False),
            ("gateway, QUICKACK only", False, True),
            ("gateway, neither (stock sockets)", False, False),
        ]
        for name, nodelay, quickack in variants:
            settings = GatewaySettings.from_url(url, TOKEN, nodelay=nodelay, quickack=quickack)

            async def body(kernel: KernelHandle) -> dict[str, float]:
                reply = await kernel.execute(bootstrap, {})
                assert reply["status"] == "ok", reply
                return await measure(kernel, n)

            results[name] = await with_kernel(functools.partial(GatewayKernel, settings), body)

        settings = GatewaySettings.from_url(url, TOKEN)
        for label, size, count in (("1 MiB", 1 << 20, n), ("24 MiB, staged", 24 << 20, 20)):
            payload = [os.urandom(size)]

            async def body_buf(
                kernel: KernelHandle, payload: list[bytes] = payload, count: int = count
            ) -> dict[str, float]:
                await kernel.execute(bootstrap, {})
                return await measure(kernel, count, payload)

            results[f"gateway, {label} buffer"] = await with_kernel(
                lambda: GatewayKernel(settings), body_buf
            )
        blob_results = await blob_round_trips(url)
    for name, figures in blob_results.items():
        results[name] = figures
    return results


async def blob_round_trips(url: str, repeat: int = 5) -> dict[str, dict[str, float]]:
    """A node that returns the bytes it got: blob in, blob out, through the whole pool."""
    from kernelexec.config import PoolConfig
    from kernelexec.kernel import blobs
    from kernelexec.pool import MemoryHooks, make_pool

    code = "msg['payload'] = bytes(msg['payload'])\nreturn msg"
    results: dict[str, dict[str, float]] = {}
    for label, env in (("local", {}), ("gateway", {"gateway_url": url, "gateway_token": TOKEN})):
        pool = make_pool(PoolConfig.from_dict("bench", {"code": code, "env": env}), MemoryHooks())
        await pool.start()
        try:
            for size in (4 << 20, 24 << 20):
                ref = blobs.write_blob(os.urandom(size), "bench")
                samples = []
                for i in range(repeat):
                    started = time.perf_counter()
                    result = await pool.submit(f"bench{i}", {"payload": ref})
                    samples.append(time.perf_counter() - started)
                    os.unlink(result["outputs"][0][0]["payload"]["path"])
                os.unlink(ref["path"])
                median = statistics.median(samples)
                results[f"{label}, {size >> 20} MiB blob in and out (pool)"] = {
                    "median_ms": round(median * 1000, 1),
                    "mb_per_s": round(2 * size / median / 1e6),
                }
        finally:
            await pool.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="executes per variant")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the gateway and its kernels are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = asyncio.run(run(args.n))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'variant':40} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean':>8} {'n':>5}"
          f" {'start ms':>9}")
    for name, r in results.items():
        if "mb_per_s" in r:
            print(f"{name:40} median {r['median_ms']:.1f} ms, {r['mb_per_s']:.0f} MB/s in+out")
            continue
        print(f"{name:40} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} {r['mean']:8.2f} "
              f"{r['n']:5d} {r['start_ms']:9.1f}")


if __name__ == "__main__":
    main()
