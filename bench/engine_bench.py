"""Engine-level benchmark (issue 2): kernelexec's pool against a plain Python process, no Node-RED.

Subjects
    floor  a child ``python bench/floor_worker.py`` echoing length-prefixed JSON frames over
           its stdin/stdout, requests pipelined (the least a process round trip costs)
    hot    ``make_pool`` hot, 1 worker, code ``return msg``
    cold   ``make_pool`` cold, 1 worker (a forked child per message)

Workloads: latency (one message in flight; p50/p90/p99), burst (N submitted at once; msgs/s),
blobs (1, 16, 64 MiB of bytes returned unchanged; MiB/s counting both directions; kernelexec
gets its input through ``kernelexec.kernel.blobs.write_blob`` and its output by reading the returned
ref, and the files are removed, as the Node-RED node does), cold latency back to back.

    .venv/bin/python bench/engine_bench.py [--smoke] [--out bench/results/engine.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import floor_worker  # noqa: E402

from kernelexec.kernel import blobs  # noqa: E402

MIB = 1 << 20
FULL = {
    "warmup": 200,
    "latency": 2000,
    "burst": 5000,
    "burst_rounds": 3,
    "blob_sizes": [1, 16, 64],
    "blob_reps": {1: 10, 16: 5, 64: 3},
    "cold": 100,
}
SMOKE = {
    "warmup": 20,
    "latency": 200,
    "burst": 500,
    "burst_rounds": 1,
    "blob_sizes": [1],
    "blob_reps": {1: 2},
    "cold": 5,
}

Submit = Callable[..., Awaitable[dict[str, Any]]]  # (req_id, msg[, blob table])


def log(text: str) -> None:
    print(f"[engine {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        pos = (len(ordered) - 1) * p
        lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {
        "n": len(ordered),
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def small_msg(i: int) -> dict[str, Any]:
    return {"payload": {"n": i, "text": "hello", "values": [1, 2, 3]}, "topic": "bench"}


# -- the floor: a plain Python process over a pipe -----------------------------------------------


class FrameParser(asyncio.Protocol):
    """Reply frames from the floor's stdout; a big frame is gathered into one preallocated
    buffer (one copy), small ones are sliced out of the received chunks."""

    def __init__(self, on_frame: Callable[[Any], None]) -> None:
        self.on_frame = on_frame
        self.buf = bytearray()
        self.big: bytearray | None = None
        self.big_have = 0
        self.big_head: tuple[int, tuple[int, ...], int] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.big is not None:
            data = self._fill_big(data)
        self.buf += data
        while self.big is None and self._parse_one():
            pass

    def _fill_big(self, data: bytes) -> bytes:
        assert self.big is not None and self.big_head is not None
        take = min(len(data), len(self.big) - self.big_have)
        self.big[self.big_have : self.big_have + take] = data[:take]
        self.big_have += take
        if self.big_have == len(self.big):
            frame, (json_len, sizes, head_len) = self.big, self.big_head
            self.big = self.big_head = None
            self._deliver(memoryview(frame), head_len, json_len, sizes)
        return data[take:]

    def _parse_one(self) -> bool:
        head = floor_worker.HEAD.size
        if len(self.buf) < head:
            return False
        json_len, count = floor_worker.HEAD.unpack_from(self.buf)
        head_len = head + 4 * count
        if len(self.buf) < head_len:
            return False
        sizes = struct.unpack_from(f"<{count}I", self.buf, head)
        total = head_len + json_len + sum(sizes)
        if len(self.buf) >= total:
            frame = bytes(self.buf[:total])
            del self.buf[:total]
            self._deliver(memoryview(frame), head_len, json_len, sizes)
            return True
        self.big = bytearray(total)
        self.big_head = (json_len, sizes, head_len)
        self.big_have = 0
        rest, self.buf = bytes(self.buf), bytearray()
        self._fill_big(rest)
        return False

    def _deliver(self, frame: memoryview, head_len: int, json_len: int, sizes: Any) -> None:
        reply = json.loads(bytes(frame[head_len : head_len + json_len]))
        if sizes:
            at, buffers = head_len + json_len, []
            for size in sizes:
                buffers.append(frame[at : at + size])
                at += size
            reply = _restore(reply, buffers)
        self.on_frame(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class FloorClient:
    """Pipelined client of floor_worker.py: frames out, replies matched in FIFO order."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.parser: FrameParser | None = None
        self.writer: asyncio.WriteTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "floor_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _t, self.parser = await loop.connect_read_pipe(
            lambda: FrameParser(lambda reply: self.waiting.popleft().set_result(reply)),
            self.proc.stdout,
        )
        self.writer, _p = await loop.connect_write_pipe(asyncio.Protocol, self.proc.stdin)

    async def submit(self, req_id: str, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.writer is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.writelines(floor_worker.encode_frame(msg))
        reply: dict[str, Any] = await future
        return reply

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.writer is not None:
            self.writer.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            self.proc.wait()
        if self.parser is not None:
            await self.parser.closed


def _restore(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$b" in value:
            return buffers[value["$b"]]
        return {k: _restore(v, buffers) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, buffers) for v in value]
    return value


# -- kernelexec pools --


async def make_kernelexec(mode: str, message_path: str = "lane") -> Any:
    from kernelexec.config import PoolConfig
    from kernelexec.pool import MemoryHooks, make_pool

    fields = {"code": "return msg", "mode": mode, "workers": 1, "queue_limit": 20000}
    config = PoolConfig.from_dict(
        f"engine-bench-{mode}-{message_path}", {**fields, "message_path": message_path}
    )
    pool = make_pool(config, MemoryHooks())
    started = time.perf_counter()
    await pool.start()
    log(f"kernelexec {mode} pool ready in {time.perf_counter() - started:.2f} s")
    return pool


def check_result(result: dict[str, Any]) -> dict[str, Any]:
    """The one output message of a kernelexec RESULT (raises on an error result)."""
    if result.get("error"):
        message = f"kernelexec error: {result['error']}"
        raise RuntimeError(message)
    out: dict[str, Any] = result["outputs"][0][0]
    return out


# -- workloads --


class Runner:
    def __init__(self, name: str, submit: Submit, kind: str) -> None:
        self.name = name
        self.submit = submit
        self.kind = kind
        self.seq = 0

    def req_id(self) -> str:
        self.seq += 1
        return f"{self.name}-{self.seq}"

    async def one(self, msg: dict[str, Any]) -> dict[str, Any]:
        result = await self.submit(self.req_id(), msg)
        if self.kind == "floor":
            if "error" in result:
                raise RuntimeError(result["error"])
            out: dict[str, Any] = result["ok"]
            return out
        return check_result(result)

    async def latency(self, count: int) -> list[float]:
        samples = []
        for i in range(count):
            t0 = time.perf_counter_ns()
            await self.one(small_msg(i))
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        return samples

    async def burst(self, count: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self.one(small_msg(i)) for i in range(count)))
        seconds = time.perf_counter() - t0
        assert len(results) == count
        return {"n": count, "seconds": seconds, "msgs_per_s": count / seconds}

    async def blob(self, data: bytes, crc: int) -> float:
        """Seconds for one round trip of ``data`` (checked by CRC32 afterwards)."""
        t0 = time.perf_counter()
        if self.kind == "floor":
            out = (await self.one({"payload": data}))["payload"]
        else:
            req_id = self.req_id()
            entry = blobs.write_blob(data, req_id)
            try:
                result = await self.submit(req_id, {"payload": blobs.index_ref(0)}, [entry])
                back = check_result(result)["payload"]
                table = result.get(blobs.TABLE) or []
                try:
                    out = blobs.read_blob(table[back[blobs.INDEX]], req_id)
                finally:
                    blobs.remove_table(table, req_id)
            finally:
                blobs.remove_table([entry], req_id)
        seconds = time.perf_counter() - t0
        if len(out) != len(data) or zlib.crc32(out) != crc:
            message = f"{self.name}: blob of {len(data)} bytes came back altered"
            raise RuntimeError(message)
        return seconds


async def run_subjects(cfg: dict[str, Any], subjects: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"latency": {}, "burst": {}, "blobs": {}, "cold": {}}
    floor = FloorClient()
    pools: dict[str, Any] = {}
    runners: dict[str, Runner] = {}
    try:
        if "floor" in subjects:
            await floor.start()
            runners["floor"] = Runner("floor", floor.submit, "floor")
        for mode in ("hot", "cold"):
            if mode in subjects:
                pools[mode] = await make_kernelexec(mode)
                runners[mode] = Runner(mode, pools[mode].submit, "kernelexec")
        await measure(cfg, runners, result)
    finally:
        await floor.close()
        for pool in pools.values():
            await pool.close()
    return result


async def measure(cfg: dict[str, Any], runners: dict[str, Runner], result: dict[str, Any]) -> None:
    steady = [name for name in runners if name != "cold"]
    for name in runners:
        await runners[name].latency(cfg["warmup"] if name != "cold" else 3)
    for name in steady:  # latency, one message in flight, interleaved in 4 rounds
        result["latency"][name] = []
    for _round in range(4):
        for name in steady:
            result["latency"][name] += await runners[name].latency(cfg["latency"] // 4)
    for name in steady:
        result["latency"][name] = summary(result["latency"][name])
        log(f"latency {name}: p50 {result['latency'][name]['p50']:.3f} ms")
    for name in steady:
        result["burst"][name] = {"rounds": []}
    for _round in range(cfg["burst_rounds"]):
        for name in steady:
            result["burst"][name]["rounds"].append(await runners[name].burst(cfg["burst"]))
    for name in steady:
        rates = [r["msgs_per_s"] for r in result["burst"][name]["rounds"]]
        result["burst"][name]["msgs_per_s"] = statistics.median(rates)
        log(f"burst {name}: {result['burst'][name]['msgs_per_s']:.0f} msgs/s")
    for mib in cfg["blob_sizes"]:
        data = os.urandom(mib * MIB)
        crc = zlib.crc32(data)
        times: dict[str, list[float]] = {name: [] for name in steady}
        for _rep in range(cfg["blob_reps"][mib]):
            for name in steady:
                times[name].append(await runners[name].blob(data, crc))
        for name in steady:
            seconds = statistics.median(times[name])
            result["blobs"].setdefault(name, {})[str(mib)] = {
                "reps": len(times[name]),
                "ms": seconds * 1000,
                "mib_per_s": 2 * mib / seconds,
            }
            log(f"blob {mib} MiB {name}: {2 * mib / seconds:.0f} MiB/s")
    if "cold" in runners:
        result["cold"]["back_to_back"] = summary(await runners["cold"].latency(cfg["cold"]))
        log(f"cold back to back: p50 {result['cold']['back_to_back']['p50']:.2f} ms")


def versions() -> dict[str, Any]:
    import ipykernel
    import jupyter_client

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "ipykernel": ipykernel.__version__,
        "jupyter_client": jupyter_client.__version__,
        "kernelexec_commit": commit or None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts (CI)")
    parser.add_argument("--out", default=str(HERE / "results" / "engine.json"))
    parser.add_argument("--subjects", default="floor,hot,cold")
    args = parser.parse_args()
    cfg = SMOKE if args.smoke else FULL
    subjects = [s for s in args.subjects.split(",") if s]
    started = time.time()
    result = asyncio.run(run_subjects(cfg, subjects))
    result["meta"] = {
        "smoke": args.smoke,
        "seconds": time.time() - started,
        "config": cfg,
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
