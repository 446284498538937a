"""Regenerate the figures section of docs/performance.md from the benchmark JSON.

The section between ``<!-- figures:start -->`` and ``<!-- figures:end -->`` is replaced;
the rest of the document is left as written.

    .venv/bin/python bench/report.py [--latest bench/results/latest.json]
        [--engine bench/results/engine.json] [--doc docs/performance.md] [--stdout]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import evaluate  # noqa: E402

START, END = "<!-- figures:start -->", "<!-- figures:end -->"
NR_ORDER = ["function", "floor", "hot1", "hot1j", "hot4", "cold"]


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        if abs(value) >= 1000:
            return f"{value:,.0f}{suffix}"
        return f"{value:.{digits}f}{suffix}"
    return str(value)


def ratio(a: Any, b: Any, digits: int = 2) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.{digits}f}x"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def subjects(nr: dict[str, Any]) -> list[str]:
    present = nr.get("subjects", {})
    return [name for name in NR_ORDER if name in present]


def label(nr: dict[str, Any], name: str) -> str:
    text: str = nr.get("subjects", {}).get(name, name)
    return text


def header_lines(nr: dict[str, Any]) -> list[str]:
    meta = nr.get("meta", {})
    machine, ver = meta.get("machine", {}), meta.get("versions", {})
    lines = [
        f"Run of {meta.get('started', '?')} "
        f"({'SMOKE: tiny counts, figures not meaningful' if meta.get('smoke') else 'full run'}).",
        "",
        f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{machine.get('memory_gib', '?')} GiB RAM, {machine.get('os', '?')}; load average "
        f"(1, 5, 15 min) {machine.get('loadavg_at_start', '?')} at the start, "
        f"{machine.get('loadavg_at_end', '?')} at the end (the benchmark's own processes "
        "included)",
        f"- Versions: Node.js {ver.get('node', '?')}, Node-RED {ver.get('node_red', '?')}, "
        f"Python {ver.get('python', '?')}, ipykernel {ver.get('ipykernel', '?')}, "
        f"jupyter_client {ver.get('jupyter_client', '?')}, pyzmq {ver.get('pyzmq', '?')}, "
        f"tornado {ver.get('tornado', '?')}, kernelexec {ver.get('kernelexec_commit', '?')}",
        "",
    ]
    if nr.get("failure"):
        lines += ["**The run failed:** `" + nr["failure"].splitlines()[0] + "`", ""]
    return lines


def target_lines(nr: dict[str, Any]) -> list[str]:
    rows = [[r.name, r.measured, r.must, r.aim, f"**{r.status}**"] for r in evaluate(nr)]
    return [
        "### Targets (issue 14)",
        "",
        *table(["figure", "measured (this run)", "must", "aim", "status"], rows),
    ]


def latency_lines(nr: dict[str, Any]) -> list[str]:
    lat = nr.get("latency", {})
    floor = (lat.get("floor") or {}).get("p50")
    rows = []
    for name in subjects(nr):
        s = lat.get(name)
        if not s:
            continue
        rows.append(
            [
                label(nr, name),
                str(s.get("n")),
                fmt(s.get("min"), 3),
                fmt(s.get("p50"), 3),
                fmt(s.get("p90"), 3),
                fmt(s.get("p99"), 3),
                ratio(s.get("p50"), floor, 1),
                ", ".join(fmt(x, 3) for x in s.get("round_p50", [])),
            ]
        )
    return [
        "### Latency, one message in flight (ms)",
        "",
        *table(
            ["subject", "n", "min", "p50", "p90", "p99", "p50 / floor", "p50 of each round"], rows
        ),
    ]


def burst_lines(nr: dict[str, Any]) -> list[str]:
    burst = nr.get("burst", {})
    floor = (burst.get("floor") or {}).get("msgs_per_s")
    rows = []
    for name in subjects(nr):
        b = burst.get(name)
        if not b:
            continue
        rounds = ", ".join(fmt(r.get("msgs_per_s"), 0) for r in b.get("rounds", []))
        p50 = (b.get("rounds") or [{}])[0].get("latency_ms", {}).get("p50")
        rows.append(
            [
                label(nr, name),
                str(b.get("n")),
                fmt(b.get("msgs_per_s"), 0),
                rounds,
                ratio(b.get("msgs_per_s"), floor),
                fmt(p50, 1),
            ]
        )
    return [
        "### Burst: N messages sent at once (msgs/s, median of rounds)",
        "",
        *table(["subject", "N", "msgs/s", "rounds", "/ floor", "p50 in-burst latency (ms)"], rows),
    ]


CPU_KEYS = ("node_red", "floor", "bridge", "kernels")
CPU_COLUMNS = ["subject", "Node-RED process", "floor process", "bridge", "kernels", "total"]


def cpu_row(nr: dict[str, Any], name: str, med: dict[str, Any]) -> list[str]:
    """One subject's CPU time per message (µs) by process, and their sum."""
    values = [int(med.get(k) or 0) for k in CPU_KEYS]
    return [label(nr, name), *(str(v) for v in values), str(sum(values))]


def cpu_lines(nr: dict[str, Any]) -> list[str]:
    """CPU time per message by process: one message in flight (the latency rounds), and in
    the bursts."""
    lines: list[str] = []
    latency = [
        cpu_row(nr, name, s["cpu_us_per_msg"])
        for name in subjects(nr)
        if (s := nr.get("latency", {}).get(name)) and s.get("cpu_us_per_msg")
    ]
    if latency:
        lines += [
            "### CPU time per message, one message in flight (µs, median of the latency rounds)",
            "",
            *table(CPU_COLUMNS, latency),
        ]
    rows = []
    for name in subjects(nr):
        runs = [
            r
            for r in (nr.get("burst", {}).get(name) or {}).get("rounds", [])
            if r.get("cpu_us_per_msg")
        ]
        if runs:
            med = {
                k: sorted(r["cpu_us_per_msg"][k] for r in runs)[len(runs) // 2] for k in CPU_KEYS
            }
            rows.append(cpu_row(nr, name, med))
    if rows:
        lines += [
            "### CPU time per message during the bursts (µs, median of rounds)",
            "",
            *table(CPU_COLUMNS, rows),
        ]
    return lines


def blob_lines(nr: dict[str, Any]) -> list[str]:
    blobs = nr.get("blobs", {})
    sizes = sorted({int(s) for b in blobs.values() for s in b}, key=int)
    if not sizes:
        return []
    floor = blobs.get("floor", {})
    rows = []
    for name in subjects(nr):
        b = blobs.get(name)
        if not b:
            continue
        cells = []
        for size in sizes:
            entry = b.get(str(size)) or {}
            rate = entry.get("mib_per_s")
            base = (floor.get(str(size)) or {}).get("mib_per_s")
            bad = entry.get("reps", 0) - entry.get("intact", entry.get("reps", 0))
            note = f" ({bad} altered/failed)" if bad else ""
            cells.append(f"{fmt(rate, 0)} ({ratio(rate, base)}){note}")
        rows.append([label(nr, name), *cells])
    return [
        "### Blobs: Buffers returned unchanged, CRC32-checked "
        "(MiB/s counting both directions; ratio to the floor)",
        "",
        *table(["subject", *(f"{s} MiB" for s in sizes)], rows),
    ]


def cold_startup_memory_lines(nr: dict[str, Any]) -> list[str]:
    lines = ["### Cold mode, startup, memory", ""]
    cold = nr.get("cold", {})
    rows = []
    for key, text in (
        ("back_to_back", "cold, back-to-back"),
        ("per_second", "cold, 1 msg/s"),
        ("hot_per_second", "hot 1 worker, 1 msg/s (same seconds)"),
    ):
        s = cold.get(key)
        if s and s.get("n"):
            rows.append(
                [
                    text,
                    str(s["n"]),
                    fmt(s.get("p50"), 2),
                    fmt(s.get("p90"), 2),
                    fmt(s.get("max"), 2),
                ]
            )
    if rows:
        lines += table(["latency (ms)", "n", "p50", "p90", "max"], rows)
    start = nr.get("startup", {})
    if start:
        redeploys = ", ".join(f"{s:.2f}" for s in start.get("redeploy_s", []))
        firsts = ", ".join(f"{s:.2f}" for s in start.get("first_deploy_runs_s", []))
        lines += [
            f"Deploy to first answer (4 workers, setup `import json`): first deploy including "
            f"the bridge's start {firsts or '-'} s (median {fmt(start.get('first_deploy_s'))} "
            f"s: in a fresh Node-RED, then after the bridge of the last node exited); "
            f"redeploys with the "
            f"bridge running {redeploys or '-'} s (median {fmt(start.get('p50_s'))} s). The "
            f"floor, measured the same way (a new floor node to its first answer): median "
            f"{fmt(start.get('first_floor_p50_s'), 3)} s beside the first deploys, "
            f"{fmt(start.get('floor_p50_s'), 3)} s beside the redeploys.",
            "",
        ]
    mem = nr.get("memory", {})
    if mem.get("before"):
        b, a = mem["before"], mem["after"]
        lines += table(
            ["RSS (MiB)", "before", f"after {mem['messages']:,} msgs", "growth"],
            [
                [
                    "kernel (hot, 1 worker)",
                    fmt(b["kernel_mib"], 1),
                    fmt(a["kernel_mib"], 1),
                    fmt(mem["kernel_growth_mib"], 2),
                ],
                [
                    "bridge",
                    fmt(b["bridge_mib"], 1),
                    fmt(a["bridge_mib"], 1),
                    fmt(mem["bridge_growth_mib"], 2),
                ],
                [
                    "Node-RED process",
                    fmt(b["node_red_mib"], 1),
                    fmt(a["node_red_mib"], 1),
                    fmt(a["node_red_mib"] - b["node_red_mib"], 2),
                ],
                *(
                    [
                        [
                            "Node-RED process, JS heap in use after a full GC",
                            fmt(b["node_heap_mib"], 1),
                            fmt(a["node_heap_mib"], 1),
                            fmt(a["node_heap_mib"] - b["node_heap_mib"], 2),
                        ]
                    ]
                    if b.get("node_heap_mib") is not None and a.get("node_heap_mib") is not None
                    else []
                ),
            ],
        )
        lines += [
            f"The {mem['messages']:,} messages took {fmt(mem['seconds'], 1)} s "
            f"({fmt(mem['msgs_per_s'], 0)} msgs/s, {mem['failed']} failed).",
            "",
        ]
    elif mem.get("error"):
        lines += [f"Memory: {mem['error']}", ""]
    return lines


def idle_lines(nr: dict[str, Any]) -> list[str]:
    idle = nr.get("idle") or {}
    if not idle:
        return []
    gaps = sorted({int(g) for per in idle.values() for g in per})
    rows = []
    for name in subjects(nr):
        if name not in idle:
            continue
        stream = (nr.get("latency", {}).get(name) or {}).get("p50")
        cells = [fmt((idle[name].get(str(g)) or {}).get("p50"), 2) for g in gaps]
        rows.append([label(nr, name), fmt(stream, 2), *cells])
    return [
        "### Isolated messages: p50 latency (ms) after an idle gap",
        "",
        "One message per subject in turn, after sleeping the gap; compare with the p50 of the "
        "back-to-back stream.",
        "",
        *table(["subject", "stream p50", *(f"gap {g} ms" for g in gaps)], rows),
    ]


def accounting_lines(nr: dict[str, Any]) -> list[str]:
    acc = nr.get("accounting", {})
    rows = [
        [name, str(c["sent"]), str(c["ok"]), str(c["error"]), str(c["lost"])]
        for name, c in acc.items()
    ]
    lines = ["### Every message accounted for", ""]
    lines += table(["flow", "sent", "ok", "error (catch)", "lost"], rows)
    problems = nr.get("checks", {}).get("problems") or []
    lines += [f"- problem: {p}" for p in problems] or [
        "- no lost message, no process or /dev/shm file left after RED.stop()"
    ]
    return [*lines, ""]


def engine_lines(engine: dict[str, Any] | None) -> list[str]:
    if not engine:
        return ["### Engine benchmark (no Node-RED)", "", "Not run.", ""]
    lat, burst, blobs = engine.get("latency", {}), engine.get("burst", {}), engine.get("blobs", {})
    floor_lat = (lat.get("floor") or {}).get("p50")
    floor_rate = (burst.get("floor") or {}).get("msgs_per_s")
    sizes = sorted({int(s) for b in blobs.values() for s in b})
    rows = []
    for name, text in (
        ("floor", "plain Python process over a pipe"),
        ("hot", "kernelexec pool, hot, 1 worker"),
    ):
        if name not in lat:
            continue
        s = lat[name]
        row = [
            text,
            fmt(s["p50"], 3),
            fmt(s["p90"], 3),
            fmt(s["p99"], 3),
            ratio(s["p50"], floor_lat, 1),
            fmt(burst.get(name, {}).get("msgs_per_s"), 0),
            ratio(burst.get(name, {}).get("msgs_per_s"), floor_rate),
        ]
        for size in sizes:
            rate = (blobs.get(name, {}).get(str(size)) or {}).get("mib_per_s")
            base = (blobs.get("floor", {}).get(str(size)) or {}).get("mib_per_s")
            row.append(f"{fmt(rate, 0)} ({ratio(rate, base)})")
        rows.append(row)
    meta = engine.get("meta", {})
    lines = [
        "### Engine benchmark (issue 2; bench/engine_bench.py, no Node-RED)",
        "",
        f"Run of {meta.get('date', '?')}{' (SMOKE)' if meta.get('smoke') else ''}; "
        f"kernelexec {meta.get('versions', {}).get('kernelexec_commit', '?')}. Latency in ms, "
        "burst in msgs/s, blobs in MiB/s both directions (ratio to the floor).",
        "",
    ]
    lines += table(
        [
            "subject",
            "p50",
            "p90",
            "p99",
            "p50 / floor",
            "burst",
            "/ floor",
            *(f"{s} MiB" for s in sizes),
        ],
        rows,
    )
    lines += [
        "The engine floor's client side is asyncio's pipe transport, which copies whatever a "
        "write cannot pass at once into its own buffer, and a Python frame parser: at 16-64 MiB "
        "it is slower than the Node-RED floor, which is the better blob reference.",
        "",
    ]
    cold = engine.get("cold", {}).get("back_to_back")
    if cold:
        lines += [
            f"Cold pool, back-to-back: p50 {fmt(cold['p50'], 2)} ms, "
            f"p90 {fmt(cold['p90'], 2)} ms (n = {cold['n']}).",
            "",
        ]
    return lines


def breakdown_lines(
    breakdown: dict[str, Any] | None, nr: dict[str, Any], engine: dict[str, Any] | None
) -> list[str]:
    if not breakdown:
        return []
    rows = []
    steps = (
        ("floor", "floor: plain Python process over a pipe (for scale)"),
        ("jupyter", "a Jupyter cell alone: execute_request `pass` on the tuned kernel"),
        (
            "runtime",
            "stock-kernel path: execute_request `__kernelexec__.handle()`, run op of 1 msg",
        ),
        ("request", "Jupyter path of kernelexec's kernel: `kernelexec_request`, the same op"),
        ("pool_jupyter", "+ pool and worker on the Jupyter path: `pool.submit`"),
        ("lane", "the lane (kernel/lane.py): the same op down a pipe into the kernel's loop"),
        ("pool", "+ pool and worker on the lane: `pool.submit` (the default)"),
    )
    for key, text in steps:
        s = breakdown.get(key)
        if s:
            rows.append(
                [text, fmt(s.get("min"), 3), fmt(s["p50"], 3), fmt(s["p90"], 3), fmt(s["p99"], 3)]
            )
    nr_lat = nr.get("latency", {}).get("hot1") or {}
    nr_hot = nr_lat.get("p50")
    if nr_hot is not None:
        rows.append(
            [
                "+ Node-RED node and the answer socket both ways (the bridge accounts from the "
                "result pipe): hot x1 in the Node-RED bench",
                fmt(nr_lat.get("min"), 3),
                fmt(nr_hot, 3),
                fmt(nr_lat.get("p90"), 3),
                fmt(nr_lat.get("p99"), 3),
            ]
        )
    exec_ms = (breakdown.get("pool_exec_ms") or {}).get("p50")
    lines = [
        "### Where a hot message's time goes (bench/breakdown.py, one message in flight)",
        "",
        *table(["layer", "min ms", "p50 ms", "p90 ms", "p99 ms"], rows),
    ]
    if exec_ms is not None:
        lines += [
            f"The user code itself (`return msg`, `exec_ms` of the result): {fmt(exec_ms, 3)} ms.",
            "",
        ]
    return lines


def figures(
    nr: dict[str, Any], engine: dict[str, Any] | None, breakdown: dict[str, Any] | None = None
) -> str:
    lines = [
        START,
        "<!-- generated by bench/report.py from bench/results/*.json: do not edit by hand -->",
        "",
    ]
    lines += header_lines(nr) + target_lines(nr)
    lines += ["![Latency, burst and blob rates per subject](performance.png)", ""]
    lines += latency_lines(nr) + burst_lines(nr) + cpu_lines(nr) + blob_lines(nr)
    lines += cold_startup_memory_lines(nr) + idle_lines(nr) + engine_lines(engine)
    lines += breakdown_lines(breakdown, nr, engine) + accounting_lines(nr)
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    root = HERE.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latest", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--engine", default=str(HERE / "results" / "engine.json"))
    parser.add_argument("--breakdown", default=str(HERE / "results" / "breakdown.json"))
    parser.add_argument("--doc", default=str(root / "docs" / "performance.md"))
    parser.add_argument("--stdout", action="store_true", help="print the section, touch nothing")
    args = parser.parse_args()
    nr = json.loads(Path(args.latest).read_text())
    engine_path = Path(args.engine)
    engine = json.loads(engine_path.read_text()) if engine_path.exists() else None
    breakdown_path = Path(args.breakdown)
    breakdown = json.loads(breakdown_path.read_text()) if breakdown_path.exists() else None
    section = figures(nr, engine, breakdown)
    if args.stdout:
        print(section)
        return 0
    doc = Path(args.doc)
    text = doc.read_text()
    if START not in text or END not in text:
        message = f"{doc} has no {START} ... {END} section to replace"
        raise SystemExit(message)
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    doc.write_text(pattern.sub(lambda _m: section, text))
    print(f"updated {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
