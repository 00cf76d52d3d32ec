"""The test page's HTTP side against a real server: tokens, findings, report validation, limits."""

from __future__ import annotations

import copy
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from iceward.diagnose.findings import CODES
from iceward.testpage.tokens import check_token, mint_token
from tests.conftest import RunningServer
from tests.testpage.helpers import iceward, make_link

VALID: dict[str, Any] = {
    "format": "iceward-test-report",
    "version": 1,
    "createdAt": "2026-11-22T10:00:00Z",
    "source": "pasted",
    "summary": "TURN over UDP works and relays data.",
    "urls": ["turn:198.51.100.7:3478?transport=udp"],
    "findings": [
        {
            "code": "no-tls-443",
            "severity": "warning",
            "title": CODES["no-tls-443"].title,
            "evidence": ["no turns: URL on port 443"],
            "fix": CODES["no-tls-443"].fix,
        }
    ],
    "rows": [
        {
            "url": "turn:198.51.100.7:3478?transport=udp",
            "kind": "turn",
            "transport": "udp",
            "status": "ok",
            "host": 1,
            "srflx": 1,
            "relay": 1,
            "relayProtocol": "udp",
            "relayAddress": "198.51.100.7",
            "errors": [],
            "datapath": {"connected": True, "sent": 20, "delivered": 20, "lost": 0,
                         "rttP50": 3.0, "rttP95": 5.0, "selected": "relay", "error": None},
            "note": "",
        }
    ],
    "facts": {"userAgent": "test", "getUserMedia": "not-asked", "mdnsHost": True, "ipv6": False,
              "hostCandidates": 1},
    "allPolicy": None,
    "getStats": [{"id": "T01", "type": "transport", "timestamp": 1.0}],
}  # fmt: skip


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def post_report(server: RunningServer, report: Any) -> tuple[int, Any]:
    body = report if isinstance(report, bytes) else json.dumps(report).encode()
    return request(server.http_url + "/api/v1/reports", body)


def stored_ids(server: RunningServer) -> list[str]:
    out = iceward("reports", "list", "--json", "--data-dir", str(server.data_dir)).stdout
    return [r["id"] for r in json.loads(out)]


def test_malformed_reports_refused_and_nothing_stored(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(tls=False)
    unknown_code = copy.deepcopy(VALID)
    unknown_code["findings"][0]["code"] = "made-up"
    with_credential = copy.deepcopy(VALID)
    with_credential["getStats"][0]["credential"] = "s3cret"
    extra_field = {**VALID, "iceServers": [{"urls": ["turn:x"], "credential": "s3cret"}]}
    cases: list[tuple[Any, int]] = [
        (b"{not json", 422),
        ([1, 2, 3], 422),
        ({**VALID, "format": "something-else"}, 422),
        (unknown_code, 422),
        (with_credential, 422),
        (extra_field, 422),
        ({**VALID, "summary": "x" * 100_000}, 422),
        (json.dumps({**VALID, "pad": "x" * 300_000}).encode(), 413),
    ]
    for body, expected in cases[:4]:
        status, answer = post_report(server, body)
        assert status == expected, (body if isinstance(body, bytes) else "", answer)
    assert stored_ids(server) == []
    # A second server for the rest: the first one's rate limit (5 in a burst) is spent.
    server = make_server(tls=False)
    for body, expected in cases[4:]:
        status, answer = post_report(server, body)
        assert status == expected, answer
    assert stored_ids(server) == []


def test_reports_rate_limited_stored_and_served(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(tls=False)
    answers = [post_report(server, VALID) for _ in range(8)]
    created = [a for s, a in answers if s == 201]
    limited = [s for s, _ in answers if s == 429]
    assert 5 <= len(created) <= 6 and limited, answers
    assert sorted(stored_ids(server)) == sorted(a["id"] for a in created)
    first = created[0]
    assert first["url"] == f"{server.http_url}/reports/{first['id']}"
    status, report = request(f"{server.http_url}/api/v1/reports/{first['id']}")
    assert status == 200 and report["rows"] == VALID["rows"] and report["id"] == first["id"]
    assert request(f"{server.http_url}/api/v1/reports/nope")[0] == 404
    with urllib.request.urlopen(f"{server.http_url}/reports/{first['id']}", timeout=10) as resp:
        assert b"/test/static/test.js" in resp.read()
    shown = iceward("reports", "show", "nope", "--data-dir", str(server.data_dir), check=False)
    assert shown.returncode == 2 and "no report" in shown.stderr


def test_test_links_tokens_and_vocabulary(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(tls=False)
    link = make_link(server)
    assert link.startswith(f"{server.http_url}/test?t=")
    token = link.partition("?t=")[2]
    status, doc = request(f"{server.http_url}/api/v1/test-ice-servers?t={token}")
    assert status == 200, doc
    turn = next(s for s in doc["iceServers"] if "credential" in s)
    assert turn["username"].endswith(":test-page")
    assert doc["ttl"] <= 900
    # Tampered, foreign and expired tokens are refused.
    key = (server.data_dir / "test-link-key").read_bytes().strip()
    assert check_token(key, token) is not None
    expired = mint_token(key, 60, time.time() - 120)
    for bad in (token[:-2] + "xx", mint_token(b"other-key"), expired):
        assert request(f"{server.http_url}/api/v1/test-ice-servers?t={bad}")[0] == 401
    # The API key endpoint does not take a test token.
    status, _ = request(
        f"{server.http_url}/api/v1/ice-servers",
        json.dumps({"user": "x"}).encode(),
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 401
    # The admin API mints links too.
    admin = iceward("keys", "add", "ops", "--admin", "--data-dir", str(server.data_dir))
    status, made = request(
        f"{server.http_url}/admin/v1/test-links",
        json.dumps({"ttl": 300}).encode(),
        {"Authorization": f"Bearer {admin.stdout.strip()}"},
    )
    assert status == 201, made
    assert made["url"].startswith(f"{server.http_url}/test?t=")
    assert request(f"{server.http_url}/api/v1/test-ice-servers?t={made['token']}")[0] == 200
    assert request(f"{server.http_url}/admin/v1/test-links", b"{}")[0] == 401
    # One vocabulary: the page gets the doctor's codes, titles and fixes.
    status, vocabulary = request(f"{server.http_url}/test/findings.json")
    assert status == 200
    assert {v["code"]: (v["title"], v["fix"]) for v in vocabulary} == {
        c: (s.title, s.fix) for c, s in CODES.items()
    }
    with urllib.request.urlopen(server.http_url + "/", timeout=10) as resp:
        assert b'href="/test"' in resp.read()
    assert request(f"{server.http_url}/test/static/../../store.py")[0] == 404
