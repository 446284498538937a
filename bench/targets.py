"""The issue's performance targets, evaluated from the benchmark results (never hard-coded).

Each target has a *must* and an *aim* threshold. A row's status is computed from the JSON
written by bench/nodered_bench.js (and bench/engine_bench.py): ``pass`` (the aim holds),
``must only`` (the must holds, the aim misses), ``MISS`` (the must misses) or ``n/a`` (the
figure was not measured in this run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MB_PER_MIB = (1 << 20) / 1e6


@dataclass(frozen=True)
class Row:
    name: str
    measured: str
    must: str
    aim: str
    status: str


def _get(data: dict[str, Any], *path: Any) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data or data[key] is None:
            return None
        data = data[key]
    return data


def _status(must_ok: bool | None, aim_ok: bool | None) -> str:
    if must_ok is None:
        return "n/a"
    if not must_ok:
        return "MISS"
    return "pass" if aim_ok else "must only"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def evaluate(nr: dict[str, Any]) -> list[Row]:
    """All target rows for one Node-RED benchmark result."""
    floor_p50 = _get(nr, "latency", "floor", "p50")
    rows = []

    def add(
        name: str,
        value: float | None,
        text: Callable[[float], str],
        must: tuple[str, Callable[[float], bool]],
        aim: tuple[str, Callable[[float], bool]],
    ) -> None:
        if value is None:
            rows.append(Row(name, "not measured", must[0], aim[0], "n/a"))
            return
        rows.append(Row(name, text(value), must[0], aim[0], _status(must[1](value), aim[1](value))))

    for label, subject in (("the lane", "hot1"), ("Jupyter path", "hot1j")):
        hot_p50 = _get(nr, "latency", subject, "p50")
        add(
            f"hot latency p50, 1 worker ({label})",
            _ratio(hot_p50, floor_p50),
            lambda r, hot_p50=hot_p50: f"{hot_p50:.2f} ms = {r:.1f}x floor ({floor_p50:.3f} ms)",
            ("≤ 3x floor", lambda r: r <= 3),
            ("≤ 1.5x floor", lambda r: r <= 1.5),
        )
    # each against the floor's startup measured beside it (the same state of Node-RED)
    first_floor = _get(nr, "startup", "first_floor_p50_s") or _get(nr, "startup", "floor_p50_s")
    for label, key, floor_start, must, aim in (
        ("bridge start included, median of 3", "first_deploy_s", first_floor, 6.0, 2.0),
        (
            "redeploy, bridge running, setup `import json`",
            "p50_s",
            _get(nr, "startup", "floor_p50_s"),
            4.0,
            1.5,
        ),
    ):
        seconds = _get(nr, "startup", key)
        add(
            f"deploy to first answer, 4 workers ({label})",
            _ratio(seconds, floor_start),
            lambda r, seconds=seconds, floor_start=floor_start: (
                f"{seconds:.2f} s = {r:.1f}x floor startup ({floor_start * 1000:.0f} ms)"
            ),
            (f"≤ {must:g}x floor startup", lambda r, must=must: r <= must),
            (f"≤ {aim:g}x floor startup", lambda r, aim=aim: r <= aim),
        )
    paths = (("the lane", "hot1"), ("Jupyter path", "hot1j"))
    for size, (label, subject) in ((size, path) for size in ("1", "64") for path in paths):
        blob = _get(nr, "blobs", subject, size, "mib_per_s")
        floor_blob = _get(nr, "blobs", "floor", size, "mib_per_s")
        add(
            f"{size} MiB Buffer round trip (hot, 1 worker, {label})",
            _ratio(blob, floor_blob),
            lambda r, blob=blob, floor_blob=floor_blob: (
                f"{blob:,.0f} MiB/s = {r:.2f}x floor ({floor_blob:,.0f} MiB/s)"
            ),
            ("≥ 1.0x floor", lambda r: r >= 1.0),
            ("≥ 1.5x floor", lambda r: r >= 1.5),
        )
    hot4 = _get(nr, "burst", "hot4", "msgs_per_s")
    floor_rate = _get(nr, "burst", "floor", "msgs_per_s")
    add(
        "burst rate, 4 workers",
        _ratio(hot4, floor_rate),
        lambda r: f"{hot4:,.0f} msgs/s = {r:.2f}x floor ({floor_rate:,.0f}/s)",
        ("≥ 0.4x floor", lambda r: r >= 0.4),
        ("≥ 0.8x floor", lambda r: r >= 0.8),
    )
    cold = _get(nr, "cold", "back_to_back", "p50")
    add(
        "cold latency p50, back to back",
        cold,
        lambda v: f"{v:.1f} ms",
        ("≤ 5 ms", lambda v: v <= 5),
        ("≤ 3 ms", lambda v: v <= 3),
    )
    growth = _get(nr, "memory", "kernel_growth_mib")
    count = _get(nr, "memory", "messages")
    add(
        f"kernel RSS growth over {count or 100_000:,} msgs",
        growth,
        lambda v: f"{v * MB_PER_MIB:+.2f} MB",
        ("≤ 10 MB", lambda v: v * MB_PER_MIB <= 10),
        ("≤ 2 MB", lambda v: v * MB_PER_MIB <= 2),
    )
    return rows
