"""Rate limits and address checks key on the TCP peer; X-Forwarded-For counts from a trusted
proxy (--trusted-proxy) only."""

from __future__ import annotations

import json
from collections.abc import Callable

from iceward.api.client import ClientAddress
from tests.api.test_api import http
from tests.conftest import RunningServer
from tests.testpage.helpers import iceward
from tests.testpage.test_reports_api import VALID, request

MakeServer = Callable[..., RunningServer]


def post_from(server: RunningServer, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    status, _ = request(server.http_url + "/api/v1/reports", json.dumps(VALID).encode(), headers)
    return status


def link_scheme(server: RunningServer, forwarded_proto: str) -> str:
    """The scheme of the report link the API answers a request that names ``forwarded_proto``."""
    headers = {"X-Forwarded-Proto": forwarded_proto}
    status, doc = request(server.http_url + "/api/v1/reports", json.dumps(VALID).encode(), headers)
    assert status == 201, doc
    return str(doc["url"]).partition(":")[0]


def test_forwarded_for_does_not_get_past_the_report_limit(make_server: MakeServer) -> None:
    server = make_server(tls=False)
    assert link_scheme(server, "https") == "http"  # nor is X-Forwarded-Proto believed
    answers = [post_from(server, f"198.51.100.{i}") for i in range(1, 8)]
    assert 429 in answers, answers  # one bucket: the peer's, whatever the header says
    assert answers.count(201) <= 6, answers


def test_forwarded_for_believed_from_a_trusted_proxy(make_server: MakeServer) -> None:
    server = make_server("--trusted-proxy", "127.0.0.0/8", tls=False)
    # Each client its own bucket: eight clients behind the proxy, one report each.
    assert [post_from(server, f"198.51.100.{i}") for i in range(1, 9)] == [201] * 8
    # One client is limited, whichever trusted proxies its request passed through.
    chain = ["203.0.113.9", "203.0.113.9, 127.0.0.5", "10.9.9.9, 203.0.113.9, 127.0.0.7"]
    answers = [post_from(server, chain[i % 3]) for i in range(8)]
    assert 429 in answers and answers.count(201) <= 6, answers
    # The proxy's X-Forwarded-Proto names the scheme of the links the API answers with.
    assert link_scheme(server, "https") == "https"
    # The admin allow-list judges the client too, not the proxy on loopback.
    admin = iceward("keys", "add", "ops", "--admin", "--data-dir", str(server.data_dir))
    key = admin.stdout.strip()
    assert http(server, "GET", "/admin/v1/users", key=key)[0] == 200
    status, doc, _ = http(
        server, "GET", "/admin/v1/users", key=key, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert status == 403, doc


def test_the_client_address_decision() -> None:
    def scope(peer: str, *forwarded: str) -> dict[str, object]:
        headers = [(b"x-forwarded-for", f.encode()) for f in forwarded]
        return {"type": "http", "client": (peer, 40000), "headers": headers}

    untrusting = ClientAddress()
    assert untrusting(scope("127.0.0.1", "198.51.100.1")) == "127.0.0.1"
    trusting = ClientAddress(["127.0.0.0/8", "10.0.0.0/8"])
    assert trusting(scope("127.0.0.1")) == "127.0.0.1"
    assert trusting(scope("127.0.0.1", "198.51.100.1")) == "198.51.100.1"
    # Right-most address that is not a trusted proxy; what the client wrote to its left is not.
    assert trusting(scope("127.0.0.1", "192.0.2.66, 198.51.100.1, 10.1.1.1")) == "198.51.100.1"
    assert trusting(scope("127.0.0.1", "192.0.2.66", "198.51.100.1")) == "198.51.100.1"
    assert trusting(scope("127.0.0.1", "[2001:db8::1]:443")) == "2001:db8::1"
    assert trusting(scope("127.0.0.1", "10.1.1.1, 10.2.2.2")) == "10.1.1.1"
    assert trusting(scope("127.0.0.1", "not-an-ip, 10.1.1.1")) == "10.1.1.1"
    # A peer outside the trusted ranges is the client, whatever it writes.
    assert trusting(scope("198.51.100.7", "127.0.0.1")) == "198.51.100.7"
