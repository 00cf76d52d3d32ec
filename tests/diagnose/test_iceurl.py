"""One STUN/TURN URL parser: strict as a browser (the doctor's lint), lenient for dumps."""

from __future__ import annotations

import pytest

from iceward.diagnose.iceurl import read_url, safe_url


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stun:stun.example.org", ("stun", "stun.example.org", 3478, "udp")),
        ("turn:198.51.100.7:3478?transport=udp", ("turn", "198.51.100.7", 3478, "udp")),
        ("TURN:h.example:80?TRANSPORT=TCP", ("turn", "h.example", 80, "tcp")),
        ("turns:[2001:db8::1]:443?transport=tcp", ("turns", "2001:db8::1", 443, "tls")),
        ("turns:t.example", ("turns", "t.example", 5349, "tls")),
        # what a browser refuses, read as far as it goes
        ("turn:user@h.example:3479", ("turn", "h.example", 3479, "udp")),
        ("stun://h.example:19302", ("stun", "h.example", 19302, "udp")),
        ("turn:2001:db8::1", ("turn", "2001:db8::1", 3478, "udp")),
        ("turn:[2001:db8::1", ("turn", "2001:db8::1", 3478, "udp")),
        ("turn:h.example:99999", ("turn", "h.example", 3478, "udp")),
        ("turn:h.example:\u00b2", ("turn", "h.example", 3478, "udp")),  # a digit int() refuses
        ("turn:", ("turn", "", 3478, "udp")),
    ],
)
def test_read_url_is_lenient(raw: str, expected: tuple[str, str, int, str]) -> None:
    url = read_url(raw)
    assert url is not None
    assert (url.scheme, url.host, url.port, url.transport) == expected


@pytest.mark.parametrize("raw", ["https://example.org", "example.org:3478", ""])
def test_read_url_knows_only_stun_and_turn(raw: str) -> None:
    assert read_url(raw) is None


def test_safe_url_drops_credentials() -> None:
    assert safe_url("turn:user:secret@h.example:3478?transport=tcp") == (
        "turn:h.example:3478?transport=tcp"
    )
    assert safe_url("stun:h.example") == "stun:h.example"
