"""Bounded fuzzing: hostile bytes may only ever produce StunParseError.

Random bytes, random bodies behind a valid header, and mutations of valid messages (bit flips,
byte edits, truncations, header and attribute length edits, insertions, deletions) go through
parse_message, then every typed decoder is applied to every attribute value of whatever parsed,
and verify_integrity is run. StunParseError is caught; any other exception fails the test. The
whole module is sized to stay well under 20 s.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iceward.stun import constants as c
from iceward.stun.attributes import (
    MAX_NONCE,
    MAX_REALM,
    MAX_REASON,
    MAX_SOFTWARE,
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
    encode_error_code,
    encode_one_byte,
    encode_password_algorithm,
    encode_u32,
    encode_u64,
    encode_unknown_attributes,
    encode_xor_address,
)
from iceward.stun.integrity import verify_integrity
from iceward.stun.message import (
    Message,
    StunParseError,
    encode_message,
    looks_like_stun,
    parse_message,
)

from .test_rfc5769 import VECTORS

TXID = bytes.fromhex("0102030405060708090a0b0c")
KEY = b"fuzz-key"

Decoder = Callable[[bytes, bytes], object]

#: Every typed decoder in attributes.py, as f(value, transaction_id).
DECODERS: list[Decoder] = [
    lambda v, _t: decode_address(v),
    decode_xor_address,
    lambda v, _t: decode_error_code(v),
    lambda v, _t: decode_address_error_code(v),
    lambda v, _t: decode_text(v, MAX_USERNAME, "USERNAME"),
    lambda v, _t: decode_text(v, MAX_REALM, "REALM"),
    lambda v, _t: decode_text(v, MAX_NONCE, "NONCE"),
    lambda v, _t: decode_text(v, MAX_SOFTWARE, "SOFTWARE"),
    lambda v, _t: decode_text(v, MAX_REASON, "reason"),
    lambda v, _t: decode_u32(v),
    lambda v, _t: decode_u64(v),
    lambda v, _t: decode_channel_number(v),
    lambda v, _t: decode_one_byte(v, "REQUESTED-TRANSPORT"),
    lambda v, _t: decode_even_port(v),
    lambda v, _t: decode_unknown_attributes(v),
    lambda v, _t: decode_password_algorithms(v),
    lambda v, _t: decode_icmp(v),
]


def _seeds() -> list[bytes]:
    """Valid messages covering every attribute shape the decoders know."""
    attrs = [
        (c.USERNAME, b"alice"),
        (c.REALM, b"example.org"),
        (c.NONCE, b"f//499k954d6OL34oL9FSTvy64sA"),
        (c.REQUESTED_TRANSPORT, encode_one_byte(c.TRANSPORT_UDP)),
        (c.LIFETIME, encode_u32(600)),
        (c.EVEN_PORT, b"\x80"),
        (c.RESERVATION_TOKEN, encode_u64(0x0102030405060708)),
        (c.XOR_PEER_ADDRESS, encode_xor_address(("2001:db8::1", 9), TXID)),
        (c.XOR_RELAYED_ADDRESS, encode_xor_address(("198.51.100.4", 50000), TXID)),
        (c.ALTERNATE_SERVER, encode_address(("192.0.2.10", 3478))),
        (c.ERROR_CODE, encode_error_code(420)),
        (c.UNKNOWN_ATTRIBUTES, encode_unknown_attributes([0x7FFF, 0x0031, 0x0032])),
        (
            c.PASSWORD_ALGORITHMS,
            encode_password_algorithm(c.ALGORITHM_SHA256)
            + encode_password_algorithm(0x8001, b"xyz"),
        ),
        (c.SOFTWARE, b"iceward fuzz \xe2\x9c\x93"),
        (0x7FFF, b"unknown required"),
        (0xC0DE, b"unknown optional"),
    ]
    return [
        *VECTORS.values(),
        encode_message(c.ALLOCATE, c.REQUEST, TXID, attrs[:4], integrity_key=KEY, fingerprint=True),
        encode_message(
            c.ALLOCATE, c.ERROR, TXID, attrs, integrity_sha256_key=KEY, fingerprint=True
        ),
        encode_message(
            c.REFRESH, c.SUCCESS, TXID, attrs[4:9], integrity_key=KEY, integrity_sha256_key=KEY
        ),
        encode_message(c.BINDING, c.REQUEST, TXID),
        encode_message(c.DATA, c.INDICATION, TXID, [(c.DATA_ATTR, bytes(range(37)))]),
    ]


SEEDS = _seeds()


def _exercise(data: bytes) -> Message | None:
    """Parse and decode everything; return the message or None if it was (rightly) rejected."""
    looks_like_stun(data)
    try:
        msg = parse_message(data)
    except StunParseError:
        msg = None
    try:
        lenient = parse_message(data, check_fingerprint=False)
    except StunParseError:
        assert msg is None, "rejected only when FINGERPRINT checking is off"
        return None
    _decode_all(lenient)
    return lenient


def _decode_all(msg: Message) -> None:
    txid = msg.transaction_id
    assert len(txid) == 12
    for attr_type, value in msg.attributes:
        assert isinstance(value, bytes)
        assert 0 <= attr_type <= 0xFFFF
        for decode in DECODERS:
            with contextlib.suppress(StunParseError):
                decode(value, txid)
    assert isinstance(verify_integrity(msg, KEY), bool)
    assert isinstance(verify_integrity(msg, b""), bool)
    # Whatever parsed re-encodes and re-parses to the same attribute list.
    again = parse_message(
        encode_message(msg.method, msg.cls, txid, msg.attributes), check_fingerprint=False
    )
    assert again.attributes == msg.attributes
    assert (again.method, again.cls) == (msg.method, msg.cls)


# ---- mutation strategies ---------------------------------------------------------------------


def _flip(data: bytearray, pos: int, bit: int) -> None:
    if data:
        data[pos % len(data)] ^= 1 << bit


def _set_byte(data: bytearray, pos: int, value: int) -> None:
    if data:
        data[pos % len(data)] = value


def _truncate(data: bytearray, size: int) -> None:
    del data[size % (len(data) + 1) :]


def _set_length(data: bytearray, length: int) -> None:
    if len(data) >= 4:
        struct.pack_into("!H", data, 2, length)


def _attribute_offsets(data: bytearray) -> list[int]:
    offsets = []
    pos = c.HEADER_LENGTH
    while pos + 4 <= len(data):
        offsets.append(pos)
        pos += 4 + ((struct.unpack_from("!H", data, pos + 2)[0] + 3) & ~3)
    return offsets


def _set_attr_length(data: bytearray, index: int, length: int) -> None:
    """Rewrite the length of the index-th attribute header found by walking the message."""
    offsets = _attribute_offsets(data)
    if offsets:
        struct.pack_into("!H", data, offsets[index % len(offsets)] + 2, length)


def _set_attr_type(data: bytearray, pos: int, attr_type: int) -> None:
    offsets = _attribute_offsets(data)
    if offsets:
        struct.pack_into("!H", data, offsets[pos % len(offsets)], attr_type)


def _resize_attr(data: bytearray, index: int, size: int, fill: int) -> None:
    """Structure-aware edit: give one attribute a value of another size, keeping the framing
    consistent (padding and header length fixed), so odd-sized values reach the decoders."""
    offsets = [o for o in _attribute_offsets(data) if o + 4 <= len(data)]
    if not offsets:
        return
    pos = offsets[index % len(offsets)]
    old_len = struct.unpack_from("!H", data, pos + 2)[0]
    end = min(pos + 4 + ((old_len + 3) & ~3), len(data))
    value = bytes(data[pos + 4 : pos + 4 + min(old_len, size)])
    value += bytes([fill]) * (size - len(value))
    data[pos:end] = struct.pack("!HH", struct.unpack_from("!H", data, pos)[0], size) + value
    data[pos + 4 + size : pos + 4 + size] = bytes(-size & 3)
    _fix_length(data)


def _insert(data: bytearray, pos: int, chunk: bytes) -> None:
    at = pos % (len(data) + 1)
    data[at:at] = chunk


def _delete(data: bytearray, pos: int, size: int) -> None:
    if data:
        at = pos % len(data)
        del data[at : at + size]


def _fix_length(data: bytearray) -> None:
    """Make the header length agree with the datagram, so parsing goes past the header checks."""
    if len(data) >= 4:
        struct.pack_into("!H", data, 2, max(len(data) - c.HEADER_LENGTH, 0) & 0xFFFF)


interesting_lengths = st.one_of(
    st.sampled_from([0, 1, 3, 4, 5, 8, 16, 19, 20, 21, 24, 32, 36, 0x7FFF, 0xFFFC, 0xFFFF]),
    st.integers(0, 0xFFFF),
)
interesting_types = st.one_of(st.sampled_from(sorted(c.KNOWN_ATTRIBUTES)), st.integers(0, 0xFFFF))
positions = st.integers(0, 4096)

mutations = st.one_of(
    st.tuples(st.just(_flip), positions, st.integers(0, 7)),
    st.tuples(st.just(_set_byte), positions, st.integers(0, 255)),
    st.tuples(st.just(_truncate), positions),
    st.tuples(st.just(_set_length), interesting_lengths),
    st.tuples(st.just(_set_attr_length), positions, interesting_lengths),
    st.tuples(st.just(_set_attr_type), positions, interesting_types),
    # Listed twice: one_of picks branches uniformly, and this is the edit that keeps framing valid.
    st.tuples(st.just(_resize_attr), positions, st.integers(0, 40), st.integers(0, 255)),
    st.tuples(st.just(_resize_attr), positions, st.integers(0, 40), st.integers(0, 255)),
    st.tuples(st.just(_insert), positions, st.binary(min_size=1, max_size=12)),
    st.tuples(st.just(_delete), positions, st.integers(1, 12)),
)

FUZZ = settings(
    max_examples=2500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _exercise(data)


@FUZZ
@given(
    st.integers(0, 0x3FFF),
    st.binary(min_size=12, max_size=12),
    st.lists(st.binary(min_size=4, max_size=4), max_size=60).map(b"".join),
)
def test_random_body_behind_valid_header(msg_type: int, txid: bytes, body: bytes) -> None:
    """A correct header and 4-aligned length, so every input reaches the attribute loop."""
    _exercise(struct.pack("!HHI12s", msg_type, len(body), c.MAGIC_COOKIE, txid) + body)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(mutations, min_size=1, max_size=6),
    st.booleans(),
)
def test_mutated_valid_messages(
    seed: bytes, edits: list[tuple[object, ...]], fix_length: bool
) -> None:
    data = bytearray(seed)
    for func, *args in edits:
        func(data, *args)  # type: ignore[operator]
    if fix_length:
        _fix_length(data)
    _exercise(bytes(data))


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64), st.binary(min_size=12, max_size=12))
def test_decoders_on_arbitrary_values(value: bytes, txid: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(StunParseError):
            decode(value, txid)


def test_seeds_are_valid() -> None:
    """The mutation corpus must start from messages that parse, or the fuzzing proves little."""
    for seed in SEEDS:
        msg = _exercise(seed)
        assert msg is not None
        assert parse_message(seed).attributes == msg.attributes
