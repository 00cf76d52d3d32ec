"""Typed attribute values: encode to and decode from the raw bytes a :class:`Message` holds.

Every decoder validates lengths and ranges and raises :class:`StunParseError` on bad input.
Addresses are ``(host, port)`` tuples with textual hosts, as the socket module uses.
"""

from __future__ import annotations

import ipaddress
import struct

from iceward.stun.constants import (
    ERROR_REASONS,
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
)
from iceward.stun.message import StunParseError

Address = tuple[str, int]

_COOKIE_HIGH = MAGIC_COOKIE >> 16

# Length limits from RFC 8489 section 14 (in bytes, before padding).
MAX_USERNAME = 512
MAX_REALM = 763
MAX_NONCE = 763
MAX_SOFTWARE = 763
MAX_REASON = 763


def _family_of(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


# Text <-> packed addresses without the socket module (the codec does no I/O), cached: the same
# clients and peers come back, and ipaddress is slower than inet_pton. The text is exactly what
# inet_ntop writes (RFC 5952, with the IPv4-mapped and -compatible forms in dotted quad).
_PACKED: dict[str, bytes] = {}
_TEXT: dict[bytes, str] = {}
_CACHE_LIMIT = 4096


def _pack(host: str) -> bytes:
    packed = _PACKED.get(host)
    if packed is None:
        packed = ipaddress.ip_address(host).packed
        if len(_PACKED) >= _CACHE_LIMIT:
            _PACKED.clear()
        _PACKED[host] = packed
    return packed


def _text(raw: bytes) -> str:
    text = _TEXT.get(raw)
    if text is None:
        if len(raw) == 4:
            text = ".".join(map(str, raw))
        elif raw[:10] == b"\0" * 10 and raw[10:12] == b"\xff\xff":
            text = "::ffff:" + ".".join(map(str, raw[12:]))
        elif raw[:12] == b"\0" * 12 and raw[12:14] != b"\0\0":
            text = "::" + ".".join(map(str, raw[12:]))
        else:
            text = str(ipaddress.IPv6Address(raw))
        if len(_TEXT) >= _CACHE_LIMIT:
            _TEXT.clear()
        _TEXT[raw] = text
    return text


def encode_address(address: Address) -> bytes:
    """MAPPED-ADDRESS style value (also ALTERNATE-SERVER, RESPONSE-ORIGIN, OTHER-ADDRESS)."""
    host, port = address[0], address[1]
    if _family_of(host) == FAMILY_IPV6:
        return struct.pack("!BBH", 0, FAMILY_IPV6, port) + _pack(host)
    return struct.pack("!BBH", 0, FAMILY_IPV4, port) + _pack(host)


def decode_address(value: bytes) -> Address:
    if len(value) < 4:
        raise StunParseError("address attribute too short")
    family = value[1]
    port = (value[2] << 8) | value[3]
    if family == FAMILY_IPV4:
        if len(value) != 8:
            raise StunParseError("IPv4 address attribute must be 8 bytes")
        return _text(value[4:8]), port
    if family == FAMILY_IPV6:
        if len(value) != 20:
            raise StunParseError("IPv6 address attribute must be 20 bytes")
        return _text(value[4:20]), port
    raise StunParseError(f"unknown address family 0x{family:02x}")


def _xor_bytes(data: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(len(data), "big")


def encode_xor_address(address: Address, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS style value (also XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS)."""
    if len(transaction_id) != 12:
        raise ValueError("transaction id must be 12 bytes")
    host, port = address[0], address[1]
    xport = port ^ _COOKIE_HIGH
    if _family_of(host) == FAMILY_IPV6:
        packed = _pack(host)
        return struct.pack("!BBH", 0, FAMILY_IPV6, xport) + _xor_bytes(
            packed, MAGIC_COOKIE_BYTES + transaction_id
        )
    packed = _pack(host)
    return struct.pack("!BBH", 0, FAMILY_IPV4, xport) + _xor_bytes(packed, MAGIC_COOKIE_BYTES)


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) < 4:
        raise StunParseError("XOR address attribute too short")
    family = value[1]
    port = ((value[2] << 8) | value[3]) ^ _COOKIE_HIGH
    if family == FAMILY_IPV4:
        if len(value) != 8:
            raise StunParseError("IPv4 XOR address attribute must be 8 bytes")
        return _text(_xor_bytes(value[4:8], MAGIC_COOKIE_BYTES)), port
    if family == FAMILY_IPV6:
        if len(value) != 20:
            raise StunParseError("IPv6 XOR address attribute must be 20 bytes")
        raw = _xor_bytes(value[4:20], MAGIC_COOKIE_BYTES + transaction_id)
        return _text(raw), port
    raise StunParseError(f"unknown address family 0x{family:02x}")


def _reason_bytes(code: int, reason: str | None) -> bytes:
    """UTF-8 reason phrase cut to MAX_REASON bytes on a character boundary."""
    text = (reason if reason is not None else ERROR_REASONS.get(code, "")).encode()
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON].decode("utf-8", "ignore").encode()
    return text


def encode_error_code(code: int, reason: str | None = None) -> bytes:
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} out of range 300-699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + _reason_bytes(code, reason)


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunParseError("ERROR-CODE too short")
    klass = value[2] & 0x07
    number = value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunParseError(f"ERROR-CODE class {klass} number {number} out of range")
    return klass * 100 + number, decode_text(value[4:], MAX_REASON, "reason phrase")


def encode_address_error_code(family: int, code: int, reason: str | None = None) -> bytes:
    """ADDRESS-ERROR-CODE (RFC 8656 14.12): which family of a dual allocation failed, and why."""
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} out of range 300-699")
    return struct.pack("!BBBB", family, 0, code // 100, code % 100) + _reason_bytes(code, reason)


def decode_address_error_code(value: bytes) -> tuple[int, int, str]:
    if len(value) < 4:
        raise StunParseError("ADDRESS-ERROR-CODE too short")
    code, reason = decode_error_code(b"\x00\x00" + value[2:])
    return value[0], code, reason


def decode_text(value: bytes, limit: int, what: str) -> str:
    if len(value) > limit:
        raise StunParseError(f"{what} longer than {limit} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunParseError(f"{what} is not valid UTF-8") from exc


def encode_u32(value: int) -> bytes:
    return struct.pack("!I", value)


def decode_u32(value: bytes, what: str = "attribute") -> int:
    if len(value) != 4:
        raise StunParseError(f"{what} must be 4 bytes")
    return int.from_bytes(value, "big")


def encode_u64(value: int) -> bytes:
    return struct.pack("!Q", value)


def decode_u64(value: bytes, what: str = "attribute") -> int:
    if len(value) != 8:
        raise StunParseError(f"{what} must be 8 bytes")
    return int.from_bytes(value, "big")


def encode_channel_number(channel: int) -> bytes:
    return struct.pack("!HH", channel, 0)


def decode_channel_number(value: bytes) -> int:
    if len(value) != 4:
        raise StunParseError("CHANNEL-NUMBER must be 4 bytes")
    return (value[0] << 8) | value[1]


def encode_one_byte(value: int) -> bytes:
    """REQUESTED-TRANSPORT, REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY: 1 byte + RFFU."""
    return bytes((value, 0, 0, 0))


def decode_one_byte(value: bytes, what: str) -> int:
    if len(value) != 4:
        raise StunParseError(f"{what} must be 4 bytes")
    return value[0]


def encode_even_port(reserve_next: bool) -> bytes:
    return b"\x80" if reserve_next else b"\x00"


def decode_even_port(value: bytes) -> bool:
    """True when the R bit asks the server to reserve the next-higher port as well."""
    if len(value) != 1:
        raise StunParseError("EVEN-PORT must be 1 byte")
    return bool(value[0] & 0x80)


def encode_unknown_attributes(types: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(struct.pack("!H", t) for t in types)


def decode_unknown_attributes(value: bytes) -> list[int]:
    if len(value) & 1:
        raise StunParseError("UNKNOWN-ATTRIBUTES length must be even")
    return [int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2)]


def encode_password_algorithm(algorithm: int, params: bytes = b"") -> bytes:
    pad = -len(params) & 3
    return struct.pack("!HH", algorithm, len(params)) + params + b"\x00" * pad


def decode_password_algorithms(value: bytes) -> list[tuple[int, bytes]]:
    """PASSWORD-ALGORITHMS (a list) or PASSWORD-ALGORITHM (a list of one)."""
    out = []
    pos = 0
    while pos < len(value):
        if len(value) - pos < 4:
            raise StunParseError("truncated PASSWORD-ALGORITHM entry")
        alg, plen = struct.unpack_from("!HH", value, pos)
        end = pos + 4 + plen
        if end > len(value):
            raise StunParseError("PASSWORD-ALGORITHM parameters run past the attribute")
        out.append((alg, value[pos + 4 : end]))
        pos = end + (-plen & 3)
    return out


def encode_icmp(icmp_type: int, icmp_code: int, error_data: int = 0) -> bytes:
    """ICMP attribute (RFC 8656 14.13) carried in Data indications."""
    return struct.pack("!HBBI", 0, icmp_type, icmp_code, error_data)


def decode_icmp(value: bytes) -> tuple[int, int, int]:
    if len(value) != 8:
        raise StunParseError("ICMP must be 8 bytes")
    _, icmp_type, icmp_code, data = struct.unpack("!HBBI", value)
    return icmp_type, icmp_code, data
