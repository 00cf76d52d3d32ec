"""Who the client of an HTTP request is: the one decision every rate limit and address check uses.

The TCP peer is the client, unless the peer is a proxy the operator trusts (``--trusted-proxy``
CIDR): then ``X-Forwarded-For`` is believed, read from the right (each trusted proxy appends the
address it received from), and the client is the right-most address that is not itself a trusted
proxy. From any other peer the header is ignored: anyone can write it. A trusted proxy's
``X-Forwarded-Proto`` likewise sets the scheme of the links the API answers with.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ClientAddress:
    """``client_address(scope)``: the address rate limits and address checks key on."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def _trusted(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.trusted)

    def _peer(self, scope: Scope) -> tuple[str, IPAddress | None, bool]:
        """(peer as given, its address, whether it is a trusted proxy)."""
        client = scope.get("client")
        peer = str(client[0]) if client else ""
        peer_ip = _ip(peer)
        return peer, peer_ip, peer_ip is not None and self._trusted(peer_ip)

    def forwarded_scheme(self, scope: Scope) -> str | None:
        """``X-Forwarded-Proto`` (http or https) of a trusted proxy, so links the API builds
        name the scheme the client used; None from any other peer."""
        if not self.trusted or not self._peer(scope)[2]:
            return None
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip().lower()
                return proto if proto in ("http", "https") else None
        return None

    def __call__(self, scope: Scope) -> str:
        peer, peer_ip, trusted = self._peer(scope)
        if peer_ip is None or not trusted:
            return str(peer_ip) if peer_ip is not None else (peer or "unknown")
        forwarded: list[str] = []
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                forwarded += value.decode("latin-1").split(",")
        client_ip = peer_ip
        for hop in reversed(forwarded):
            ip = _ip(hop)
            if ip is None:  # garbage the trusted proxy passed on: go no further than it
                break
            client_ip = ip
            if not self._trusted(ip):
                break
        return str(client_ip)
