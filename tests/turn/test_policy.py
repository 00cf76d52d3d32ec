"""The peer policy refuses internal ranges, including IPv4 hidden in IPv6, unless opened."""

from __future__ import annotations

import ipaddress

import pytest

from iceward.turn.policy import PeerPolicy, classify


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "never"),
        ("::", "never"),
        ("::1", "loopback"),
        ("10.20.30.40", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("100.64.1.1", "carrier-grade"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),
        ("2002:c0a8:101::1", "private"),
        ("::127.0.0.1", "loopback"),
        # SIIT IPv4-translated (RFC 6145)
        ("::ffff:0:7f00:1", "loopback"),
        ("::ffff:0:a9fe:a9fe", "metadata"),
        # local-use NAT64 (RFC 8215), each RFC 6052 prefix length it allows
        ("64:ff9b:1:7f00:0:100::", "loopback"),  # /48: 127.0 | u | 0.1
        ("64:ff9b:1:200a:1:203:400:0", "private"),  # /56: 10 | u | 1.2.3
        ("64:ff9b:1::c0:a801:100:0", "private"),  # /64: u | 192.168.1.1
        ("64:ff9b:1::7f00:1", "loopback"),  # /96
        # Teredo: the client's IPv4 obfuscated (bitwise NOT) in the low 32 bits
        ("2001:0:c000:201:0:f227:80ff:fffe", "loopback"),  # client 127.0.0.1
        ("2001:0:c000:201:0:f227:5601:5601", "metadata"),  # client 169.254.169.254
        ("not-an-ip", "not an IP"),
    ],
)
def test_internal_addresses_are_refused_by_default(host: str, why: str) -> None:
    decision = PeerPolicy().check(host)
    assert not decision.allowed
    assert why in decision.reason


@pytest.mark.parametrize(
    "host",
    [
        "198.51.100.1",
        "203.0.113.9",
        "8.8.8.8",
        "2a00:1450::1",
        "64:ff9b:1::808:808",  # local-use NAT64 of a public address
        "2001:0:c000:201:0:f227:f7f7:f7f7",  # Teredo client 8.8.8.8
    ],
)
def test_public_addresses_are_allowed(host: str) -> None:
    assert PeerPolicy().check(host).allowed


def test_allow_opens_a_range_and_deny_closes_one() -> None:
    policy = PeerPolicy(allow=["127.0.0.0/8"], deny=["198.51.100.0/24"])
    assert policy.check("127.0.0.1").allowed
    assert policy.check("::ffff:127.0.0.1").allowed  # judged as the IPv4 it reaches
    assert not policy.check("10.0.0.1").allowed
    assert not policy.check("198.51.100.5").allowed
    assert policy.check("203.0.113.5").allowed


@pytest.mark.parametrize("cidr", ["0.0.0.0/8", "0.0.0.0/0", "::/0", "::/128"])
def test_never_allowed_ranges_cannot_be_opened(cidr: str) -> None:
    with pytest.raises(ValueError, match="never"):
        PeerPolicy(allow=[cidr])


def test_the_servers_own_listening_addresses_are_refused_even_when_allowed() -> None:
    policy = PeerPolicy(allow=["127.0.0.0/8", "::1/128"])
    policy.set_own_addresses(["127.0.0.1", "198.51.100.4"], [3478, 5349])
    for host, port in [("127.0.0.1", 3478), ("::ffff:127.0.0.1", 5349), ("198.51.100.4", 3478)]:
        decision = policy.check(host, port)
        assert not decision.allowed and "own address" in decision.reason, (host, port)
    assert policy.check("127.0.0.1", 40000).allowed  # another port of the host: a peer like any
    assert policy.check("127.0.0.2", 3478).allowed  # another local IP the server is not on
    assert policy.check("127.0.0.1").allowed  # a permission is by IP: only ports are own


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "cloud metadata service"),
        ("10.1.2.3", "private network (RFC 1918)"),
        ("100.64.0.1", "carrier-grade NAT shared space (RFC 6598)"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:192.168.1.1", "private network (RFC 1918)"),
        ("64:ff9b::a00:1", "private network (RFC 1918)"),
        ("2002:7f00:1::", "loopback"),
        ("2001:0:c000:201:0:f227:5601:5601", "cloud metadata service"),  # Teredo
        ("203.0.113.5", None),
        ("2001:db8::1", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_classify_names_the_denied_range_an_address_reaches(ip: str, why: str | None) -> None:
    assert classify(ip) == why


def test_classify_takes_parsed_addresses_and_refuses_text_that_is_no_address() -> None:
    assert classify(ipaddress.ip_address("::1")) == "loopback"
    with pytest.raises(ValueError):
        classify("turn.example.org")
