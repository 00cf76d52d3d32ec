"""PROXY protocol v1 (text) and v2 (binary) headers, parsed without I/O.

A load balancer in front of the server (HAProxy ``send-proxy-v2``, nginx ``proxy_protocol on``)
writes one header before the client's bytes to say who the client is. :func:`parse` takes the
bytes read so far and answers: a complete :class:`ProxyHeader` (with how many bytes it took),
None while the header is incomplete, or :class:`ProxyError` with a short reason (the metrics'
label). While it answers None, every byte given belongs to the header, so a reader may consume
them and never takes a byte of what follows.

Every length is checked against what is there and against :data:`MAX_HEADER`; v2 TLVs are walked
(not interpreted) so a TLV that claims more than the header holds is refused, not trusted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from iceward.turn.allocation import Address

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A v1 line is at most 107 bytes, CRLF included (the specification's own bound).
V1_MAX = 107
#: The largest v2 header accepted (fixed part, addresses and TLVs); the format allows 65551.
MAX_HEADER = 2048
_V2_FIXED = 16
#: v2 address families over a stream: (address block length, address size).
_V2_STREAM = {0x11: (12, 4), 0x21: (36, 16)}


class ProxyError(ValueError):
    """A header that cannot be one: ``reason`` is a short word for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    #: The client's address, or None: the sender speaks for itself (v2 LOCAL, v1 UNKNOWN,
    #: v2 UNSPEC), so the connection's own peer is the client.
    source: Address | None
    #: Bytes the header took.
    length: int
    version: int


def signature_match(prefix: bytes) -> bool | None:
    """True when ``prefix`` starts a PROXY header (v1 or v2), False when it cannot, None when
    too short to tell (a proper prefix of a signature)."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(prefix), len(signature))
        if prefix[:n] == signature[:n]:
            return True if len(prefix) >= len(signature) else None
    return False


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None when more bytes are needed."""
    match = signature_match(data)
    if match is False:
        raise ProxyError("missing", "no PROXY header where one is required")
    if match is None:
        return None
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    return _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyError("malformed", "PROXY v1 line not ended by CRLF within 107 bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("malformed", "PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None, end + 2, 1)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyError("malformed", f"PROXY v1 line with {len(parts)} fields or no TCP4/TCP6")
    version = 4 if parts[1] == "TCP4" else 6
    source = _v1_address(parts[2], version)
    _v1_address(parts[3], version)
    sport = _v1_port(parts[4])
    _v1_port(parts[5])
    return ProxyHeader((source, sport), end + 2, 1)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError("malformed", "PROXY v1 address is not an IP address") from None
    if address.version != version:
        raise ProxyError("malformed", f"PROXY v1 address is not IPv{version}")
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyError("malformed", "PROXY v1 port is not a decimal number")
    port = int(text)
    if port > 65535:
        raise ProxyError("malformed", "PROXY v1 port above 65535")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyError("malformed", f"PROXY v2 version {version}, command {command}")
    family = data[13]
    total = _V2_FIXED + ((data[14] << 8) | data[15])
    if total > MAX_HEADER:
        raise ProxyError("too_long", f"PROXY v2 header of {total} bytes (at most {MAX_HEADER})")
    if len(data) < total:
        return None
    body = data[_V2_FIXED:total]
    if command == 0 or family == 0x00:  # LOCAL (health checks), or UNSPEC: the peer is the client
        return ProxyHeader(None, total, 2)
    shape = _V2_STREAM.get(family)
    if shape is None:
        raise ProxyError("unsupported", f"PROXY v2 family/protocol 0x{family:02x} over TCP")
    block, size = shape
    if len(body) < block:
        raise ProxyError("malformed", "PROXY v2 addresses longer than the header")
    _check_tlvs(body[block:])
    ip = str(ipaddress.ip_address(body[:size]))
    port = int.from_bytes(body[2 * size : 2 * size + 2], "big")
    return ProxyHeader((ip, port), total, 2)


def _check_tlvs(tlvs: bytes) -> None:
    """Walk the TLVs (type, 2-byte length, value) to the end; their contents are not used."""
    pos = 0
    while pos < len(tlvs):
        if len(tlvs) - pos < 3:
            raise ProxyError("malformed", "PROXY v2 TLV cut short")
        pos += 3 + ((tlvs[pos + 1] << 8) | tlvs[pos + 2])
        if pos > len(tlvs):
            raise ProxyError("malformed", "PROXY v2 TLV longer than the header")
