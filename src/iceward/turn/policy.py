"""Peer policy: which peer addresses a relay may talk to. Safe by default.

An open TURN relay is a proxy into the operator's own network: loopback admin ports, the cloud
metadata service at 169.254.169.254, private subnets. Every internal, special-purpose or reserved
range is refused unless opened on purpose with an allow rule, and addresses are normalised first
so IPv4 hidden inside IPv6 (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::``, 6to4 ``2002:``) is judged
as the IPv4 address it reaches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: (network, reason) refused by default, most specific first so the reason names the real risk.
DEFAULT_DENIED: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "cloud metadata service"),
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private network (RFC 1918)"),
    ("172.16.0.0/12", "private network (RFC 1918)"),
    ("192.168.0.0/16", "private network (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("198.18.0.0/15", "benchmarking network"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (and broadcast)"),
    ("::/128", "unspecified address"),
    ("::1/128", "loopback"),
    ("fc00::/7", "unique local address (ULA)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
    ("100::/64", "discard-only prefix"),
)

#: Ranges no allow rule can open: relaying there is never meaningful.
NEVER_ALLOWED: tuple[str, ...] = ("0.0.0.0/8", "::/128")

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def normalise(ip: IPAddress) -> IPAddress:
    """The address a packet to ``ip`` really reaches: IPv4 embedded in IPv6 becomes IPv4."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    reason: str


class PeerPolicy:
    """Decides whether an allocation may relay to a peer IP; refusals carry a reason to log."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        use_default_denied: bool = True,
    ) -> None:
        never = [ipaddress.ip_network(n) for n in NEVER_ALLOWED]
        self._allow: list[IPNetwork] = []
        for text in allow:
            net = ipaddress.ip_network(text, strict=False)
            if any(net.version == n.version and net.overlaps(n) for n in never):
                raise ValueError(
                    f"{text} overlaps a range that can never be opened (0.0.0.0/8, ::)"
                )
            self._allow.append(net)
        self._deny: list[tuple[IPNetwork, str]] = [
            (ipaddress.ip_network(n, strict=False), "denied by configuration") for n in deny
        ]
        if use_default_denied:
            self._deny += [(ipaddress.ip_network(n), why) for n, why in DEFAULT_DENIED]
        self._never = never
        self._cache: dict[str, PolicyDecision] = {}

    def check(self, host: str) -> PolicyDecision:
        """Judge a peer IP given as text; the answer is cached per address."""
        cached = self._cache.get(host)
        if cached is not None:
            return cached
        decision = self._decide(host)
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[host] = decision
        return decision

    def _decide(self, host: str) -> PolicyDecision:
        try:
            ip = normalise(ipaddress.ip_address(host.split("%", 1)[0]))
        except ValueError:
            return PolicyDecision(False, "not an IP address")
        for net in self._never:
            if ip.version == net.version and ip in net:
                return PolicyDecision(False, f"{net} is never relayed to")
        for net in self._allow:
            if ip.version == net.version and ip in net:
                return PolicyDecision(True, f"allowed by {net}")
        for net, why in self._deny:
            if ip.version == net.version and ip in net:
                return PolicyDecision(False, f"{why} ({net})")
        return PolicyDecision(True, "public address")
