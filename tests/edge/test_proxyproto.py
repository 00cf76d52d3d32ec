"""The PROXY protocol parser and the TLS port's sniffing rules, without sockets.

The parser's contract for its reader: an answer of None (incomplete) means every byte given
belongs to the header, so consuming them never takes a byte of what follows; a complete header
says exactly how long it was; anything else is a ProxyError with a reason, never another
exception. Hypothesis checks that contract on arbitrary bytes and on every cut of real headers.
"""

from __future__ import annotations

import ipaddress
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceward.net import proxyproto, sniff
from iceward.net.proxyproto import ProxyError, ProxyHeader, parse

SIG = proxyproto.V2_SIGNATURE
AFTER = b"\x16\x03\x01\x02\x00"  # what follows: a ClientHello's first bytes


def v2(
    source: str = "203.0.113.7",
    sport: int = 51000,
    command: int = 1,
    tlvs: bytes = b"",
    family: int | None = None,
    length: int | None = None,
) -> bytes:
    ip = ipaddress.ip_address(source)
    dest = ipaddress.ip_address("192.0.2.1" if ip.version == 4 else "2001:db8::1")
    block = ip.packed + dest.packed + struct.pack("!HH", sport, 443)
    fam = family if family is not None else (0x11 if ip.version == 4 else 0x21)
    body = block + tlvs
    size = len(body) if length is None else length
    return SIG + bytes([0x20 | command, fam]) + struct.pack("!H", size) + body


def test_v1_tcp4_tcp6_and_unknown() -> None:
    line = b"PROXY TCP4 198.51.100.22 192.0.2.1 35646 443\r\n"
    assert parse(line + AFTER) == ProxyHeader(("198.51.100.22", 35646), len(line), 1)
    line6 = b"PROXY TCP6 2001:db8::22 2001:db8::1 35646 443\r\n"
    assert parse(line6) == ProxyHeader(("2001:db8::22", 35646), len(line6), 1)
    unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse(unknown + AFTER) == ProxyHeader(None, len(unknown), 1)


def test_v2_ipv4_ipv6_local_and_tlvs_skipped() -> None:
    header = v2()
    assert parse(header + AFTER) == ProxyHeader(("203.0.113.7", 51000), len(header), 2)
    six = v2("2001:db8::7", 4000)
    assert parse(six) == ProxyHeader(("2001:db8::7", 4000), len(six), 2)
    # An ALPN TLV and a NOOP: walked over, not used.
    tlvs = b"\x01\x00\x08http/1.1" + b"\x04\x00\x03\x00\x00\x00"
    with_tlvs = v2(tlvs=tlvs)
    assert parse(with_tlvs + AFTER) == ProxyHeader(("203.0.113.7", 51000), len(with_tlvs), 2)
    local = SIG + b"\x20\x00\x00\x00"  # a health check: the sender speaks for itself
    assert parse(local + AFTER) == ProxyHeader(None, 16, 2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "missing"),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42", "missing"),  # a STUN request
        (b"PROXY TCP4 198.51.100.22 192.0.2.1 35646\r\n", "malformed"),
        (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "malformed"),
        (b"PROXY TCP4 198.51.100.22 192.0.2.1 65536 443\r\n", "malformed"),
        (b"PROXY TCP4 198.51.100.22 192.0.2.1 0443 443\r\n", "malformed"),
        (b"PROXY TCP4 198.51.100.22 192.0.2.1 1 2\n", "malformed"),
        (b"PROXY " + b"9" * 120, "malformed"),
        (v2(length=11), "malformed"),  # says less than the addresses take
        (v2(tlvs=b"\x01\x00\x09http/1.1"), "malformed"),  # a TLV longer than the header
        (v2(tlvs=b"\x01\x00"), "malformed"),  # a TLV cut short
        (v2(family=0x12), "unsupported"),  # UDP over a TCP listener
        (v2(family=0x31), "unsupported"),  # AF_UNIX
        (SIG + b"\x22\x11\x00\x0c" + bytes(12), "malformed"),  # command 2
        (SIG + b"\x11\x11\x00\x0c" + bytes(12), "malformed"),  # version 1 in a v2 header
        (SIG + b"\x21\x11\xff\xff", "too_long"),  # a lying length is refused before waiting
    ],
)
def test_refusals_name_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyError) as caught:
        parse(data)
    assert caught.value.reason == reason


@pytest.mark.parametrize("header", [v2(), v2("2001:db8::7"), b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
def test_every_cut_of_a_header_is_incomplete_never_wrong(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
    assert parse(header) is not None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyError as exc:
        assert exc.reason in ("missing", "malformed", "unsupported", "too_long")
        return
    if header is not None:
        assert 0 < header.length <= min(len(data), proxyproto.MAX_HEADER)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([v2(), v2(tlvs=b"\x04\x00\x01\x00"), b"PROXY TCP6 ::1 ::2 7 8\r\n"]),
    st.binary(max_size=40),
    st.integers(0, 40),
)
def test_headers_with_noise_after_or_bytes_flipped(base: bytes, tail: bytes, flip: int) -> None:
    """What follows never changes the header found; a flipped byte is a clean answer."""
    header = parse(base + tail)
    assert header is not None and header.length == len(base)
    damaged = bytearray(base)
    damaged[flip % len(base)] ^= 0xFF
    try:
        result = parse(bytes(damaged) + tail)
    except ProxyError:
        return
    assert result is None or result.length <= len(damaged) + len(tail)


def test_signature_match_decides_as_soon_as_it_can() -> None:
    assert proxyproto.signature_match(b"") is None
    assert proxyproto.signature_match(b"PRO") is None
    assert proxyproto.signature_match(b"PROXY ") is True
    assert proxyproto.signature_match(SIG[:5]) is None
    assert proxyproto.signature_match(SIG) is True
    assert proxyproto.signature_match(b"\x00\x01") is False
    assert proxyproto.signature_match(b"\x16\x03") is False
    assert proxyproto.signature_match(b"PUT ") is False


def test_routes_by_alpn_then_first_decrypted_bytes() -> None:
    assert sniff.route_alpn("stun.turn") == "turn"
    assert sniff.route_alpn("stun.nat-discovery") == "turn"
    assert sniff.route_alpn("http/1.1") == "http"
    assert sniff.route_alpn("h2") == "http"
    assert sniff.route_alpn(None) is None
    assert sniff.route_bytes(b"") is None
    assert sniff.route_bytes(b"\x00\x03\x00\x08\x21\x12") == "turn"  # STUN Allocate
    assert sniff.route_bytes(b"\x40\x00\x00\x04abcd") == "turn"  # ChannelData 0x4000
    assert sniff.route_bytes(b"\x4f\x10\x00\x04abcd") == "turn"  # ChannelData, 'O' then 0x10
    assert sniff.route_bytes(b"GET / HTTP/1.1\r\n") == "http"
    assert sniff.route_bytes(b"OPTIONS * HTTP/1.1\r\n") == "http"
    assert sniff.route_bytes(b"GE") is None  # could still be either
    assert sniff.route_bytes(b"AB ") == "turn"  # two letters are no method
    assert sniff.route_bytes(b"ABCDEFGHIJKL") == "turn"


def client_hello(alpn: list[str] | None) -> bytes:
    """A real ClientHello, as Python's TLS client writes it (no socket: memory BIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    ("alpn", "http"),
    [(["h2", "http/1.1"], True), (["http/1.1"], True), (["stun.turn"], False), (None, False)],
)
def test_hello_alpn_reads_a_real_client_hello(alpn: list[str] | None, http: bool) -> None:
    hello = client_hello(alpn)
    assert sniff.hello_alpn(hello) == (alpn or [])
    assert sniff.hello_wants_http(sniff.hello_alpn(hello) or []) is http
    for cut in (0, 4, 5, len(hello) - 1):
        assert sniff.hello_alpn(hello[:cut]) is None
    assert sniff.hello_alpn(b"\x00\x01\x00\x00\x21\x12\xa4\x42") == []  # not TLS


BROWSER_HELLO = client_hello(["h2", "http/1.1"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 400))
def test_hello_alpn_never_crashes_on_damaged_hellos(noise: bytes, at: int) -> None:
    hello = bytearray(BROWSER_HELLO)
    hello[at % len(hello) : at % len(hello) + len(noise)] = noise
    answer = sniff.hello_alpn(bytes(hello))
    assert answer is None or isinstance(answer, list)
