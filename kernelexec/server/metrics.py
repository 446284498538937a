"""Prometheus metrics of one bridge, in a private registry (two bridges in a process never mix).

Per pool (label ``node_id``), read from ``pool.stats()`` when scraped, so the message path
pays nothing for them:

    kernelexec_messages_total, kernelexec_errors_total, kernelexec_timeouts_total,
    kernelexec_kernel_restarts_total       counters
    kernelexec_queue_depth, kernelexec_busy_workers, kernelexec_workers   gauges
    kernelexec_pool_ready                  1 when the pool is ready, else 0

Observed by the bridge on each result: ``kernelexec_execution_seconds`` (histogram of the
kernel-side execution time). Bridge-wide: ``kernelexec_connections``, ``kernelexec_pools``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["CONTENT_TYPE", "BridgeMetrics", "stat_value"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, float("inf"),
)  # fmt: skip

_COUNTERS = (
    ("messages", "messages", "Messages the pool answered"),
    ("errors", "errors", "Messages whose result carried an error"),
    ("timeouts", "timeouts", "Messages interrupted by the node's timeout"),
    ("kernel_restarts", "restarts", "Kernel restarts (crash, timeout backstop)"),
)
_GAUGES = (
    ("queue_depth", "queued", "Messages waiting for a free worker"),
    ("busy_workers", "busy", "Workers running a message"),
    ("workers", "total", "Workers of the pool"),
)


def stat_value(stats: Any, name: str) -> int:
    """One figure of a pool's stats (a PoolStats, or a mapping of the same names); 0 if absent."""
    value = getattr(stats, name, None)
    if value is None and isinstance(stats, dict):
        value = stats.get(name)
    return int(value or 0)


class _PoolCollector:
    """Reads every pool's stats at scrape time."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, Any, bool]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        counters = {
            key: CounterMetricFamily(f"kernelexec_{name}", doc, labels=["node_id"])
            for name, key, doc in _COUNTERS
        }
        gauges = {
            key: GaugeMetricFamily(f"kernelexec_{name}", doc, labels=["node_id"])
            for name, key, doc in _GAUGES
        }
        ready = GaugeMetricFamily(
            "kernelexec_pool_ready", "1 when the pool is ready", labels=["node_id"]
        )
        for node_id, stats, is_ready in self._source():
            for key, counter in counters.items():
                counter.add_metric([node_id], stat_value(stats, key))
            for key, gauge in gauges.items():
                gauge.add_metric([node_id], stat_value(stats, key))
            ready.add_metric([node_id], 1.0 if is_ready else 0.0)
        yield from counters.values()
        yield from gauges.values()
        yield ready


class _BridgeCollector:
    def __init__(self, source: Callable[[], tuple[int, int]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        connections, pools = self._source()
        yield GaugeMetricFamily("kernelexec_connections", "Open WebSocket connections", connections)
        yield GaugeMetricFamily("kernelexec_pools", "Pools (configured nodes)", pools)


class BridgeMetrics:
    """The bridge's metrics; ``render()`` gives the Prometheus text exposition."""

    def __init__(
        self,
        pools: Callable[[], Iterable[tuple[str, Any, bool]]],
        counts: Callable[[], tuple[int, int]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "kernelexec_execution_seconds",
            "Execution time of one message in the kernel",
            ["node_id"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pools))
        self.registry.register(_BridgeCollector(counts))

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
