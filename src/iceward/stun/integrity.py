"""Message integrity (RFC 8489 sections 9 and 14.5-14.7): keys, HMACs and their verification."""

from __future__ import annotations

import hashlib
import hmac
import struct

from precis_i18n import get_profile

from iceward.stun.constants import ALGORITHM_MD5, ALGORITHM_SHA256, HEADER_LENGTH
from iceward.stun.hmacs import hmac_digest
from iceward.stun.message import Message, StunError

_OPAQUE = get_profile("OpaqueString")


def hmac_sha1(key: bytes, data: bytes) -> bytes:
    return hmac_digest(key, data, "sha1")


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac_digest(key, data, "sha256")


def _opaque(text: str, what: str) -> str:
    try:
        prepared: str = _OPAQUE.enforce(text)
    except UnicodeError as exc:
        raise StunError(f"{what} is not a valid OpaqueString: {exc}") from exc
    return prepared


def prepare_password(password: str) -> str:
    """OpaqueString-prepare a password (RFC 8265), as RFC 8489 asks for long-term keys."""
    return _opaque(password, "password")


def long_term_key(
    username: str, realm: str, password: str, algorithm: int = ALGORITHM_MD5
) -> bytes:
    """The long-term key (RFC 8489 9.2.2): MD5 or SHA-256 of ``username:realm:password``.

    Realm and password are OpaqueString-prepared; ASCII ones are unchanged, so keys match
    servers and clients that skip the preparation.
    """
    material = f"{username}:{_opaque(realm, 'realm')}:{prepare_password(password)}".encode()
    if algorithm == ALGORITHM_MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise StunError(f"unknown password algorithm {algorithm}")


def short_term_key(password: str) -> bytes:
    """The short-term credential key: the OpaqueString-prepared password itself."""
    return prepare_password(password).encode()


def _covered(raw: bytes, offset: int, attr_size: int) -> bytes:
    """The bytes an integrity attribute at ``offset`` covers, with the length field adjusted."""
    length = offset - HEADER_LENGTH + attr_size
    return raw[0:2] + struct.pack("!H", length) + raw[4:offset]


def verify_integrity(message: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 when present, else MESSAGE-INTEGRITY; False if neither."""
    raw = message.raw
    if message.integrity_sha256_offset >= 0:
        off = message.integrity_sha256_offset
        size = struct.unpack_from("!H", raw, off + 2)[0]
        received = raw[off + 4 : off + 4 + size]
        expected = hmac_sha256(key, _covered(raw, off, 4 + size))[:size]
        return hmac.compare_digest(received, expected)
    if message.integrity_offset >= 0:
        off = message.integrity_offset
        received = raw[off + 4 : off + 24]
        expected = hmac_sha1(key, _covered(raw, off, 24))
        return hmac.compare_digest(received, expected)
    return False
