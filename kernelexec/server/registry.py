"""The bridge's pools: one :class:`PoolEntry` per node id, in one :class:`PoolRegistry`.

A node id names at most one live pool in the whole bridge (one bridge serves one Node-RED
runtime, whose node ids are unique). The connection that sent ``configure`` owns the pool:
its frames (``result``, ``send``, ``pool_state``, ``context_request``...) go to that connection,
and when that connection closes, its pools close. A second ``configure`` for the same node
id, from any connection, replaces the pool: the old one closes first (its waiting and running
messages end with POOL_CLOSED), then the new one starts.

``pool_state`` frames are sent when the state changes (starting, installing, ready, error)
and, for load (busy/total/queued), at most once per :data:`STATE_INTERVAL` seconds and only
when the numbers moved: never one frame per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..config import PoolConfig
from ..errors import ErrorObject, KernelexecError
from ..protocol import PoolState
from .frames import error_object
from .metrics import stat_value

if TYPE_CHECKING:
    from ..pool import PoolHooks

__all__ = [
    "RESULT_GRACE",
    "STATE_INTERVAL",
    "FrameSink",
    "PoolEntry",
    "PoolFactory",
    "PoolLike",
    "PoolRegistry",
    "default_pool_factory",
]

log = logging.getLogger("kernelexec.server")

#: Seconds between two load-only pool_state frames of one pool.
STATE_INTERVAL = 0.25
#: Seconds a closed pool's results get to arrive before the bridge fails the messages.
RESULT_GRACE = 1.0
#: States after which messages can be handed to the pool (or failed at once).
_SETTLED = frozenset({PoolState.READY, PoolState.ERROR, PoolState.CLOSED})


class PoolLike(Protocol):
    """What the bridge uses of a pool (docs/internals.md, "Pool API")."""

    async def start(self) -> None: ...

    async def submit(
        self, req_id: str, msg: dict[str, Any], blobs: list[Any] | None = None
    ) -> dict[str, Any]: ...

    def submit_nowait(
        self, req_id: str, msg: dict[str, Any], blobs: list[Any] | None = None
    ) -> asyncio.Future[dict[str, Any]] | None: ...

    def stats(self) -> Any: ...

    def kernels(self) -> list[dict[str, Any]]: ...

    async def ask_kernel(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class FrameSink(Protocol):
    """The connection a pool's frames go to (a :class:`.session.ClientSession`)."""

    def send(self, frame: dict[str, Any]) -> None: ...

    def send_event(self, node_id: str, event: dict[str, Any]) -> None: ...

    async def ask_context(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]: ...


PoolFactory = Callable[[PoolConfig, "PoolHooks"], PoolLike]


def default_pool_factory(config: PoolConfig, hooks: PoolHooks) -> PoolLike:
    """Make a real pool (imported lazily: the pool layer pulls in jupyter_client)."""
    from ..pool import make_pool

    pool: PoolLike = make_pool(config, hooks)
    return pool


class EntryHooks:
    """The PoolHooks of one pool: events and context go to the owner, state to the entry."""

    def __init__(self, entry: PoolEntry) -> None:
        self._entry = entry

    def on_event(self, node_id: str, event: dict[str, Any]) -> None:
        self._entry.owner.send_event(self._entry.node_id, event)

    async def on_context(self, node_id: str, request: dict[str, Any]) -> dict[str, Any]:
        return await self._entry.owner.ask_context(self._entry.node_id, request)

    def on_state(self, node_id: str, state: dict[str, Any]) -> None:
        self._entry.on_pool_state(state)


def _kernel_uid(config: PoolConfig) -> dict[str, int]:
    user = config.env.user
    if not user:
        return {}
    from ..sandbox import user_uid

    try:
        return {"kernel_uid": user_uid(user)}
    except (KeyError, ValueError):  # no such user: the pool's start fails and says so
        return {}


class PoolEntry:
    """One node's pool as the bridge sees it: config, owner, state, start/close tasks."""

    def __init__(self, config: PoolConfig, owner: FrameSink, registry: PoolRegistry) -> None:
        self.node_id = config.node_id
        self.config = config
        self.owner = owner
        self.registry = registry
        self.pool: PoolLike | None = None
        self.state = PoolState.STARTING
        self.error: ErrorObject | None = None
        self.detail = ""
        #: Set once the pool is ready or failed to start: messages wait for it.
        self.settled = asyncio.Event()
        #: The error every message gets when the pool could not start.
        self.failure: ErrorObject | None = None
        self.waiting = 0
        #: The session's tasks or result futures of this pool's messages (failed, i.e.
        #: cancelled, if the pool closes first).
        self.running: set[asyncio.Future[Any]] = set()
        self.latency = registry.latency_child(self.node_id)
        self._last_sent: tuple[Any, ...] | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        #: {"kernel_uid": uid} when the kernels run as env.user: a root reader (the Node-RED
        #: node) then accepts their output files, owned by that uid.
        self._kernel_uid = _kernel_uid(config)

    # -- state frames -------------------------------------------------------------------

    def stats(self) -> Any:
        return self.pool.stats() if self.pool is not None else None

    def counts(self) -> dict[str, int]:
        """The pool's numbers for metrics; ``queued`` includes messages waiting for the start."""
        stats = self.stats()
        names = ("busy", "total", "queued", "messages", "errors", "timeouts", "restarts")
        counts = {name: stat_value(stats, name) for name in names}
        counts["queued"] += self.waiting
        return counts

    def state_frame(self) -> dict[str, Any]:
        stats = self.stats()
        return {
            "type": "pool_state",
            "node_id": self.node_id,
            "state": self.state,
            "busy": stat_value(stats, "busy"),
            "total": stat_value(stats, "total"),
            "queued": stat_value(stats, "queued") + self.waiting,
            "starting": stat_value(stats, "starting"),
            "error": self.error,
            "detail": self.detail,
            **self._kernel_uid,
        }

    def send_state(self) -> None:
        """Send pool_state unless it would repeat the last one sent."""
        if self._close_task is not None:
            return
        frame = self.state_frame()
        error = frame["error"] or {}
        key = (
            frame["state"], frame["busy"], frame["total"], frame["queued"], frame["starting"],
            frame["detail"], error.get("code"), error.get("message"),
        )  # fmt: skip
        if key == self._last_sent:
            return
        self._last_sent = key
        self.owner.send(frame)

    @property
    def load_report_pending(self) -> bool:
        """A coalesced load report is scheduled but not sent yet (tests wait on this)."""
        return self._flush is not None

    def load_changed(self) -> None:
        """Busy/queued may have moved: report it within STATE_INTERVAL (coalesced)."""
        if self._flush is None and self._close_task is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(STATE_INTERVAL, self._flush_load)

    def _flush_load(self) -> None:
        self._flush = None
        self.send_state()

    def set_state(self, state: PoolState, *, error: ErrorObject | None = None) -> None:
        self.state, self.error = state, error
        if state in _SETTLED:
            self.settled.set()
        self.send_state()

    def on_pool_state(self, state: dict[str, Any]) -> None:
        """PoolHooks.on_state: the pool reports a state or load change."""
        if self._close_task is not None:
            return
        self.detail = str(state.get("detail") or "")
        new_state = state.get("state")
        changed = isinstance(new_state, str) and new_state != self.state
        if changed and new_state != PoolState.CLOSED:
            if new_state == PoolState.READY:
                self.failure = None
            self.set_state(PoolState(new_state), error=state.get("error"))
        elif new_state == PoolState.READY and not state.get("starting"):
            self.send_state()  # the last kernel is up: said at once, not with the load
        else:
            self.load_changed()

    # -- life cycle ---------------------------------------------------------------------

    def begin(self, previous: PoolEntry | None) -> None:
        self.send_state()
        self._start_task = asyncio.ensure_future(self._start(previous))

    def begin_failed(self, previous: PoolEntry | None, error: ErrorObject) -> None:
        """No pool (bad config): every message gets ``error``; the previous pool closes."""
        self.failure = error
        self.set_state(PoolState.ERROR, error=error)
        if previous is not None:
            previous.close()

    async def _start(self, previous: PoolEntry | None) -> None:
        if previous is not None:
            await previous.close()
        try:
            self.pool = self.registry.factory(self.config, EntryHooks(self))
            await self.pool.start()
        except KernelexecError as exc:
            if self.pool is None:
                await self._fail(exc.to_dict())
            else:  # the pool retries a failed setup; meanwhile it refuses messages
                self.set_state(PoolState.ERROR, error=exc.to_dict())
        except Exception as exc:
            log.exception("Pool of node %s failed to start", self.node_id)
            message = f"the pool of node {self.node_id} failed to start: {exc!r}"
            await self._fail(error_object("INTERNAL", message, type(exc).__name__))
        else:
            if self.state in (PoolState.STARTING, PoolState.INSTALLING):
                self.set_state(PoolState.READY)
            self.settled.set()

    async def _fail(self, error: ErrorObject) -> None:
        self.failure = error
        self.set_state(PoolState.ERROR, error=error)
        pool, self.pool = self.pool, None
        if pool is not None:
            await self.registry.close_pool(self.node_id, pool)

    def close(self) -> Awaitable[None]:
        """Close the pool (idempotent); waiting and running messages end with POOL_CLOSED."""
        if self._close_task is None:
            if self._flush is not None:
                self._flush.cancel()
                self._flush = None
            self._close_task = asyncio.ensure_future(self._close())
        return asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self.state = PoolState.CLOSED
        self.failure = self.failure or error_object(
            "POOL_CLOSED", f"the pool of node {self.node_id} was closed"
        )
        self.settled.set()
        start = self._start_task
        if start is not None and not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        pool, self.pool = self.pool, None
        if pool is not None:
            await self.registry.close_pool(self.node_id, pool)
        if self.running:  # results of the closed pool arrive now; fail what is left
            _, pending = await asyncio.wait(list(self.running), timeout=RESULT_GRACE)
            for task in pending:
                task.cancel()


class PoolRegistry:
    """Every pool of the bridge, by node id."""

    def __init__(
        self,
        factory: PoolFactory,
        *,
        latency: Any = None,
        close_timeout: float = 20.0,
    ) -> None:
        self.factory = factory
        self._latency = latency
        self.close_timeout = close_timeout
        self._entries: dict[str, PoolEntry] = {}
        #: Removed entries whose pool is still closing, by node id.
        self._closing: dict[str, PoolEntry] = {}

    def __iter__(self) -> Iterator[PoolEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, node_id: str) -> PoolEntry | None:
        return self._entries.get(node_id)

    def latency_child(self, node_id: str) -> Any:
        return self._latency.labels(node_id) if self._latency is not None else None

    def _previous(self, node_id: str) -> PoolEntry | None:
        """The node's current pool, or the one still closing (the new one starts after it)."""
        return self._entries.get(node_id) or self._closing.get(node_id)

    def configure(self, config: PoolConfig, owner: FrameSink) -> PoolEntry:
        """Create the node's pool, replacing (closing first) the one it had."""
        previous = self._previous(config.node_id)
        entry = PoolEntry(config, owner, self)
        self._entries[config.node_id] = entry
        entry.begin(previous)
        return entry

    def configure_failed(self, node_id: str, owner: FrameSink, error: ErrorObject) -> PoolEntry:
        """Replace the node's pool by a failed entry (its config was refused)."""
        previous = self._previous(node_id)
        entry = PoolEntry(PoolConfig(node_id=node_id), owner, self)
        self._entries[node_id] = entry
        entry.begin_failed(previous, error)
        return entry

    async def remove(self, entry: PoolEntry) -> None:
        """Close one entry and forget it (unless a newer pool took its node id)."""
        if self._entries.get(entry.node_id) is entry:
            del self._entries[entry.node_id]
            self._closing[entry.node_id] = entry
        try:
            await entry.close()
        finally:
            if self._closing.get(entry.node_id) is entry:
                del self._closing[entry.node_id]
        if entry.node_id not in self._entries and self._latency is not None:
            with contextlib.suppress(KeyError):
                self._latency.remove(entry.node_id)

    async def remove_owned_by(self, owner: FrameSink) -> None:
        await asyncio.gather(*(self.remove(e) for e in self if e.owner is owner))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.remove(e) for e in self))

    async def close_pool(self, node_id: str, pool: PoolLike) -> None:
        """pool.close() with a deadline; past it, kill the pool's kernels (no process left)."""
        try:
            await asyncio.wait_for(pool.close(), self.close_timeout)
        except Exception:
            log.exception("Closing the pool of node %s failed; killing its kernels", node_id)
            _kill_kernels(pool)


def _kill_kernels(pool: PoolLike) -> None:
    with contextlib.suppress(Exception):
        for kernel in pool.kernels():
            pid = kernel.get("pid")
            if isinstance(pid, int) and pid > 0:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
