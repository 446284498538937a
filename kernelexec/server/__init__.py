"""The Tornado bridge: the Python process a Node-RED runtime talks to over a WebSocket.

It owns every pool and kernel. Layers (docs/internals.md, docs/protocol.md):

    app.py         make_app, Server (listen, shut down)
    handlers.py    /healthz, /metrics, /ws   (default_handlers)
    auth.py        token mixin
    session.py     one connection's protocol state machine: hello, configure, close, context
    executions.py  one connection's execute frames: submitted to pools, one result each
    outbox.py      one connection's outgoing frames: encoding, size limit, batching per turn
    frames.py      frame parsing and validation, derived from spec.json
    pools.py       the pools by node id, pool_state throttling
    metrics.py     Prometheus metrics in a private registry
    bridge.py      what the connections of one bridge share
"""

from __future__ import annotations

from .app import Server, make_app
from .bridge import Bridge, BridgeOptions

__all__ = ["Bridge", "BridgeOptions", "Server", "make_app"]
