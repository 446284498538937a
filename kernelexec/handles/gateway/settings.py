"""Where a gateway is and how patiently to talk to it: :class:`GatewaySettings`.

Also the ``KERNEL_*`` variables an Enterprise Gateway's kernel launchers read
(:func:`kernel_env`), which the settings carry to every kernel start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...config import EnvConfig
from ...errors import GatewayError

__all__ = [
    "SERVER_MESSAGE_CAP",
    "GatewaySettings",
    "check_kernel_variable",
    "kernel_env",
    "with_options",
]

#: tornado's default websocket_max_message_size: what a gateway accepts from us.
SERVER_MESSAGE_CAP = 10 * 1024 * 1024


@dataclass(frozen=True)
class GatewaySettings:
    """Where the gateway is and how patiently to talk to it.

    Options other than url/token come from the query string of ``gateway_url``
    (``http://eg:8888?kernel_name=python_kubernetes&start_timeout=300``) or from
    ``KERNELEXEC_GATEWAY_<OPTION>`` environment variables, query string first.
    """

    url: str
    token: str | None = field(default=None, repr=False)  # a credential: never in logs
    kernel_name: str = "python3"
    #: seconds for a kernel to start and answer (an Enterprise Gateway on a busy
    #: Kubernetes cluster may need minutes to pull an image and schedule a pod)
    start_timeout: float = 120.0
    #: seconds for the kernelexec bootstrap of a started kernel to answer, and for the
    #: runtime's own short requests (init, code, stop); a kernel that does not is failed
    bootstrap_timeout: float = 60.0
    #: seconds the node's setup code may run (0: no limit)
    setup_timeout: float = 600.0
    #: send runtime ops as ``kernelexec_request`` when the kernel and the gateway allow it
    fast_requests: bool = True
    #: seconds to wait for the probe reply that says the gateway forwards kernelexec_request
    probe_timeout: float = 5.0
    #: seconds for each other REST call and for the WebSocket handshake
    request_timeout: float = 10.0
    #: attempts of a REST call or connection before GatewayError
    retries: int = 4
    #: first backoff in seconds; doubled after each failed attempt, with jitter
    backoff: float = 0.25
    #: seconds a lost WebSocket may take to come back before the kernel counts as dead
    reconnect_timeout: float = 10.0
    #: seconds between WebSocket pings (a silent peer is dropped after the same again)
    ping_interval: float = 10.0
    #: seconds between checks that the kernel still exists while an execute waits
    liveness_interval: float = 5.0
    #: seconds an on_stdin (context) call may take before the kernel gets an error
    stdin_timeout: float = 60.0
    nodelay: bool = True
    quickack: bool = True
    validate_cert: bool = True
    #: largest WebSocket message we send; bigger requests are staged in chunks
    max_message: int = SERVER_MESSAGE_CAP
    #: environment for the kernel (Enterprise Gateway reads KERNEL_* variables)
    kernel_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str, token: str | None = None, **overrides: Any) -> GatewaySettings:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            msg = f"gateway_url {url!r} is not valid; expected http(s)://HOST:PORT[/base]"
            raise GatewayError(msg)
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        options: dict[str, Any] = {}
        known = {f for f in cls.__dataclass_fields__ if f not in ("url", "token", "kernel_env")}
        for name in known:
            env_value = os.environ.get(f"KERNELEXEC_GATEWAY_{name.upper()}")
            if env_value is not None:
                options[name] = env_value
        for name, value in parse_qsl(parts.query):
            if name not in known:
                msg = f"gateway_url option {name!r} is unknown; known options are {sorted(known)}"
                raise GatewayError(msg)
            options[name] = value
        options.update(overrides)
        typed: dict[str, Any] = {}
        for name, value in options.items():
            typed[name] = _coerce(name, value, cls.__dataclass_fields__[name].default)
        return cls(url=base, token=token or os.environ.get("KERNELEXEC_GATEWAY_TOKEN"), **typed)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:] if self.url.startswith("http") else self.url


def with_options(url: str, **options: Any) -> str:
    """``url`` with gateway options (GatewaySettings fields) added to its query string;
    options that are None are left out (the command line's --gateway-* flags)."""
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in given]
    query += [(k, f"{v:g}" if isinstance(v, float) else str(v)) for k, v in given.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _coerce(name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        msg = f"gateway option {name}={value!r} is not valid; expected a {type(default).__name__}"
        raise GatewayError(msg) from None
    return value


def kernel_env(env: EnvConfig, node_id: str) -> dict[str, str]:
    """KERNEL_* variables Enterprise Gateway's kernel launchers understand (validated)."""
    out = {"KERNEL_USERNAME": os.environ.get("KERNEL_USERNAME", "kernelexec")}
    origin = {"KERNEL_USERNAME": "the bridge's KERNEL_USERNAME"}
    if node_id:
        out["KERNEL_KERNELEXEC_NODE"] = node_id
        origin["KERNEL_KERNELEXEC_NODE"] = "the node id"
    if env.cpu_limit:
        out["KERNEL_CPUS"] = out["KERNEL_CPUS_LIMIT"] = f"{env.cpu_limit:g}"
    if env.memory_limit:
        out["KERNEL_MEMORY"] = out["KERNEL_MEMORY_LIMIT"] = str(env.memory_limit)
        origin["KERNEL_MEMORY"] = origin["KERNEL_MEMORY_LIMIT"] = "memory_limit"
    for name, value in os.environ.items():
        if name.startswith("KERNELEXEC_KERNEL_"):  # KERNELEXEC_KERNEL_NAMESPACE=... etc.
            out["KERNEL_" + name[len("KERNELEXEC_KERNEL_") :]] = value
            origin["KERNEL_" + name[len("KERNELEXEC_KERNEL_") :]] = f"the bridge's {name}"
    for name, value in out.items():
        check_kernel_variable(name, value, origin.get(name, name))
    return out


#: characters a KERNEL_* value must not hold: Enterprise Gateway substitutes these values into
#: launch commands and Kubernetes templates (two 2026 advisories were injections through them)
_FORBIDDEN = {
    "\n": "a newline",
    "\r": "a carriage return",
    "\0": "a NUL character",
    "$": "'$'",
    "`": "a backtick",
    '"': "a double quote",
    "'": "a single quote",
}


def check_kernel_variable(name: str, value: str, origin: str = "") -> None:
    """GatewayError naming the variable when a KERNEL_* name or value is not safe to hand
    to a gateway (see :data:`_FORBIDDEN`)."""
    where = f" (from {origin})" if origin and origin != name else ""
    body = name[len("KERNEL_") :] if name.startswith("KERNEL_") else ""
    if not body or not all(c.isascii() and (c.isalnum() or c == "_") for c in body):
        msg = (
            f"gateway kernel variable {name!r}{where} is not a valid name; use KERNEL_ "
            "followed by letters, digits and underscores"
        )
        raise GatewayError(msg)
    if not isinstance(value, str):
        msg = f"gateway kernel variable {name}{where} must be a string, not {type(value).__name__}"
        raise GatewayError(msg)
    bad = [label for char, label in _FORBIDDEN.items() if char in value]
    if bad:
        msg = (
            f"gateway kernel variable {name}{where} = {value[:80]!r} contains "
            f"{', '.join(bad)}; Enterprise Gateway puts KERNEL_* values into launch commands "
            "and pod templates, so kernelexec refuses these characters: remove them"
        )
        raise GatewayError(msg)
