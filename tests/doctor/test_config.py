"""Config lint: shapes, URL syntax (RFC 7064/7065), credentials, duplicates."""

from __future__ import annotations

import json

import pytest

from iceward.diagnose.iceurl import UrlError, parse_url
from iceward.doctor.config import load_config


def test_url_defaults_and_transports() -> None:
    assert (parse_url("stun:example.org").port, parse_url("stun:example.org").transport) == (
        3478,
        "udp",
    )
    turns = parse_url("turns:turn.example.org")
    assert (turns.port, turns.transport) == (5349, "tls")
    tcp = parse_url("turn:[2001:db8::1]:3479?transport=tcp")
    assert (tcp.host, tcp.port, tcp.transport, tcp.endpoint) == (
        "2001:db8::1",
        3479,
        "tcp",
        "[2001:db8::1]:3479",
    )
    assert parse_url("turns:h:443?transport=tcp").transport == "tls"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.org", "unknown scheme"),
        ("turn://example.org", "'//'"),
        ("turn:user@example.org", "user@host"),
        ("turn:example.org?transport=sctp", "transport='sctp'"),
        ("turn:example.org?foo=bar", "unknown query"),
        ("turns:example.org?transport=udp", "DTLS"),
        ("stun:example.org?transport=udp", "RFC 7064"),
        ("turn:example.org:70000", "port '70000'"),
        ("turn:example.org:", "without a port"),
        ("turn:2001:db8::1", "brackets"),
        ("turn:[2001:db8::1", "unclosed"),
        ("turn:exa mple.org", "not a valid host"),
        ("turn:", "no host"),
    ],
)
def test_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(UrlError, match=reason.replace("(", r"\(").replace("?", r"\?")):
        parse_url(url)


def test_accepted_shapes() -> None:
    servers = [{"urls": "stun:s.example.org"}]
    for doc in (servers, {"iceServers": servers}, {"iceServers": servers, "bundlePolicy": "max"}):
        config = load_config(json.dumps(doc))
        assert [u.raw for u in config.urls] == ["stun:s.example.org"]
        assert not config.issues
    rest_api = {"username": "1:u", "password": "p", "ttl": 86400, "uris": ["turn:t.example.org"]}
    config = load_config(json.dumps(rest_api))
    assert config.turn_urls[0].credential is not None
    assert config.turn_urls[0].credential.rest_expiry == 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json at all", "not JSON"),
        ('"stun:example.org"', "expected an iceServers array"),
        ('{"servers": []}', "without 'iceServers'"),
        ('{"iceServers": {"urls": "stun:x"}}', "must be an array"),
        ("[]", "is empty"),
        ('["stun:example.org"]', "must be an object"),
        ('[{"username": "u"}]', "has no 'urls'"),
        ('[{"url": "stun:example.org"}]', "removed 'url' key"),
        ('[{"urls": []}]', "non-empty array"),
        ('[{"urls": ["turn:t.example.org"]}]', "no username or credential"),
        (
            '[{"urls": ["turn:t.example.org"], "username": "u", "password": "p"}]',
            "RTCIceServer wants 'credential'",
        ),
        ('[{"urls": ["turn:t.example.org"], "username": "", "credential": "p"}]', "empty username"),
        ('[{"urls": ["turn:t.example.org"], "username": 5, "credential": "p"}]', "must be strings"),
        ('[{"urls": "stun:s", "credentialType": "oauth"}]', "only 'password'"),
        ('{"iceServers": [{"urls": "stun:s"}], "iceTransportPolicy": "relayed"}', "not 'all'"),
        ('[{"urls": ["turn:bad host"], "username": "u", "credential": "p"}]', "SyntaxError"),
    ],
)
def test_shape_errors(doc: str, message: str) -> None:
    config = load_config(doc)
    errors = [i.message for i in config.issues if i.severity == "error"]
    assert any(message in e for e in errors), errors


def test_a_port_of_non_ascii_digits_is_an_issue_not_a_crash() -> None:
    config = load_config(json.dumps([{"urls": "stun:s.example.org:\u00b2"}]))
    assert not config.urls
    assert [i.message for i in config.issues] == [
        "'stun:s.example.org:\u00b2': port '\u00b2' is not a number from 1 to 65535; "
        "RTCPeerConnection throws SyntaxError, so no call starts"
    ]


def test_missing_credential_makes_turn_unusable() -> None:
    config = load_config('[{"urls": ["turn:t.example.org", "stun:s.example.org"]}]')
    assert config.turn_urls == []
    assert config.unusable_turn == ["turn:t.example.org"]
    assert [u.raw for u in config.stun_urls] == ["stun:s.example.org"]


def test_duplicates_and_many_urls_are_warnings() -> None:
    urls = [f"stun:s{i}.example.org" for i in range(8)] + ["stun:s0.example.org:3478"]
    config = load_config(json.dumps([{"urls": urls}]))
    warnings = [i.message for i in config.issues if i.severity == "warning"]
    assert any("duplicates 'stun:s0.example.org'" in w for w in warnings)
    assert any("9 URLs" in w for w in warnings)
    assert not [i for i in config.issues if i.severity == "error"]


def test_rest_usernames_decoded() -> None:
    doc = [
        {"urls": "turn:a.example.org", "username": "1795421842:bob", "credential": "x"},
        {"urls": "turn:b.example.org", "username": "1795421842000:bob", "credential": "x"},
        {"urls": "turn:c.example.org", "username": "bob", "credential": "x"},
    ]
    creds = [u.credential for u in load_config(json.dumps(doc)).turn_urls]
    assert creds[0] is not None and (creds[0].rest_expiry, creds[0].rest_user) == (
        1795421842,
        "bob",
    )
    assert creds[1] is not None and creds[1].expiry_in_milliseconds
    assert creds[2] is not None and creds[2].rest_expiry is None
