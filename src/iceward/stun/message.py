"""STUN message framing (RFC 8489 section 5 and 14): parse and build, nothing else.

A parsed :class:`Message` keeps attribute values as raw bytes; typed decoding lives in
:mod:`iceward.stun.attributes` and is done only for the attributes a caller reads. Parsing is strict
and bounded by the message length; every malformed input raises :class:`StunParseError` and nothing
else.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from iceward.stun.constants import (
    FINGERPRINT,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    KNOWN_ATTRIBUTES,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
)
from iceward.stun.hmacs import hmac_digest

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")


class StunError(Exception):
    """Base of every error the STUN codec raises."""


class StunParseError(StunError):
    """The bytes are not a well-formed STUN message (or attribute value)."""


def message_type(method: int, cls: int) -> int:
    """Interleave the 12 method bits and 2 class bits into the 14-bit message type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_message_type(msg_type: int) -> tuple[int, int]:
    """Return ``(method, cls)`` from a 14-bit message type."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type >> 4) & 0b01) | ((msg_type >> 7) & 0b10)
    return method, cls


@dataclass(slots=True)
class Message:
    """A STUN message; ``attributes`` are ``(type, value)`` in wire order, values unpadded."""

    method: int
    cls: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)
    #: The bytes this message was parsed from (empty for a message built in memory).
    raw: bytes = b""
    #: Offsets in ``raw`` of the integrity and fingerprint attribute headers, -1 when absent.
    integrity_offset: int = -1
    integrity_sha256_offset: int = -1
    fingerprint_offset: int = -1
    #: Comprehension-required attribute types this codec does not know (answer with 420).
    unknown_required: tuple[int, ...] = ()
    #: Each type's first value: a request's handler reads about ten, each a dict lookup.
    first: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.first:
            for t, v in reversed(self.attributes):
                self.first[t] = v

    def get(self, attr_type: int) -> bytes | None:
        """Value of the first attribute of that type, or None."""
        return self.first.get(attr_type)

    def get_all(self, attr_type: int) -> list[bytes]:
        """Values of every attribute of that type, in order."""
        return [v for t, v in self.attributes if t == attr_type]

    def has(self, attr_type: int) -> bool:
        return self.get(attr_type) is not None  # a loop, cheaper than any() over a generator


def looks_like_stun(data: bytes) -> bool:
    """Cheap check used to demultiplex STUN from ChannelData and other traffic."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40 and data[4:8] == MAGIC_COOKIE_BYTES


def parse_message(data: bytes, *, check_fingerprint: bool = True) -> Message:
    """Parse one complete STUN message occupying all of ``data``."""
    size = len(data)
    if size < HEADER_LENGTH:
        raise StunParseError(f"message shorter than the STUN header ({size} bytes)")
    msg_type, length, cookie, txid = _HEADER.unpack_from(data, 0)
    if msg_type & 0xC000:
        raise StunParseError("first two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunParseError("missing magic cookie (RFC 3489 messages are not supported)")
    if length & 3:
        raise StunParseError(f"message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != size:
        raise StunParseError(
            f"message length field says {length} bytes of attributes, datagram has "
            f"{size - HEADER_LENGTH}"
        )
    method, cls = split_message_type(msg_type)
    attributes: list[tuple[int, bytes]] = []
    first: dict[int, bytes] = {}
    unknown: list[int] = []
    integrity = integrity256 = fingerprint = -1
    pos = HEADER_LENGTH
    while pos < size:
        if size - pos < 4:
            raise StunParseError("truncated attribute header")
        attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
        start = pos + 4
        end = start + attr_len
        if end > size:
            raise StunParseError(
                f"attribute 0x{attr_type:04x} claims {attr_len} bytes, only {size - start} remain"
            )
        value = data[start:end]
        next_pos = start + ((attr_len + 3) & ~3)
        if next_pos > size:
            raise StunParseError(f"attribute 0x{attr_type:04x} padding runs past the message")
        if fingerprint >= 0:
            raise StunParseError("attribute after FINGERPRINT")
        if attr_type == FINGERPRINT:
            if attr_len != 4:
                raise StunParseError("FINGERPRINT must be 4 bytes")
            fingerprint = pos
        elif integrity256 >= 0:
            pos = next_pos  # RFC 8489 14.6: ignore everything after it but FINGERPRINT
            continue
        elif attr_type == MESSAGE_INTEGRITY_SHA256:
            if attr_len < 16 or attr_len > 32 or attr_len & 3:
                raise StunParseError("MESSAGE-INTEGRITY-SHA256 must be 16 to 32 bytes, 4-aligned")
            integrity256 = pos
        elif integrity >= 0:
            pos = next_pos  # RFC 8489 14.5: ignore all but MI-SHA256 and FINGERPRINT after it
            continue
        elif attr_type == MESSAGE_INTEGRITY:
            if attr_len != 20:
                raise StunParseError("MESSAGE-INTEGRITY must be 20 bytes")
            integrity = pos
        elif attr_type < 0x8000 and attr_type not in KNOWN_ATTRIBUTES:
            unknown.append(attr_type)
        attributes.append((attr_type, value))
        if attr_type not in first:
            first[attr_type] = value
        pos = next_pos
    if fingerprint >= 0 and check_fingerprint:
        expected = _U32.unpack_from(data, fingerprint + 4)[0]
        if expected != fingerprint_value(data, fingerprint):
            raise StunParseError("FINGERPRINT does not match")
    return Message(
        method=method,
        cls=cls,
        transaction_id=txid,
        attributes=attributes,
        raw=bytes(data),
        integrity_offset=integrity,
        integrity_sha256_offset=integrity256,
        fingerprint_offset=fingerprint,
        unknown_required=tuple(unknown),
        first=first,
    )


def fingerprint_value(data: bytes, offset: int) -> int:
    """CRC-32 of ``data`` up to ``offset`` with the length field covering the FINGERPRINT."""
    header = struct.pack("!HH", int.from_bytes(data[0:2], "big"), offset - HEADER_LENGTH + 8)
    crc = zlib.crc32(data[4:offset], zlib.crc32(header))
    return crc ^ FINGERPRINT_XOR


def encode_attributes(attributes: list[tuple[int, bytes]]) -> bytes:
    """Serialise attributes with their padding (zeros)."""
    parts = []
    for attr_type, value in attributes:
        n = len(value)
        if n > 0xFFFF:
            raise StunError(f"attribute 0x{attr_type:04x} value too long ({n} bytes)")
        parts.append(_ATTR_HEADER.pack(attr_type, n))
        parts.append(value)
        pad = -n & 3
        if pad:
            parts.append(b"\x00" * pad)
    return b"".join(parts)


def encode_message(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: list[tuple[int, bytes]] | tuple[tuple[int, bytes], ...] = (),
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Build a STUN message; integrity attributes and FINGERPRINT are appended last, in order."""
    if len(transaction_id) != 12:
        raise StunError("transaction id must be 12 bytes")
    body = encode_attributes(list(attributes))
    msg_type = message_type(method, cls)
    if integrity_key is not None:
        head = _HEADER.pack(msg_type, len(body) + 24, MAGIC_COOKIE, transaction_id)
        mac = hmac_digest(integrity_key, head + body, "sha1")
        body += _ATTR_HEADER.pack(MESSAGE_INTEGRITY, 20) + mac
    if integrity_sha256_key is not None:
        head = _HEADER.pack(msg_type, len(body) + 36, MAGIC_COOKIE, transaction_id)
        mac = hmac_digest(integrity_sha256_key, head + body, "sha256")
        body += _ATTR_HEADER.pack(MESSAGE_INTEGRITY_SHA256, 32) + mac
    if fingerprint:
        head = _HEADER.pack(msg_type, len(body) + 8, MAGIC_COOKIE, transaction_id)
        crc = zlib.crc32(body, zlib.crc32(head)) ^ FINGERPRINT_XOR
        body += _ATTR_HEADER.pack(FINGERPRINT, 4) + _U32.pack(crc)
    if len(body) > 0xFFFF:
        raise StunError("message too long")
    return _HEADER.pack(msg_type, len(body), MAGIC_COOKIE, transaction_id) + body
