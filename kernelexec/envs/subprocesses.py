"""Running tools (interpreters, uv, pip) without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Sequence

__all__ = ["ANSI", "Progress", "run", "tail"]

#: Reports a step to the node's status (and the log), one line at a time.
Progress = Callable[[str], None]

#: Terminal escapes, removed from tool output.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def run(
    argv: Sequence[str], *, on_line: Callable[[str], None] | None = None, timeout: float = 0
) -> tuple[int, list[str]]:
    """Run argv (no shell) without blocking the loop; (exit code, output lines)."""
    env = {**os.environ, "NO_COLOR": "1", "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    except OSError as exc:
        return 127, [f"cannot run {argv[0]}: {exc.strerror or exc}"]
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
            lines.append(line)
            if on_line is not None:
                on_line(line)

    try:
        await asyncio.wait_for(pump(), timeout or None)
        return await proc.wait(), lines
    except (asyncio.TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


def tail(lines: Sequence[str], count: int = 15) -> str:
    """The last ``count`` non-blank lines, for an error message."""
    kept = [line for line in lines if line.strip()]
    return "\n".join(kept[-count:])
