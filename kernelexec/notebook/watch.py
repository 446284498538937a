"""The live link: poll a notebook or node script and report which parts of its node changed
(see docs/notebooks.md, "Live link")."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

from .model import NodeCode, NotebookError
from .reading import load_node_code

#: The package's logger: watch_notebook's docstring names it.
log = logging.getLogger("kernelexec.notebook")

__all__ = ["ChangeCallback", "NotebookChange", "watch_notebook"]


@dataclass(frozen=True)
class NotebookChange:
    """What :func:`watch_notebook` saw. ``changed`` names the parts that differ.

    ``action`` says what a pool should do: ``"code"`` (only message code changed: send the
    runtime op ``code`` to each kernel, setup state kept), ``"restart"`` (setup changed:
    restart the kernels so the new setup runs), ``"stop"`` (only the stop code changed:
    remember it for close), ``"none"`` (only name, outputs or sample changed, or the file is
    valid again after an error with the running code: clear the error; a node's outputs are
    its wiring in the editor, not the notebook's), ``"error"`` (the file is not a valid node
    now: keep the running code, show ``error``).
    """

    path: str
    old: NodeCode | None
    new: NodeCode | None
    changed: frozenset[str]
    error: NotebookError | None = None

    @property
    def action(self) -> str:
        if self.error is not None or self.new is None:
            return "error"
        if self.old is None or "setup" in self.changed:
            return "restart"
        if "code" in self.changed:
            return "code"
        return "stop" if "stop" in self.changed else "none"


ChangeCallback = Callable[[NotebookChange], "Awaitable[None] | None"]


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _load_change(path: str, current: NodeCode | None, failed: bool) -> NotebookChange | None:
    """The change to report after the file changed on disk (None: nothing to report)."""
    try:
        new = load_node_code(path)
    except NotebookError as exc:
        return NotebookChange(path, current, None, frozenset(), exc)
    if current is None:
        return NotebookChange(path, None, new, frozenset(f.name for f in fields(new)))
    if new == current and not failed:
        return None  # saved without a change to the node (e.g. new cell outputs)
    return NotebookChange(path, current, new, new.changed_parts(current))


async def _poll(
    path: str,
    on_change: ChangeCallback,
    current: NodeCode | None,
    interval: float,
    loaded: tuple[int, int] | None,
) -> None:
    seen, failed = loaded, False
    while True:
        await asyncio.sleep(interval)
        sig = _signature(path)
        stable, seen = sig == seen, sig
        if sig == loaded or not stable:
            continue  # unchanged, or still being written: look again next time
        loaded = sig
        change = _load_change(path, current, failed)
        if change is None:
            log.debug("%s was saved without a change to its node", path)
            continue
        failed = change.error is not None
        current = change.new or current
        try:
            result = on_change(change)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the watcher outlives a failing callback
            log.exception("The notebook change callback failed for %s", path)


def watch_notebook(
    path: str | os.PathLike[str],
    on_change: ChangeCallback,
    *,
    initial: NodeCode | None = None,
    interval: float = 0.5,
) -> asyncio.Task[None]:
    """Poll ``path`` every ``interval`` seconds; call ``on_change`` when its node changes.

    Must be called with a running event loop; cancel the returned task to stop watching.
    ``initial`` is the code the caller is running now (default: the file's code at the time
    of the call). A change is reported once the file's mtime and size have been stable for
    one interval, so a half-written file is not read. ``on_change`` may be a coroutine
    function; it is awaited before the next poll. An exception in it is logged
    (logger ``kernelexec.notebook``) and watching goes on.
    """
    where = os.fspath(path)
    signature = _signature(where)  # now, not when the task first runs
    if initial is None:
        with contextlib.suppress(NotebookError):
            initial = load_node_code(where)
    return asyncio.get_running_loop().create_task(
        _poll(where, on_change, initial, interval, signature), name=f"watch_notebook {where}"
    )
