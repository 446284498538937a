"""kernelexec: run Python code on Node-RED messages, on managed IPython kernels.

This module stays import-light (not even typing): it is imported inside every kernel, and
first thing by ``kernelexec serve``, which spawns the kernel template before anything else.
``%load_ext kernelexec`` loads the notebook magics (``%%node``, ``%%setup``, ``%%stop``) from
:mod:`kernelexec.magics`.
"""

from __future__ import annotations

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: object) -> None:
    """Called by ``%load_ext kernelexec``: register the notebook magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """Called by ``%unload_ext kernelexec``."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)
