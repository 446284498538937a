"""State shared by every connection of one bridge: options, pools, metrics, sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ..protocol import PoolState, load_spec
from .metrics import BridgeMetrics
from .registry import PoolFactory, PoolRegistry, default_pool_factory

__all__ = ["Bridge", "BridgeOptions", "blob_dir", "server_name", "sweep_blobs"]

log = logging.getLogger("kernelexec.server")


def server_name() -> str:
    try:
        version = metadata.version("kernelexec")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"kernelexec/{version}"


def blob_dir() -> str:
    """Where blob files live (kernelexec.kernel.blobs when it is there, else /dev/shm or tmp)."""
    with contextlib.suppress(ImportError, AttributeError):
        from ..kernel import blobs

        return str(blobs.blob_dir())
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def sweep_blobs() -> None:
    """Remove blob files whose writer is dead (e.g. outputs of kernels that were closed)."""
    try:
        from ..kernel import blobs
    except ImportError:
        return
    try:
        blobs.sweep_orphans()
    except Exception:
        log.exception("Removing orphan blob files failed")


@dataclass(frozen=True)
class BridgeOptions:
    """Knobs of one bridge (the CLI sets them; tests shrink them)."""

    #: Largest client frame accepted (bytes); larger ones get FRAME_TOO_LARGE.
    max_frame_bytes: int = int(load_spec()["max_frame_bytes"])
    #: Seconds a context_request waits for Node-RED's context_reply.
    context_timeout: float = 30.0
    #: Seconds a pool gets to close before its kernels are killed.
    close_timeout: float = 20.0
    #: Seconds between WebSocket pings (0 = none); a dead peer is noticed within 3x that.
    ping_interval: float = 0.0
    #: Default Jupyter gateway for pools whose environment names none (scale-out).
    gateway_url: str | None = None
    gateway_token: str | None = None


@dataclass
class Bridge:
    """One bridge: what every handler and session of its application shares."""

    options: BridgeOptions = field(default_factory=BridgeOptions)
    pool_factory: PoolFactory = default_pool_factory
    sessions: set[Any] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closing: str | None = None
    server: str = field(default_factory=server_name)
    blob_dir: str = field(default_factory=blob_dir)

    def __post_init__(self) -> None:
        self.metrics = BridgeMetrics(self._pool_stats, self._counts)
        self.registry = PoolRegistry(
            self.pool_factory,
            latency=self.metrics.latency,
            close_timeout=self.options.close_timeout,
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task the bridge waits for when it stops."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _pool_stats(self) -> list[tuple[str, Any, bool]]:
        return [(e.node_id, e.counts(), e.state is PoolState.READY) for e in self.registry]

    def _counts(self) -> tuple[int, int]:
        return len(self.sessions), len(self.registry)
