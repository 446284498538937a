"""Kernel handles: one running IPython kernel, local (jupyter_client) or on a gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import KernelHandle, LaunchSpec

__all__ = ["KernelHandle", "LaunchSpec"]


def __getattr__(name: str) -> Any:
    """``KernelHandle`` and ``LaunchSpec`` load handles/base.py when first used: the kernel
    template (``python -m kernelexec.handles.template``, spawned first thing by ``kernelexec
    serve``) imports this package and needs none of it (~20 ms of imports)."""
    if name in __all__:
        from . import base

        return getattr(base, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
