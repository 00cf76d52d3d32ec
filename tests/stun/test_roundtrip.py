"""Hypothesis properties: what encode_message builds, parse_message gives back exactly."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from iceward.stun import constants as c
from iceward.stun.attributes import (
    decode_address,
    decode_xor_address,
    encode_address,
    encode_xor_address,
)
from iceward.stun.integrity import verify_integrity
from iceward.stun.message import (
    encode_message,
    message_type,
    parse_message,
    split_message_type,
)

SEALS = frozenset({c.MESSAGE_INTEGRITY, c.MESSAGE_INTEGRITY_SHA256, c.FINGERPRINT})

methods = st.integers(0, 0xFFF)
classes = st.sampled_from([c.REQUEST, c.INDICATION, c.SUCCESS, c.ERROR])
txids = st.binary(min_size=12, max_size=12)
attr_types = st.one_of(
    st.sampled_from(sorted(c.KNOWN_ATTRIBUTES - SEALS)),
    st.integers(0, 0xFFFF).filter(lambda t: t not in SEALS),
)
# Values up to 80 bytes, every length mod 4 so every padding size occurs.
attributes = st.lists(st.tuples(attr_types, st.binary(max_size=80)), max_size=12)
keys = st.binary(min_size=1, max_size=64)
ports = st.integers(0, 0xFFFF)
ip_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


def _same_hmac_key(a: bytes, b: bytes) -> bool:
    """HMAC zero-pads keys up to the 64-byte block, so b"k" and b"k\x00" are the same key."""
    return a.rstrip(b"\x00") == b.rstrip(b"\x00")


def _expected_unknown(attrs: list[tuple[int, bytes]]) -> tuple[int, ...]:
    return tuple(t for t, _ in attrs if t < 0x8000 and t not in c.KNOWN_ATTRIBUTES)


@settings(max_examples=400)
@given(methods, classes)
def test_message_type_round_trip(method: int, cls: int) -> None:
    msg_type = message_type(method, cls)
    assert msg_type < 0x4000
    assert split_message_type(msg_type) == (method, cls)


@settings(max_examples=400)
@given(methods, classes, txids, attributes)
def test_encode_parse_round_trip(
    method: int, cls: int, txid: bytes, attrs: list[tuple[int, bytes]]
) -> None:
    data = encode_message(method, cls, txid, attrs)
    assert len(data) % 4 == 0
    msg = parse_message(data)
    assert msg.method == method
    assert msg.cls == cls
    assert msg.transaction_id == txid
    assert msg.attributes == attrs
    assert msg.raw == data
    assert msg.unknown_required == _expected_unknown(attrs)
    assert (msg.integrity_offset, msg.integrity_sha256_offset, msg.fingerprint_offset) == (-1,) * 3
    # Re-encoding the parsed message is byte-identical (padding is always zeros).
    assert encode_message(msg.method, msg.cls, msg.transaction_id, msg.attributes) == data
    for attr_type, value in attrs:
        assert msg.get(attr_type) == next(v for t, v in attrs if t == attr_type)
        assert value in msg.get_all(attr_type)
        assert msg.has(attr_type)


@settings(max_examples=300)
@given(methods, classes, txids, attributes, keys, keys)
def test_integrity_and_fingerprint_round_trip(
    method: int,
    cls: int,
    txid: bytes,
    attrs: list[tuple[int, bytes]],
    key: bytes,
    other: bytes,
) -> None:
    data = encode_message(method, cls, txid, attrs, integrity_key=key, fingerprint=True)
    msg = parse_message(data)  # checks FINGERPRINT
    assert (msg.method, msg.cls, msg.transaction_id) == (method, cls, txid)
    assert msg.attributes[:-2] == attrs
    assert [t for t, _ in msg.attributes[-2:]] == [c.MESSAGE_INTEGRITY, c.FINGERPRINT]
    assert msg.integrity_offset == len(data) - 32
    assert msg.fingerprint_offset == len(data) - 8
    assert verify_integrity(msg, key) is True
    if not _same_hmac_key(other, key):
        assert verify_integrity(msg, other) is False


@settings(max_examples=200)
@given(methods, classes, txids, attributes, keys, keys, st.booleans())
def test_both_integrities_round_trip(
    method: int,
    cls: int,
    txid: bytes,
    attrs: list[tuple[int, bytes]],
    key1: bytes,
    key256: bytes,
    fingerprint: bool,
) -> None:
    data = encode_message(
        method,
        cls,
        txid,
        attrs,
        integrity_key=key1,
        integrity_sha256_key=key256,
        fingerprint=fingerprint,
    )
    msg = parse_message(data)
    seals = 3 if fingerprint else 2
    assert msg.attributes[:-seals] == attrs
    assert msg.integrity_sha256_offset == len(data) - 36 - (8 if fingerprint else 0)
    assert msg.integrity_offset == msg.integrity_sha256_offset - 24
    assert verify_integrity(msg, key256) is True
    if not _same_hmac_key(key1, key256):
        assert verify_integrity(msg, key1) is False


@settings(max_examples=500)
@given(ip_addresses, ports, txids)
def test_xor_address_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, txid: bytes
) -> None:
    value = encode_xor_address((str(ip), port), txid)
    assert len(value) == (8 if ip.version == 4 else 20)
    host, decoded_port = decode_xor_address(value, txid)
    assert ipaddress.ip_address(host) == ip
    assert decoded_port == port
    # And through a whole message, the way a Binding success response carries it.
    data = encode_message(
        c.BINDING, c.SUCCESS, txid, [(c.XOR_MAPPED_ADDRESS, value)], fingerprint=True
    )
    msg = parse_message(data)
    carried = msg.get(c.XOR_MAPPED_ADDRESS)
    assert carried == value
    host, decoded_port = decode_xor_address(carried, msg.transaction_id)
    assert (ipaddress.ip_address(host), decoded_port) == (ip, port)


@settings(max_examples=300)
@given(ip_addresses, ports)
def test_address_round_trip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    host, decoded_port = decode_address(encode_address((str(ip), port)))
    assert (ipaddress.ip_address(host), decoded_port) == (ip, port)
