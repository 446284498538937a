"""What a notebook or script says about a node: its parts, its ``%%node`` options, errors."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError

__all__ = ["PARTS", "NodeCode", "NodeOptions", "NotebookError"]

#: The tags that mark a cell as part of a node (others are ignored).
PARTS = ("setup", "node", "stop", "sample")


class NotebookError(ConfigError):
    """A notebook or script does not describe a node; the message names the cell."""

    def __init__(self, message: str, *, cell_index: int | None = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index


@dataclass(frozen=True)
class NodeCode:
    """The parts of a node found in a notebook or script.

    ``code`` is the message code (``func`` of the Node-RED node), ``setup``/``stop`` its
    ``initialize``/``finalize``. ``sample`` is the sample message (None: no sample cell).
    ``name``/``outputs`` come from the ``%%node`` line (None: not given there).
    """

    setup: str = ""
    code: str = "return msg"
    stop: str = ""
    sample: dict[str, Any] | None = None
    name: str | None = None
    outputs: int | None = None

    def changed_parts(self, other: NodeCode) -> frozenset[str]:
        """Names of the fields that differ between ``self`` and ``other``."""
        return frozenset(
            f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)
        )


@dataclass(frozen=True)
class NodeOptions:
    """Options of a ``%%node`` line (the same for the magic and for export)."""

    msg: str = "msg"
    outputs: int | None = None
    name: str | None = None
    timeout: float = 0.0
    no_raise: bool = False
    quiet: bool = False
