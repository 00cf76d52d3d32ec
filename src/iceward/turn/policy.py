"""Peer policy: which peer addresses a relay may talk to. Safe by default.

An open TURN relay is a proxy into the operator's own network: loopback admin ports, the cloud
metadata service at 169.254.169.254, private subnets. Every internal, special-purpose or reserved
range is refused unless opened on purpose with an allow rule, and addresses are normalised first
so IPv4 hidden inside IPv6 (``::ffff:127.0.0.1``, SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::``
and the local-use ``64:ff9b:1::/48``, 6to4 ``2002:``, Teredo ``2001::/32``) is judged as the IPv4
address it reaches.

The server's own listening addresses are never peers, whatever the rules say: relaying to them
would let a client nest an allocation inside its own relay.
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
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

#: RFC 6052 2.2: where the IPv4 address sits in an IPv4-embedded IPv6 address, per prefix length
#: (byte slices of the 16; byte 8, the "u" octet, is always skipped).
_RFC6052_SLICES: dict[int, tuple[slice, ...]] = {
    48: (slice(6, 8), slice(9, 11)),
    56: (slice(7, 8), slice(9, 12)),
    64: (slice(9, 13),),
    96: (slice(12, 16),),
}


def _v4(raw: bytes) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(raw)


def reached(ip: IPAddress) -> tuple[IPAddress, ...]:
    """Every address a packet to ``ip`` may really reach, the first the likeliest: IPv4 embedded
    in IPv6 becomes IPv4. A local-use NAT64 prefix (64:ff9b:1::/48) may be any length from /48
    to /96, so each embedding it allows is returned (the peer is refused if any is); a Teredo
    address yields its client (obfuscated in the low 32 bits) and its server."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (ip,)
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    raw = ip.packed
    if ip in _NAT64 or ip in _SIIT:
        return (_v4(raw[12:]),)
    if ip in _NAT64_LOCAL:
        # An embedding that lands in 0.0.0.0/8 is no address a translator would reach.
        found = [_v4(b"".join(raw[part] for part in parts)) for parts in _RFC6052_SLICES.values()]
        return tuple(v4 for v4 in found if v4.packed[0] != 0) or (ip,)
    if ip in _SIX_TO_FOUR:
        return (_v4(raw[2:6]),)
    if ip in _TEREDO:
        return (_v4(bytes(b ^ 0xFF for b in raw[12:])), _v4(raw[4:8]))
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return (_v4(raw[12:]),)
    return (ip,)


def normalise(ip: IPAddress) -> IPAddress:
    """The address a packet to ``ip`` most likely reaches (see :func:`reached`)."""
    return reached(ip)[0]


_DEFAULT_DENIED_NETS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in DEFAULT_DENIED
)


def classify(ip: IPAddress | str) -> str | None:
    """Why ``ip`` is internal, special-purpose or reserved (the :data:`DEFAULT_DENIED` reason of
    the first address it may reach, see :func:`reached`), or None for a public address. Text may
    carry an IPv6 zone (``fe80::1%eth0``); text that is no IP address raises ValueError."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])
    for addr in reached(ip):
        for net, why in _DEFAULT_DENIED_NETS:
            if addr.version == net.version and addr in net:
                return why
    return None


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
        self._cache: dict[str, tuple[PolicyDecision, bool]] = {}
        self._own_nets: list[IPNetwork] = []
        self._own_ports: frozenset[int] = frozenset()

    def set_own_addresses(self, networks: Iterable[str], ports: Iterable[int]) -> None:
        """The server's own listening IPs (or networks, for a wildcard listener) and ports: a peer
        on one of those ports at one of those IPs is refused whatever the allow rules say."""
        self._own_nets = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._own_ports = frozenset(p for p in ports if p)
        self._cache.clear()

    def check(self, host: str, port: int | None = None) -> PolicyDecision:
        """Judge a peer IP given as text (and, with ``port``, the whole transport address); the
        judgement of the IP is cached per address."""
        cached = self._cache.get(host)
        if cached is None:
            cached = self._decide(host)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[host] = cached
        decision, own_ip = cached
        if own_ip and port in self._own_ports:
            return _OWN_ADDRESS
        return decision

    def _decide(self, host: str) -> tuple[PolicyDecision, bool]:
        """The decision for an IP, and whether it is one of the server's own."""
        try:
            ips = reached(ipaddress.ip_address(host.split("%", 1)[0]))
        except ValueError:
            return PolicyDecision(False, "not an IP address"), False
        own = any(ip.version == n.version and ip in n for ip in ips for n in self._own_nets)
        decisions = [self._judge(ip) for ip in ips]
        refused = [d for d in decisions if not d.allowed]
        return (refused[0] if refused else decisions[0]), own

    def _judge(self, ip: IPAddress) -> PolicyDecision:
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


_OWN_ADDRESS = PolicyDecision(False, "the server's own address")
