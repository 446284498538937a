"""A kernel's environment variables: the bridge's own, without what only the bridge may hold.

Its own module, on the standard library only: ``kernelexec serve`` computes it for the kernel
template before it imports anything else (kernelexec/cli.py), and the local handle for every
kernel it starts (handles/local.py).
"""

from __future__ import annotations

import os

__all__ = ["BRIDGE_SECRETS", "kernel_environment"]

#: What the bridge holds and a kernel must not: with it, user code could drive the bridge.
BRIDGE_SECRETS = ("KERNELEXEC_TOKEN", "KERNELEXEC_GATEWAY_TOKEN")


def kernel_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A kernel's environment: the bridge's, ``extra``, without the bridge's own secrets."""
    env = {**os.environ, **(extra or {})}
    env.pop("JPY_PARENT_PID", None)
    for secret in BRIDGE_SECRETS:  # user code needs neither (it would let it drive the bridge)
        env.pop(secret, None)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no debugpy start-up chatter
    return env
