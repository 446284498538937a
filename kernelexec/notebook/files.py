"""Notebook files: nbformat, imported only when needed; read and write v4 notebooks."""

from __future__ import annotations

import importlib
import os
from typing import Any

from .model import NotebookError

__all__ = ["nbformat_module", "read_notebook", "write_notebook"]


def nbformat_module() -> Any:
    """nbformat, imported when needed (it is untyped, and heavy for the kernel side)."""
    return importlib.import_module("nbformat")


def read_notebook(path: str | os.PathLike[str]) -> Any:
    """Read a notebook as nbformat v4; unreadable files raise :class:`NotebookError`."""
    try:
        return nbformat_module().read(os.fspath(path), as_version=4)
    except (OSError, ValueError) as exc:
        msg = f"{os.fspath(path)}: cannot read the notebook: {str(exc)[:200]}"
        raise NotebookError(msg) from None


def write_notebook(nb: Any, path: str | os.PathLike[str]) -> None:
    """Validate and write a v4 notebook."""
    nbformat_module().write(nb, os.fspath(path))
