"""The Tornado bridge: the Python process a Node-RED runtime talks to (the socket pair it
inherits, or its WebSocket).

It owns every pool and kernel. Layers (docs/internals.md, docs/protocol.md):

    app.py         make_app, Server (listen, shut down)
    handlers.py    /healthz, /metrics, /ws   (default_handlers)
    auth.py        token mixin
    session.py     ClientSession: one connection's protocol state machine (hello, configure,
                   close, context)
    pipe.py        the node's socket pair (--node-fd): length-prefixed frames, no token
    hosts.py       which Host headers are answered (DNS rebinding)
    editor.py      the inspect frame (completion and hover in the editor)
    executions.py  one connection's execute frames: submitted to pools, one result each
    outbox.py      one connection's outgoing frames: encoding, size limit, batching per turn
    frames.py      frame parsing and validation, derived from spec.json
    registry.py    the pools by node id (PoolEntry, PoolRegistry), pool_state throttling
    metrics.py     Prometheus metrics in a private registry
    bridge.py      what the connections of one bridge share
"""

from __future__ import annotations

from .app import Server, make_app
from .bridge import Bridge, BridgeOptions

__all__ = ["Bridge", "BridgeOptions", "Server", "make_app"]
