"""One answer to "can peers elsewhere reach this host?", from the server's peer-policy table."""

from __future__ import annotations

import pytest

from iceward.diagnose.address import internal_reason, is_internal


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("localhost", True),
        ("a1b2c3.local", True),
        ("app.localhost", True),
        ("[::1]", True),
        ("127.0.0.1", True),
        ("100.64.0.1", True),
        ("fd00::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:10.0.0.1", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of the metadata address
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("224.0.0.251", True),
        ("192.0.2.1", False),  # documentation ranges stand for the internet in labs
        ("2001:db8::1", False),
        ("64:ff9b::cb00:7109", False),
        ("turn.example.org", False),
        ("not an address", False),
        (None, False),
        ("", False),
    ],
)
def test_is_internal(host: str | None, internal: bool) -> None:
    assert is_internal(host) is internal


def test_the_reason_is_the_peer_policys() -> None:
    assert internal_reason("2002:a9fe:a9fe::") == "cloud metadata service"
    assert internal_reason("printer.local") == "mDNS name (the local network only)"
