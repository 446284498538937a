"""kernelexec: run Python code on Node-RED messages, on managed IPython kernels.

This module stays import-light: it is imported inside every kernel. ``%load_ext kernelexec``
loads the notebook magics (``%%node``, ``%%setup``, ``%%stop``) from :mod:`kernelexec.magics`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext kernelexec``: register the notebook magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext kernelexec``."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)
