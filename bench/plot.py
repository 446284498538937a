"""Plot the Node-RED benchmark results (bench/results/latest.json) as docs/performance.png.

.venv/bin/python bench/plot.py [--latest bench/results/latest.json] [--out docs/performance.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
ORDER = ["function", "floor", "hot1", "hot1j", "hot4", "cold"]
SHORT = {
    "function": "function\nnode",
    "floor": "floor\n(pipe)",
    "hot1": "kernelexec\nhot x1",
    "hot1j": "kernelexec\nhot x1\nJupyter path",
    "hot4": "kernelexec\nhot x4",
    "cold": "kernelexec\ncold",
}
COLORS = {
    "function": "#9e9e9e",
    "floor": "#4c72b0",
    "hot1": "#dd8452",
    "hot1j": "#e6b38a",
    "hot4": "#c44e52",
    "cold": "#8172b3",
}


def names(data: dict[str, Any], section: str) -> list[str]:
    return [n for n in ORDER if data.get(section, {}).get(n)]


def latency_panel(ax: Any, data: dict[str, Any]) -> None:
    subjects = names(data, "latency")
    width = 0.27
    for k, (q, alpha) in enumerate((("p50", 1.0), ("p90", 0.65), ("p99", 0.35))):
        xs = [i + (k - 1) * width for i in range(len(subjects))]
        ys = [data["latency"][n][q] for n in subjects]
        ax.bar(xs, ys, width, color=[COLORS[n] for n in subjects], alpha=alpha, label=q)
    ax.set_yscale("log")
    ax.set_xticks(range(len(subjects)), [SHORT[n] for n in subjects], fontsize=8)
    ax.set_ylabel("ms (log scale)")
    ax.set_title("Latency, one message in flight (p50 / p90 / p99)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")


def burst_panel(ax: Any, data: dict[str, Any]) -> None:
    subjects = names(data, "burst")
    rates = [data["burst"][n]["msgs_per_s"] for n in subjects]
    bars = ax.bar(range(len(subjects)), rates, color=[COLORS[n] for n in subjects])
    ax.bar_label(bars, labels=[f"{r:,.0f}" for r in rates], fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(subjects)), [SHORT[n] for n in subjects], fontsize=8)
    ax.set_ylabel("msgs/s (log scale)")
    counts = sorted({data["burst"][n]["n"] for n in subjects})
    ax.set_title(f"Burst throughput ({' / '.join(f'{c:,}' for c in counts)} msgs at once)")
    ax.grid(axis="y", alpha=0.3, which="both")


def blob_panel(ax: Any, data: dict[str, Any]) -> None:
    subjects = [n for n in names(data, "blobs") if n != "function"]
    sizes = sorted({int(s) for n in subjects for s in data["blobs"][n]})
    width = 0.8 / max(1, len(subjects))
    for k, name in enumerate(subjects):
        xs = [i + (k - (len(subjects) - 1) / 2) * width for i in range(len(sizes))]
        ys = [(data["blobs"][name].get(str(s)) or {}).get("mib_per_s") or 0 for s in sizes]
        ax.bar(xs, ys, width, color=COLORS[name], label=SHORT[name].replace("\n", " "))
    ax.set_xticks(range(len(sizes)), [f"{s} MiB" for s in sizes])
    ax.set_ylabel("MiB/s, both directions")
    ax.set_title("Blobs returned unchanged (function node: no copy, not shown)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def cold_panel(ax: Any, data: dict[str, Any]) -> None:
    cold = data.get("cold", {})
    rows = [
        ("hot x1\nback-to-back", (data.get("latency", {}).get("hot1") or {}).get("p50"), "hot1"),
        ("hot x1\n1 msg/s", (cold.get("hot_per_second") or {}).get("p50"), "hot1"),
        ("cold\nback-to-back", (cold.get("back_to_back") or {}).get("p50"), "cold"),
        ("cold\n1 msg/s", (cold.get("per_second") or {}).get("p50"), "cold"),
    ]
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        ax.set_axis_off()
        return
    bars = ax.bar(range(len(rows)), [r[1] for r in rows], color=[COLORS[r[2]] for r in rows])
    ax.bar_label(bars, labels=[f"{r[1]:.1f}" for r in rows], fontsize=7)
    ax.axhline(50, color="black", lw=0.8, ls="--")
    ax.text(len(rows) - 0.5, 51, "cold must: 50 ms", ha="right", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("p50 latency, ms")
    ax.set_title("Hot vs cold latency (p50)")
    ax.grid(axis="y", alpha=0.3)


def plot(data: dict[str, Any], out: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    latency_panel(axes[0][0], data)
    burst_panel(axes[0][1], data)
    blob_panel(axes[1][0], data)
    cold_panel(axes[1][1], data)
    meta = data.get("meta", {})
    machine, ver = meta.get("machine", {}), meta.get("versions", {})
    smoke = " (SMOKE: tiny counts)" if meta.get("smoke") else ""
    fig.suptitle(
        f"kernelexec in Node-RED {ver.get('node_red', '?')}{smoke}: {machine.get('cpu', '?')}, "
        f"{machine.get('cores', '?')} cores; kernelexec {ver.get('kernelexec_commit', '?')}, "
        f"{meta.get('started', '')[:16]}",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latest", default=str(HERE / "results" / "latest.json"))
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "performance.png"))
    args = parser.parse_args()
    plot(json.loads(Path(args.latest).read_text()), Path(args.out))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
