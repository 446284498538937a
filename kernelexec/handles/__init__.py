"""Kernel handles: one running IPython kernel, local (jupyter_client) or on a gateway."""

from .base import KernelHandle, LaunchSpec

__all__ = ["KernelHandle", "LaunchSpec"]
