"""What a connection on the TLS port is for, from its first bytes and its ALPN; no I/O.

One port serves TURN over TLS, TURN over plain TCP and HTTPS. The first byte on the wire tells
TLS (a handshake record, 0x16) from plain STUN. Inside TLS, ALPN decides (RFC 7443's
``stun.turn`` and ``stun.nat-discovery`` for TURN, ``http/1.1`` or ``h2`` for HTTP); browsers
send no ALPN for ``turns:``, so then the first decrypted bytes decide: a STUN header or
ChannelData, or an HTTP request line (an upper-case method and a space).
"""

from __future__ import annotations

from typing import Literal

Route = Literal["turn", "http"]

#: A TLS record of type handshake: what a ClientHello starts with.
TLS_HANDSHAKE = 0x16
TURN_ALPN = ("stun.turn", "stun.nat-discovery")
HTTP_ALPN = ("http/1.1", "h2")
#: Offered by the server, in its order of preference (h2 is accepted as a client's wish and
#: answered with http/1.1: the server speaks HTTP/1.1 only).
SERVER_ALPN = [*TURN_ALPN, "http/1.1"]
#: Bytes an HTTP method may take before its space (``OPTIONS``, ``CONNECT``, ``PROPFIND``...).
_METHOD_MAX = 10


def route_alpn(protocol: str | None) -> Route | None:
    """The route ALPN chose, or None: no ALPN agreed, the first bytes will tell."""
    if protocol in TURN_ALPN:
        return "turn"
    if protocol in HTTP_ALPN:
        return "http"
    return None


def route_bytes(prefix: bytes) -> Route | None:
    """The route the first decrypted bytes show, or None while they could still be either.

    STUN starts with a byte below 0x40 and ChannelData with 0x40-0x7F followed by a length;
    HTTP with a method of upper-case letters and a space, which ChannelData cannot look like for
    long: anything but such a method is TURN's to judge (and refuse)."""
    if not prefix:
        return None
    if prefix[0] < 0x41 or prefix[0] > 0x5A:
        return "turn"
    for i, byte in enumerate(prefix[: _METHOD_MAX + 1]):
        if byte == 0x20:
            return "http" if i >= 3 else "turn"
        if not 0x41 <= byte <= 0x5A:
            return "turn"
    return "turn" if len(prefix) > _METHOD_MAX else None
