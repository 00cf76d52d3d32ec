"""The per-source budget of STUN messages on the UDP listeners (``--max-requests-per-source``).

Every datagram a UDP listener reads that is not ChannelData spends a token of its source's
bucket before anything parses it: a flood of requests from one address (wrong passwords at
30k/s) then costs the server a dictionary lookup per datagram, not a parse and an HMAC, and
leaves the receive buffer and the loop to everyone else. The native engine keeps the same
buckets in C (``_fastpath.c``, ``fp_src_over``); this is the pure-Python path's, on
:class:`iceward.ratelimit.RateLimiter`. Both key a source the same way (:func:`source_of`) and
report drops the same way (:meth:`SourceBudget.take`), for one metric and one log line per
source a minute.
"""

from __future__ import annotations

import socket

from iceward.ratelimit import RateLimiter

#: Sources the table holds before it starts over (the native table has as many slots).
MAX_SOURCES = 4096
_MAPPED = bytes(10) + b"\xff\xff"


def source_of(host: str) -> str:
    """The budget's key for a client address: an IPv4 address as is, an IPv6 address as its /64
    (one subscriber's network: a host may use any address in it), IPv4-mapped as IPv4."""
    if ":" not in host:
        return host
    packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    if packed[:12] == _MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class SourceBudget:
    """``rate`` STUN messages a second per source, bursts of as many."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._limiter = RateLimiter(rate, rate, max_keys=MAX_SOURCES)
        self._dropped: dict[str, int] = {}
        self._total = 0

    def allow(self, host: str, now: float) -> bool:
        """Spend one token of ``host``'s source; False (counted) if it has none."""
        key = host if ":" not in host else source_of(host)
        if self._limiter.allow(key, now):
            return True
        self._total += 1
        dropped = self._dropped
        if len(dropped) >= MAX_SOURCES and key not in dropped:
            return False  # counted in all; this source's line waits for room
        dropped[key] = dropped.get(key, 0) + 1
        return False

    def take(self) -> tuple[int, list[tuple[str, int]]]:
        """(dropped in all, [(source, dropped)]) since the last call, as the engine's."""
        total, self._total = self._total, 0
        per_source, self._dropped = list(self._dropped.items()), {}
        return total, per_source
