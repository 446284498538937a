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
    hot_p50 = _get(nr, "latency", "hot1", "p50")
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

    ratio = _ratio(hot_p50, floor_p50)
    add(
        "hot latency p50, 1 worker",
        ratio,
        lambda r: f"{hot_p50:.2f} ms = {r:.1f}x floor ({floor_p50:.3f} ms)",
        ("≤ 15x floor", lambda r: r <= 15),
        ("≤ 2x floor", lambda r: r <= 2),
    )
    hot4 = _get(nr, "burst", "hot4", "msgs_per_s")
    floor_rate = _get(nr, "burst", "floor", "msgs_per_s")
    ratio = _ratio(hot4, floor_rate)
    add(
        "burst rate, 4 workers",
        ratio,
        lambda r: f"{hot4:,.0f} msgs/s = {r:.2f}x floor ({floor_rate:,.0f}/s)",
        ("≥ 0.3x floor", lambda r: r >= 0.3),
        ("≥ 0.6x floor", lambda r: r >= 0.6),
    )
    blob = _get(nr, "blobs", "hot1", "64", "mib_per_s")
    floor_blob = _get(nr, "blobs", "floor", "64", "mib_per_s")
    ratio = _ratio(blob, floor_blob)
    add(
        "64 MiB blob rate (hot, 1 worker)",
        ratio,
        lambda r: f"{blob:,.0f} MiB/s = {r:.2f}x floor ({floor_blob:,.0f} MiB/s)",
        ("≥ 1.0x floor", lambda r: r >= 1.0),
        ("≥ 1.5x floor", lambda r: r >= 1.5),
    )
    cold = _get(nr, "cold", "back_to_back", "p50")
    add(
        "cold latency p50, back-to-back",
        cold,
        lambda v: f"{v:.1f} ms = {v / hot_p50:.1f}x hot p50" if hot_p50 else f"{v:.1f} ms",
        ("≤ 50 ms", lambda v: v <= 50),
        ("≤ 5x hot p50", lambda v: hot_p50 is not None and v <= 5 * hot_p50),
    )
    slow = _get(nr, "cold", "per_second", "p50")
    hot_sparse = _get(nr, "cold", "hot_per_second", "p50")
    ratio = _ratio(slow, hot_p50)
    like_for_like = _ratio(slow, hot_sparse)
    add(
        "cold latency p50, 1 msg/s",
        ratio,
        lambda r: f"{slow:.1f} ms = {r:.1f}x hot p50"
        + (
            f" ({like_for_like:.1f}x a hot message at 1 msg/s, {hot_sparse:.1f} ms)"
            if like_for_like is not None and hot_sparse is not None
            else ""
        ),
        ("≤ 2x hot p50", lambda r: r <= 2),
        ("≤ 1.2x hot p50", lambda r: r <= 1.2),
    )
    for label, key in (
        ("redeploy, bridge running", "p50_s"),
        ("first deploy, bridge start included", "first_deploy_s"),
    ):
        seconds = _get(nr, "startup", key)
        add(
            f"deploy to first answer, 4 workers ({label})",
            seconds,
            lambda v: f"{v:.2f} s",
            ("≤ 3 s", lambda v: v <= 3),
            ("≤ 1 s", lambda v: v <= 1),
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
