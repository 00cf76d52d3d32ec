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


def hello_alpn(data: bytes) -> list[str] | None:
    """The ALPN names a TLS ClientHello at the start of ``data`` offers ([] for none), or None
    while the first record is incomplete. Only the first record is read: a ClientHello that
    spans records, or bytes that do not parse, answer [] (the TLS layer will judge them)."""
    if len(data) < 5:
        return None
    if data[0] != TLS_HANDSHAKE:
        return []
    end = 5 + ((data[3] << 8) | data[4])
    if len(data) < end:
        return None
    try:
        return _alpn_of(memoryview(data)[5:end])
    except IndexError:
        return []


def _alpn_of(hello: memoryview) -> list[str]:
    if hello[0] != 1 or ((hello[1] << 16) | (hello[2] << 8) | hello[3]) > len(hello) - 4:
        return []  # not a ClientHello, or one longer than its record
    pos = 4 + 2 + 32  # type and length; version; random
    pos += 1 + hello[pos]  # session id
    pos += 2 + ((hello[pos] << 8) | hello[pos + 1])  # cipher suites
    pos += 1 + hello[pos]  # compression methods
    end = pos + 2 + ((hello[pos] << 8) | hello[pos + 1])
    if end > len(hello):
        return []
    pos += 2
    while pos + 4 <= end:
        kind, size = (hello[pos] << 8) | hello[pos + 1], (hello[pos + 2] << 8) | hello[pos + 3]
        pos += 4
        if kind == 16:  # application_layer_protocol_negotiation
            names, at, stop = [], pos + 2, min(pos + size, end)
            while at < stop:
                n = hello[at]
                names.append(bytes(hello[at + 1 : at + 1 + n]).decode("ascii", "replace"))
                at += 1 + n
            return names
        pos += size
    return []


def hello_wants_http(names: list[str]) -> bool:
    """A ClientHello whose ALPN offers HTTP and no STUN (what browsers send for https:)."""
    return any(n in HTTP_ALPN for n in names) and not any(n in TURN_ALPN for n in names)
