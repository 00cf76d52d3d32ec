"""Which hosts peers elsewhere cannot send to: one answer for the doctor, the analyzer and the
test page, from the server's own peer-policy table (:data:`iceward.turn.policy.DEFAULT_DENIED`,
IPv4 hidden in IPv6 unwrapped).

Documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) count as public: they stand for the
internet in examples and labs.
"""

from __future__ import annotations

from iceward.turn.policy import classify

#: Host names that never leave the machine.
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def internal_reason(host: str | None) -> str | None:
    """Why nobody elsewhere can reach ``host`` (an IP address, bracketed or not, or a name), or
    None when it is public or a name that DNS may resolve to anything."""
    if not host:
        return None
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return "loopback"
    if name.endswith(".local"):
        return "mDNS name (the local network only)"
    try:
        return classify(name)
    except ValueError:
        return None


def is_internal(host: str | None) -> bool:
    """Loopback, private, shared (CGNAT), link-local, unspecified, multicast or reserved."""
    return internal_reason(host) is not None
