"""Which ``Host`` headers the bridge answers (DNS rebinding).

A web page on ``evil.example`` whose name the attacker re-points at 127.0.0.1 reaches the
bridge from the victim's browser with ``Host: evil.example:PORT``. The bridge answers only a
loopback name (``127.0.0.1``, ``localhost``, ``[::1]``, any 127/8 address), the address it
listens on (``--allow-remote``), or, when it listens on every interface (``0.0.0.0``/``::``),
any IP literal: an IP address cannot be re-pointed, a name can. The port, when the header
has one, must be the bridge's own.
"""

from __future__ import annotations

import ipaddress

__all__ = ["HostPolicy", "split_host"]

_WILDCARDS = ("0.0.0.0", "::", "")


def split_host(header: str) -> tuple[str, int | None] | None:
    """``("name", port)`` of a Host header (``[v6]:port`` too); None when malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, sep, rest = header[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = header.partition(":") if header.count(":") <= 1 else (header, "", "")
    if not name:
        return None
    if not port_text:
        return name, None
    if not port_text.isdigit() or len(port_text) > 5:
        return None
    return name, int(port_text)


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """The Host headers of one bridge listening on ``bind_host``:``port``."""

    def __init__(self, bind_host: str, port: int = 0) -> None:
        self.bind_host = bind_host.strip("[]").lower()
        self.port = port

    def allows(self, header: str) -> bool:
        parsed = split_host(header)
        if parsed is None:
            return False
        name, port = parsed
        if port is not None and self.port and port != self.port:
            return False
        if name == "localhost" or name == self.bind_host:
            return True
        address = _ip(name)
        if address is None:
            return False
        return address.is_loopback or self.bind_host in _WILDCARDS

    def refusal(self, header: str) -> str:
        """Why ``header`` is refused, for the 403 answer."""
        return (
            f"Host header {header[:100]!r} is not this bridge's address: it answers only "
            f"127.0.0.1, localhost or [::1] (port {self.port}) or the address given with "
            "--host/--allow-remote (a page on another name may be a DNS-rebinding attack)"
        )
