"""Typed attribute codecs, message type packing, integrity helpers and strict framing."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import unicodedata
import zlib

import pytest

from iceward.stun import constants as c
from iceward.stun import looks_like_stun
from iceward.stun.attributes import (
    MAX_REASON,
    MAX_USERNAME,
    decode_address,
    decode_address_error_code,
    decode_channel_number,
    decode_error_code,
    decode_even_port,
    decode_icmp,
    decode_one_byte,
    decode_password_algorithms,
    decode_text,
    decode_u32,
    decode_u64,
    decode_unknown_attributes,
    decode_xor_address,
    encode_address,
    encode_address_error_code,
    encode_channel_number,
    encode_error_code,
    encode_even_port,
    encode_icmp,
    encode_one_byte,
    encode_password_algorithm,
    encode_u32,
    encode_u64,
    encode_unknown_attributes,
    encode_xor_address,
)
from iceward.stun.integrity import (
    hmac_sha256,
    long_term_key,
    short_term_key,
    verify_integrity,
)
from iceward.stun.message import (
    StunError,
    StunParseError,
    encode_message,
    message_type,
    parse_message,
    split_message_type,
)

TXID = bytes(range(1, 13))
KEY = b"key-material"


def _header(msg_type: int, length: int, txid: bytes = TXID, cookie: int = c.MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI12s", msg_type, length, cookie, txid)


def _attr(attr_type: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + pad * (-len(value) & 3)


def _raw(body: bytes, msg_type: int = 0x0001, txid: bytes = TXID) -> bytes:
    """A message from hand-written attribute bytes, with a correct length field."""
    return _header(msg_type, len(body), txid) + body


def _with_fingerprint(data: bytes) -> bytes:
    """Append a FINGERPRINT computed independently of the codec."""
    grown = bytearray(data)
    struct.pack_into("!H", grown, 2, len(data) - c.HEADER_LENGTH + 8)
    crc = (zlib.crc32(bytes(grown)) ^ 0x5354554E) & 0xFFFFFFFF
    return bytes(grown) + struct.pack("!HHI", c.FINGERPRINT, 4, crc)


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------

ADDRESSES = [
    ("0.0.0.0", 0),
    ("192.0.2.1", 32853),
    ("255.255.255.255", 65535),
    ("10.1.2.3", 3478),
    ("::", 0),
    ("::1", 1),
    ("2001:db8:1234:5678:11:2233:4455:6677", 32853),
    ("fe80::1", 5349),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_address_round_trip(address: tuple[str, int]) -> None:
    value = encode_address(address)
    assert len(value) == (20 if ":" in address[0] else 8)
    assert value[0] == 0
    assert decode_address(value) == address


@pytest.mark.parametrize("address", ADDRESSES)
def test_xor_address_round_trip(address: tuple[str, int]) -> None:
    value = encode_xor_address(address, TXID)
    assert decode_xor_address(value, TXID) == address
    # XOR really happened: the port on the wire is port ^ 0x2112.
    assert struct.unpack_from("!H", value, 2)[0] == address[1] ^ 0x2112
    if ":" in address[0]:
        # The IPv6 mask includes the transaction id: another id decodes to another address.
        assert decode_xor_address(value, bytes(12))[0] != address[0]


def test_address_known_bytes() -> None:
    assert encode_address(("192.0.2.1", 32853)) == bytes.fromhex("00018055c0000201")
    assert encode_xor_address(("192.0.2.1", 32853), TXID) == bytes.fromhex("0001a147e112a643")
    assert decode_address(bytes.fromhex("00018055c0000201")) == ("192.0.2.1", 32853)


@pytest.mark.parametrize("decode", ["plain", "xor"])
@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00",
        b"\x00\x01\x00",
        b"\x00\x01\x00\x01",  # IPv4, no address
        b"\x00\x01\x00\x01\x01\x02\x03",  # IPv4, 7 bytes
        b"\x00\x01\x00\x01\x01\x02\x03\x04\x05",  # IPv4, 9 bytes
        b"\x00\x01\x00\x01" + bytes(16),  # IPv4 family with an IPv6-sized address
        b"\x00\x02\x00\x01" + bytes(4),  # IPv6 family with an IPv4-sized address
        b"\x00\x02\x00\x01" + bytes(15),
        b"\x00\x02\x00\x01" + bytes(17),
        b"\x00\x00\x00\x01" + bytes(4),  # family 0
        b"\x00\x03\x00\x01" + bytes(4),  # family 3
        b"\x00\xff\x00\x01" + bytes(16),
        b"\x00\x04\x00\x01" + bytes(16),
    ],
)
def test_address_rejects_bad_lengths_and_families(decode: str, value: bytes) -> None:
    with pytest.raises(StunParseError):
        if decode == "plain":
            decode_address(value)
        else:
            decode_xor_address(value, TXID)


# --------------------------------------------------------------------------------------------
# ERROR-CODE and ADDRESS-ERROR-CODE
# --------------------------------------------------------------------------------------------


def test_error_code_every_code_round_trips() -> None:
    for code in range(300, 700):
        assert decode_error_code(encode_error_code(code)) == (
            code,
            c.ERROR_REASONS.get(code, ""),
        )


def test_error_code_wire_format_and_reason() -> None:
    value = encode_error_code(438, "Stale Nonce")
    assert value[:4] == b"\x00\x00\x04\x26"  # class 4, number 38
    assert value[4:] == b"Stale Nonce"
    assert decode_error_code(value) == (438, "Stale Nonce")
    assert decode_error_code(encode_error_code(401, "")) == (401, "")
    assert decode_error_code(encode_error_code(420, "caf\u00e9")) == (420, "caf\u00e9")


@pytest.mark.parametrize("code", [0, 299, 700, 999, -400])
def test_encode_error_code_rejects_out_of_range(code: int) -> None:
    with pytest.raises(ValueError):
        encode_error_code(code)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\x00\x04",
        b"\x00\x00\x02\x00",  # class 2
        b"\x00\x00\x07\x00",  # class 7
        b"\x00\x00\x00\x00",  # class 0
        b"\x00\x00\x04\x64",  # number 100
        b"\x00\x00\x04\xff",
        b"\x00\x00\x04\x00\xff\xfe",  # reason is not UTF-8
        b"\x00\x00\x04\x00" + b"a" * (MAX_REASON + 1),  # reason too long
    ],
)
def test_decode_error_code_rejects(value: bytes) -> None:
    with pytest.raises(StunParseError):
        decode_error_code(value)


def test_decode_error_code_reason_at_limit() -> None:
    assert decode_error_code(b"\x00\x00\x05\x00" + b"r" * MAX_REASON) == (500, "r" * MAX_REASON)


def test_encode_error_code_truncates_long_reason() -> None:
    code, reason = decode_error_code(encode_error_code(400, "x" * 2000))
    assert (code, reason) == (400, "x" * MAX_REASON)


# The reason phrase is cut on a UTF-8 character boundary, never inside one.
def test_encode_error_code_truncates_on_a_character_boundary() -> None:
    reason = "\u00e9" * 500  # 1000 bytes, 2 per character; 763 is odd
    code, decoded = decode_error_code(encode_error_code(400, reason))
    assert code == 400
    assert reason.startswith(decoded)
    assert len(decoded.encode()) <= MAX_REASON


def test_encode_address_error_code_truncates_on_a_character_boundary() -> None:
    family, code, decoded = decode_address_error_code(
        encode_address_error_code(c.FAMILY_IPV6, 440, "\u00e9" * 500)
    )
    assert (family, code) == (c.FAMILY_IPV6, 440)
    assert len(decoded.encode()) <= MAX_REASON


@pytest.mark.parametrize("family", [c.FAMILY_IPV4, c.FAMILY_IPV6])
@pytest.mark.parametrize("code", [440, 508, 300, 699])
def test_address_error_code_round_trip(family: int, code: int) -> None:
    value = encode_address_error_code(family, code)
    assert value[0] == family
    assert value[1] == 0
    assert decode_address_error_code(value) == (family, code, c.ERROR_REASONS.get(code, ""))
    assert decode_address_error_code(encode_address_error_code(family, code, "why")) == (
        family,
        code,
        "why",
    )


@pytest.mark.parametrize(
    "value",
    [b"", b"\x01\x00\x04", b"\x01\x00\x02\x00", b"\x01\x00\x04\x64", b"\x01\x00\x04\x00\xc3"],
)
def test_decode_address_error_code_rejects(value: bytes) -> None:
    with pytest.raises(StunParseError):
        decode_address_error_code(value)


# --------------------------------------------------------------------------------------------
# Text, integers, small fixed-size values
# --------------------------------------------------------------------------------------------


def test_decode_text() -> None:
    assert decode_text(b"", 10, "x") == ""
    assert decode_text("\u30de".encode() * 3, 9, "x") == "\u30de" * 3
    assert decode_text(b"u" * MAX_USERNAME, MAX_USERNAME, "USERNAME") == "u" * MAX_USERNAME
    with pytest.raises(StunParseError, match="USERNAME"):
        decode_text(b"u" * (MAX_USERNAME + 1), MAX_USERNAME, "USERNAME")
    for bad in (b"\xff", b"\xc3", b"a\x80b", b"\xed\xa0\x80"):  # the last is a UTF-8 surrogate
        with pytest.raises(StunParseError):
            decode_text(bad, 10, "x")


@pytest.mark.parametrize("number", [0, 1, 0x6E0001FF, 0xFFFFFFFF])
def test_u32_round_trip(number: int) -> None:
    assert len(encode_u32(number)) == 4
    assert decode_u32(encode_u32(number)) == number


@pytest.mark.parametrize("number", [0, 1, 0x932FF9B151263B36, 0xFFFFFFFFFFFFFFFF])
def test_u64_round_trip(number: int) -> None:
    assert len(encode_u64(number)) == 8
    assert decode_u64(encode_u64(number)) == number


@pytest.mark.parametrize("size", [n for n in range(13) if n != 4])
def test_four_byte_decoders_reject_other_lengths(size: int) -> None:
    value = bytes(size)
    for decode in (
        decode_u32,
        decode_channel_number,
        lambda v: decode_one_byte(v, "REQUESTED-TRANSPORT"),
    ):
        with pytest.raises(StunParseError):
            decode(value)


@pytest.mark.parametrize("size", [n for n in range(17) if n != 8])
def test_eight_byte_decoders_reject_other_lengths(size: int) -> None:
    with pytest.raises(StunParseError):
        decode_u64(bytes(size))
    with pytest.raises(StunParseError):
        decode_icmp(bytes(size))


@pytest.mark.parametrize("channel", [c.CHANNEL_MIN, 0x4321, c.CHANNEL_MAX])
def test_channel_number_round_trip(channel: int) -> None:
    value = encode_channel_number(channel)
    assert value[2:] == b"\x00\x00"  # RFFU
    assert decode_channel_number(value) == channel


def test_one_byte_values() -> None:
    assert encode_one_byte(c.TRANSPORT_UDP) == b"\x11\x00\x00\x00"
    for number in (c.TRANSPORT_UDP, c.TRANSPORT_TCP, c.FAMILY_IPV4, c.FAMILY_IPV6, 0, 255):
        assert decode_one_byte(encode_one_byte(number), "x") == number


def test_even_port() -> None:
    assert encode_even_port(True) == b"\x80"
    assert encode_even_port(False) == b"\x00"
    assert decode_even_port(encode_even_port(True)) is True
    assert decode_even_port(encode_even_port(False)) is False
    assert decode_even_port(b"\x7f") is False  # only the R bit counts
    for bad in (b"", b"\x80\x00", b"\x80\x00\x00\x00"):
        with pytest.raises(StunParseError):
            decode_even_port(bad)


@pytest.mark.parametrize("types", [[], [0x0001], [0x7FFF, 0x0031, 0xC001], list(range(0, 40))])
def test_unknown_attributes_round_trip(types: list[int]) -> None:
    value = encode_unknown_attributes(types)
    assert len(value) == 2 * len(types)
    assert decode_unknown_attributes(value) == types
    assert decode_unknown_attributes(encode_unknown_attributes(tuple(types))) == types


@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_unknown_attributes_rejects_odd_length(size: int) -> None:
    with pytest.raises(StunParseError):
        decode_unknown_attributes(bytes(size))


def test_password_algorithms() -> None:
    md5 = encode_password_algorithm(c.ALGORITHM_MD5)
    sha = encode_password_algorithm(c.ALGORITHM_SHA256)
    assert md5 == b"\x00\x01\x00\x00"
    assert decode_password_algorithms(md5) == [(c.ALGORITHM_MD5, b"")]
    assert decode_password_algorithms(sha + md5) == [
        (c.ALGORITHM_SHA256, b""),
        (c.ALGORITHM_MD5, b""),
    ]
    with_params = encode_password_algorithm(0x8001, b"abcde")
    assert len(with_params) == 12  # 4 + 5 + 3 bytes of padding
    assert decode_password_algorithms(with_params + md5) == [
        (0x8001, b"abcde"),
        (c.ALGORITHM_MD5, b""),
    ]
    assert decode_password_algorithms(b"") == []


@pytest.mark.parametrize(
    "value",
    [
        b"\x00",
        b"\x00\x01\x00",
        b"\x00\x01\x00\x00\x00",  # trailing partial entry
        b"\x00\x01\x00\x04\x00\x00",  # parameters run past the attribute
        b"\x00\x01\xff\xff",
    ],
)
def test_password_algorithms_rejects(value: bytes) -> None:
    with pytest.raises(StunParseError):
        decode_password_algorithms(value)


def test_icmp_round_trip() -> None:
    value = encode_icmp(3, 4, 1280)
    assert value == b"\x00\x00\x03\x04\x00\x00\x05\x00"
    assert decode_icmp(value) == (3, 4, 1280)
    assert decode_icmp(encode_icmp(255, 255, 0xFFFFFFFF)) == (255, 255, 0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# Message type
# --------------------------------------------------------------------------------------------


def test_message_type_every_method_and_class() -> None:
    seen = set()
    for method in range(0x1000):
        for cls in (c.REQUEST, c.INDICATION, c.SUCCESS, c.ERROR):
            msg_type = message_type(method, cls)
            assert 0 <= msg_type < 0x4000
            assert split_message_type(msg_type) == (method, cls)
            seen.add(msg_type)
    # A bijection onto the 14-bit space.
    assert seen == set(range(0x4000))


@pytest.mark.parametrize(
    ("method", "cls", "expected"),
    [
        (c.BINDING, c.REQUEST, 0x0001),
        (c.BINDING, c.INDICATION, 0x0011),
        (c.BINDING, c.SUCCESS, 0x0101),
        (c.BINDING, c.ERROR, 0x0111),
        (c.ALLOCATE, c.REQUEST, 0x0003),
        (c.ALLOCATE, c.SUCCESS, 0x0103),
        (c.ALLOCATE, c.ERROR, 0x0113),
        (c.REFRESH, c.REQUEST, 0x0004),
        (c.SEND, c.INDICATION, 0x0016),
        (c.DATA, c.INDICATION, 0x0017),
        (c.CREATE_PERMISSION, c.SUCCESS, 0x0108),
        (c.CHANNEL_BIND, c.ERROR, 0x0119),
        (c.CONNECTION_ATTEMPT, c.INDICATION, 0x001C),
        (0xFFF, c.ERROR, 0x3FFF),
        (0x080, c.REQUEST, 0x0200),  # M7 sits above C1
        (0x010, c.REQUEST, 0x0020),  # M4 sits above C0
    ],
)
def test_message_type_known_values(method: int, cls: int, expected: int) -> None:
    assert message_type(method, cls) == expected
    assert split_message_type(expected) == (method, cls)
    data = encode_message(method, cls, TXID)
    assert data[:2] == struct.pack("!H", expected)
    msg = parse_message(data)
    assert (msg.method, msg.cls) == (method, cls)


# --------------------------------------------------------------------------------------------
# Keys and integrity
# --------------------------------------------------------------------------------------------


def test_long_term_key_md5_and_sha256() -> None:
    material = b"alice:example.org:s3cret pass"
    assert long_term_key("alice", "example.org", "s3cret pass") == hashlib.md5(material).digest()
    assert (
        long_term_key("alice", "example.org", "s3cret pass", c.ALGORITHM_MD5)
        == hashlib.md5(material).digest()
    )
    sha = long_term_key("alice", "example.org", "s3cret pass", c.ALGORITHM_SHA256)
    assert sha == hashlib.sha256(material).digest()
    assert len(sha) == 32
    # Non-ASCII: UTF-8 encoded; NFC applied to the password (OpaqueString).
    assert (
        long_term_key("\u30de", "r", "cafe\u0301")
        == hashlib.md5("\u30de:r:caf\u00e9".encode()).digest()
    )
    # Non-ASCII spaces in the password are mapped to SPACE by OpaqueString.
    assert long_term_key("u", "r", "a\u00a0b") == hashlib.md5(b"u:r:a b").digest()


def test_long_term_key_rejects_unknown_algorithm_and_bad_password() -> None:
    with pytest.raises(StunError):
        long_term_key("u", "r", "p", 0x0003)
    with pytest.raises(StunError):
        long_term_key("u", "r", "")  # OpaqueString: empty is not allowed
    with pytest.raises(StunError):
        long_term_key("u", "r", "bad\x00")  # control character


def test_short_term_key() -> None:
    assert short_term_key("VOkJxbRl1RmTxUk/WvJxBt") == b"VOkJxbRl1RmTxUk/WvJxBt"
    assert short_term_key("caf\u0065\u0301") == "caf\u00e9".encode()


# RFC 8489 9.2.2: the realm is OpaqueString-prepared like the password.
def test_long_term_key_prepares_the_realm() -> None:
    realm = "cafe\u0301.example"  # decomposed e + COMBINING ACUTE ACCENT
    prepared = unicodedata.normalize("NFC", realm)
    assert prepared != realm
    expected = hashlib.md5(f"u:{prepared}:p".encode()).digest()
    assert long_term_key("u", realm, "p") == expected


def test_message_integrity_sha256() -> None:
    data = encode_message(
        c.ALLOCATE,
        c.REQUEST,
        TXID,
        [(c.USERNAME, b"alice"), (c.REALM, b"example.org")],
        integrity_sha256_key=KEY,
        fingerprint=True,
    )
    msg = parse_message(data)
    assert msg.integrity_offset == -1
    assert msg.integrity_sha256_offset == len(data) - 8 - 36
    assert verify_integrity(msg, KEY) is True
    assert verify_integrity(msg, KEY + b"!") is False
    # Independent check of the HMAC: SHA-256 over the header with the length up to and including
    # MI-SHA256, then the attributes before it.
    off = msg.integrity_sha256_offset
    covered = data[:2] + struct.pack("!H", off - 20 + 36) + data[4:off]
    assert data[off + 4 : off + 36] == hmac.new(KEY, covered, hashlib.sha256).digest()


def test_both_integrities() -> None:
    sha1_key, sha256_key = b"sha1-key", b"sha256-key"
    data = encode_message(
        c.BINDING,
        c.REQUEST,
        TXID,
        [(c.SOFTWARE, b"x")],
        integrity_key=sha1_key,
        integrity_sha256_key=sha256_key,
        fingerprint=True,
    )
    msg = parse_message(data)
    assert [t for t, _ in msg.attributes] == [
        c.SOFTWARE,
        c.MESSAGE_INTEGRITY,
        c.MESSAGE_INTEGRITY_SHA256,
        c.FINGERPRINT,
    ]
    # MI-SHA256 wins when present.
    assert verify_integrity(msg, sha256_key)
    assert not verify_integrity(msg, sha1_key)
    # The SHA-1 MESSAGE-INTEGRITY in front of it is valid on its own.
    sha1_only = dataclasses.replace(msg, integrity_sha256_offset=-1)
    assert verify_integrity(sha1_only, sha1_key)
    assert not verify_integrity(sha1_only, sha256_key)


def test_truncated_message_integrity_sha256_verifies() -> None:
    """RFC 8489 14.6: MI-SHA256 may be truncated to 16..32 bytes (multiple of 4)."""
    attrs = _attr(c.USERNAME, b"bob")
    for size in (16, 20, 24, 28):
        head = _header(0x0001, len(attrs) + 4 + size)
        mac = hmac_sha256(KEY, head + attrs)[:size]
        data = head + attrs + _attr(c.MESSAGE_INTEGRITY_SHA256, mac)
        msg = parse_message(data)
        assert verify_integrity(msg, KEY), size
        assert not verify_integrity(msg, b"other"), size


@pytest.mark.parametrize("size", [0, 4, 12, 18, 36, 64])
def test_message_integrity_sha256_bad_length(size: int) -> None:
    with pytest.raises(StunParseError):
        parse_message(_raw(_attr(c.MESSAGE_INTEGRITY_SHA256, bytes(size))))


@pytest.mark.parametrize("size", [0, 4, 16, 19, 21, 32])
def test_message_integrity_bad_length(size: int) -> None:
    with pytest.raises(StunParseError):
        parse_message(_raw(_attr(c.MESSAGE_INTEGRITY, bytes(size))))


def test_verify_integrity_without_integrity_is_false() -> None:
    msg = parse_message(encode_message(c.BINDING, c.REQUEST, TXID, [(c.USERNAME, b"x")]))
    assert verify_integrity(msg, KEY) is False
    assert verify_integrity(msg, b"") is False


# --------------------------------------------------------------------------------------------
# Comprehension-required attributes and ordering rules
# --------------------------------------------------------------------------------------------


def test_unknown_comprehension_required_attributes() -> None:
    attrs = [
        (c.USERNAME, b"alice"),
        (0x7FFF, b"?"),  # unknown, comprehension-required
        (0xC000, b"optional"),  # unknown, comprehension-optional
        (0x0030, b""),  # unknown, required
        (c.SOFTWARE, b"s"),
        (0xFFFF, b""),
        (c.CHANNEL_NUMBER, encode_channel_number(0x4000)),
    ]
    msg = parse_message(encode_message(c.ALLOCATE, c.REQUEST, TXID, attrs))
    assert msg.unknown_required == (0x7FFF, 0x0030)
    assert msg.attributes == attrs  # unknown attributes are still kept, in order


def test_known_attributes_are_not_unknown() -> None:
    attrs = [(t, b"") for t in sorted(c.KNOWN_ATTRIBUTES) if t not in _SEALS]
    msg = parse_message(encode_message(c.BINDING, c.REQUEST, TXID, attrs))
    assert msg.unknown_required == ()


_SEALS = {c.MESSAGE_INTEGRITY, c.MESSAGE_INTEGRITY_SHA256, c.FINGERPRINT}


def test_attributes_after_message_integrity_are_ignored() -> None:
    sealed = encode_message(c.BINDING, c.REQUEST, TXID, [(c.USERNAME, b"alice")], integrity_key=KEY)
    trailing = _attr(c.USERNAME, b"mallory") + _attr(0x7FFF, b"x") + _attr(c.SOFTWARE, b"evil")
    body = sealed[c.HEADER_LENGTH :] + trailing
    data = _with_fingerprint(_raw(body))
    msg = parse_message(data)
    assert [t for t, _ in msg.attributes] == [c.USERNAME, c.MESSAGE_INTEGRITY, c.FINGERPRINT]
    assert msg.get(c.USERNAME) == b"alice"
    assert msg.get_all(c.USERNAME) == [b"alice"]
    assert not msg.has(c.SOFTWARE)
    assert msg.unknown_required == ()  # ignored attributes are not "unknown" either
    assert msg.fingerprint_offset == len(data) - 8
    # The MAC only covers up to MESSAGE-INTEGRITY, whatever follows.
    assert verify_integrity(msg, KEY)


def test_mi_sha256_and_fingerprint_after_message_integrity_are_kept() -> None:
    sealed = encode_message(c.BINDING, c.REQUEST, TXID, [(c.SOFTWARE, b"s")], integrity_key=b"a")
    ignored = _attr(c.USERNAME, b"ignored")
    head = _header(0x0001, len(sealed) - 20 + len(ignored) + 36)
    mac = hmac_sha256(b"b", head + sealed[20:] + ignored)
    data = _with_fingerprint(_raw(sealed[20:] + ignored + _attr(c.MESSAGE_INTEGRITY_SHA256, mac)))
    msg = parse_message(data)
    assert [t for t, _ in msg.attributes] == [
        c.SOFTWARE,
        c.MESSAGE_INTEGRITY,
        c.MESSAGE_INTEGRITY_SHA256,
        c.FINGERPRINT,
    ]
    assert msg.integrity_sha256_offset == len(data) - 8 - 36
    assert verify_integrity(msg, b"b")


def test_attributes_after_mi_sha256_are_ignored() -> None:
    sealed = encode_message(
        c.BINDING, c.REQUEST, TXID, [(c.SOFTWARE, b"s")], integrity_sha256_key=KEY
    )
    trailing = _attr(c.MESSAGE_INTEGRITY, bytes(20)) + _attr(c.USERNAME, b"u") + _attr(0x7FFE, b"")
    msg = parse_message(_with_fingerprint(_raw(sealed[20:] + trailing)))
    assert [t for t, _ in msg.attributes] == [
        c.SOFTWARE,
        c.MESSAGE_INTEGRITY_SHA256,
        c.FINGERPRINT,
    ]
    assert msg.integrity_offset == -1
    assert msg.unknown_required == ()
    assert verify_integrity(msg, KEY)


# RFC 8489 14.5/14.6: a second integrity attribute is ignored, not an error.
def test_second_message_integrity_is_ignored() -> None:
    sealed = encode_message(c.BINDING, c.REQUEST, TXID, [(c.USERNAME, b"u")], integrity_key=KEY)
    msg = parse_message(_raw(sealed[20:] + _attr(c.MESSAGE_INTEGRITY, bytes(20))))
    assert verify_integrity(msg, KEY)
    assert msg.get_all(c.MESSAGE_INTEGRITY) == [msg.raw[msg.integrity_offset + 4 :][:20]]


def test_second_message_integrity_sha256_is_ignored() -> None:
    sealed = encode_message(c.BINDING, c.REQUEST, TXID, [], integrity_sha256_key=KEY)
    msg = parse_message(_raw(sealed[20:] + _attr(c.MESSAGE_INTEGRITY_SHA256, bytes(32))))
    assert verify_integrity(msg, KEY)


def test_attribute_after_fingerprint_is_an_error() -> None:
    good = encode_message(c.BINDING, c.REQUEST, TXID, [(c.SOFTWARE, b"s")], fingerprint=True)
    parse_message(good)
    for extra in (_attr(c.SOFTWARE, b"x"), _attr(c.FINGERPRINT, bytes(4)), _attr(0xC000, b"")):
        data = _raw(good[20:] + extra)
        with pytest.raises(StunParseError, match="after FINGERPRINT"):
            parse_message(data, check_fingerprint=False)
        with pytest.raises(StunParseError):
            parse_message(data)


@pytest.mark.parametrize("size", [0, 2, 3, 5, 8])
def test_fingerprint_bad_length(size: int) -> None:
    with pytest.raises(StunParseError):
        parse_message(_raw(_attr(c.FINGERPRINT, bytes(size))), check_fingerprint=False)


def test_fingerprint_mismatch() -> None:
    data = bytearray(
        encode_message(c.BINDING, c.REQUEST, TXID, [(c.SOFTWARE, b"s")], fingerprint=True)
    )
    parse_message(bytes(data))
    data[-1] ^= 0x80
    with pytest.raises(StunParseError, match="FINGERPRINT"):
        parse_message(bytes(data))
    assert parse_message(bytes(data), check_fingerprint=False).fingerprint_offset == len(data) - 8


def test_codec_fingerprint_matches_independent_crc() -> None:
    plain = encode_message(c.BINDING, c.SUCCESS, TXID, [(c.SOFTWARE, b"abcde")])
    assert encode_message(
        c.BINDING, c.SUCCESS, TXID, [(c.SOFTWARE, b"abcde")], fingerprint=True
    ) == _with_fingerprint(plain)


def test_space_padding_is_accepted_and_stripped() -> None:
    data = _raw(_attr(c.USERNAME, b"abcde", pad=b" ") + _attr(c.SOFTWARE, b"x", pad=b"\xff"))
    msg = parse_message(data)
    assert msg.attributes == [(c.USERNAME, b"abcde"), (c.SOFTWARE, b"x")]


# --------------------------------------------------------------------------------------------
# Framing errors
# --------------------------------------------------------------------------------------------

VALID = encode_message(
    c.ALLOCATE,
    c.REQUEST,
    TXID,
    [(c.USERNAME, b"alice"), (c.REQUESTED_TRANSPORT, encode_one_byte(17))],
    integrity_key=KEY,
    fingerprint=True,
)


def test_every_truncation_is_rejected() -> None:
    parse_message(VALID)
    for size in range(len(VALID)):
        with pytest.raises(StunParseError):
            parse_message(VALID[:size])


def test_truncation_with_consistent_length_field_is_rejected() -> None:
    # Cut inside an attribute but fix the header length: the attribute now overruns the message.
    boundaries = {20}
    pos = 20
    while pos < len(VALID):
        pos += 4 + ((struct.unpack_from("!H", VALID, pos + 2)[0] + 3) & ~3)
        boundaries.add(pos)
    assert boundaries == {20, 32, 40, 64, 72}
    for size in range(20, len(VALID), 4):
        data = bytearray(VALID[:size])
        struct.pack_into("!H", data, 2, size - 20)
        if size in boundaries:  # a shorter but well-formed message
            parse_message(bytes(data))
            continue
        with pytest.raises(StunParseError):
            parse_message(bytes(data), check_fingerprint=False)


@pytest.mark.parametrize("cookie", [0, 0x2112A443, 0x42A41221, 0xFFFFFFFF])
def test_bad_cookie(cookie: int) -> None:
    with pytest.raises(StunParseError, match="cookie"):
        parse_message(_header(0x0001, 0, cookie=cookie))


@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 7])
def test_length_not_multiple_of_four(length: int) -> None:
    # The datagram really is that long, so only the alignment rule can reject it.
    with pytest.raises(StunParseError, match="multiple of 4"):
        parse_message(_header(0x0001, length) + bytes(length))


@pytest.mark.parametrize("delta", [-8, -4, 4, 8, 0x100])
def test_length_mismatch(delta: int) -> None:
    data = bytearray(VALID)
    struct.pack_into("!H", data, 2, len(VALID) - 20 + delta)
    with pytest.raises(StunParseError, match="length"):
        parse_message(bytes(data))
    with pytest.raises(StunParseError):
        parse_message(VALID + bytes(4))  # trailing bytes beyond the length field


@pytest.mark.parametrize("first", [0x40, 0x80, 0xC0])
def test_top_bits_must_be_zero(first: int) -> None:
    data = bytearray(encode_message(c.BINDING, c.REQUEST, TXID))
    data[0] |= first
    with pytest.raises(StunParseError):
        parse_message(bytes(data))
    assert not looks_like_stun(bytes(data))


def test_attribute_overrunning_the_message() -> None:
    body = struct.pack("!HH", c.USERNAME, 9) + b"abcd"
    with pytest.raises(StunParseError, match="claims"):
        parse_message(_raw(body))


def test_empty_message_and_looks_like_stun() -> None:
    msg = parse_message(_header(0x0001, 0))
    assert msg.attributes == []
    assert (msg.integrity_offset, msg.integrity_sha256_offset, msg.fingerprint_offset) == (-1,) * 3
    assert looks_like_stun(_header(0x0001, 0))
    assert not looks_like_stun(_header(0x0001, 0)[:19])
    assert not looks_like_stun(_header(0x0001, 0, cookie=0))
    assert not looks_like_stun(b"\x40\x00\x00\x04" + bytes(16))  # ChannelData


def test_encode_message_errors() -> None:
    for txid in (b"", bytes(11), bytes(13)):
        with pytest.raises(StunError):
            encode_message(c.BINDING, c.REQUEST, txid)
    with pytest.raises(StunError):
        encode_message(c.BINDING, c.REQUEST, TXID, [(c.DATA_ATTR, bytes(0x10000))])
    with pytest.raises(StunError):
        encode_message(c.BINDING, c.REQUEST, TXID, [(c.DATA_ATTR, bytes(0xFFF0))] * 2)
    # The largest value that fits still works.
    big = encode_message(c.SEND, c.INDICATION, TXID, [(c.DATA_ATTR, bytes(0xFFF8))])
    assert len(big) == 20 + 0xFFFC
    assert len(parse_message(big).attributes[0][1]) == 0xFFF8
    with pytest.raises(StunError):  # one more byte pads to 0x10000
        encode_message(c.SEND, c.INDICATION, TXID, [(c.DATA_ATTR, bytes(0xFFF9))])
