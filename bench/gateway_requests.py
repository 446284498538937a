"""Per-message latency, kernelexec_request against execute_request, local and on each gateway.

    .venv/bin/python bench/gateway_requests.py [--rounds 6] [--per-round 100] [--json]
        [--targets local,kg3-ipykernel7,kg3-ipykernel6,eg3.3-jc6.1]

One hot pool of one worker (``return msg``, a small message) per target: a local kernel, and
a kernel on each gateway of the test matrix (tests/gateway_fixtures.py: Kernel Gateway 3.0
with ipykernel 7 and 6.29, Enterprise Gateway 3.3 with jupyter_client 6.1, all on
127.0.0.1). Every kernel speaks both paths (local kernels natively, gateway kernels once the
bootstrap installed the handler), so the two alternate on the same kernel in rounds
(``_speaks_requests`` switched between rounds) and machine noise spreads over both. Prints
p50/p90 of ``pool.submit`` in milliseconds (docs/scale-out.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT), str(ROOT / "tests")]

from engine_bench import check_result, small_msg  # noqa: E402
from gateway_fixtures import FLAVOURS, running_gateway  # noqa: E402

TOKEN = "bench-token"
PATHS = ("kernelexec_request", "execute_request")


@contextlib.contextmanager
def _where(target: str) -> Iterator[dict[str, str]]:
    if target == "local":
        yield {}
        return
    with running_gateway(TOKEN, flavour=target) as url:
        yield {"gateway_url": url, "gateway_token": TOKEN}


async def measure(target: str, rounds: int, per_round: int) -> dict[str, Any]:
    from kernelexec.config import PoolConfig
    from kernelexec.pool import MemoryHooks, make_pool

    figures: dict[str, Any] = {}
    with _where(target) as env:
        config = PoolConfig.from_dict(
            f"bench-{target}", {"code": "return msg", "workers": 1, "env": env}
        )
        pool = make_pool(config, MemoryHooks())
        await pool.start()
        kernel: Any = pool.workers[0].kernel
        if not kernel._speaks_requests:
            msg = f"{target}: the kernel does not take kernelexec_request"
            raise RuntimeError(msg)
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        try:
            for i in range(20):  # warm-up
                check_result(await pool.submit(f"w{i}", small_msg(i)))
            for r in range(rounds):
                for path in PATHS:
                    kernel._speaks_requests = path == "kernelexec_request"
                    for i in range(per_round):
                        began = time.perf_counter()
                        check_result(await pool.submit(f"{path}-{r}-{i}", small_msg(i)))
                        times[path].append(time.perf_counter() - began)
        finally:
            await pool.close()
    for path, values in times.items():
        values.sort()
        figures[path] = {
            "p50": round(values[len(values) // 2] * 1e3, 2),
            "p90": round(values[int(len(values) * 0.9)] * 1e3, 2),
            "n": len(values),
        }
    return figures


async def main(targets: list[str], rounds: int, per_round: int, as_json: bool) -> None:
    results = {t: await measure(t, rounds, per_round) for t in targets}
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for target, figures in results.items():
        for path, f in figures.items():
            print(f"{target:16s} {path:20s} p50 {f['p50']:7.2f} ms  p90 {f['p90']:7.2f} ms  "
                  f"(n={f['n']})")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--targets", default=",".join(["local", *FLAVOURS]))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t != "local" and t not in FLAVOURS]
    if unknown:
        parser.error(f"unknown targets {unknown}; known: local, {', '.join(FLAVOURS)}")
    asyncio.run(main(chosen, args.rounds, args.per_round, args.json))
