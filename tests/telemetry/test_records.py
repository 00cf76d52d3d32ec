"""``POST /api/v1/telemetry`` on a real server: the token, hostile records, outcomes, metrics,
the dashboard and ``iceward calls``. Records are written as the SDK writes them."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iceward.api.metrics import make_registry
from iceward.api.telemetrytoken import MAX_USES, mint
from iceward.store import Store
from iceward.telemetry.ingest import Ingest, Refused
from tests.api.test_api import cli, http
from tests.conftest import RunningServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("telemetry"), "--node-id", "node-a")
    yield running
    running.stop()


def issue(server: RunningServer, key: str, region: str = "eu") -> dict[str, Any]:
    status, doc, headers = http(
        server, "POST", "/api/v1/ice-servers", {"user": "u1", "region": region}, key=key
    )
    assert status == 200, doc
    doc["requestId"] = headers["x-request-id"]
    return doc


def relayed(token: str, turn_url: str) -> dict[str, Any]:
    relay = {"type": "relay", "protocol": "udp", "relayProtocol": "udp", "url": turn_url,
             "address": "127.0.0.1", "port": 40000}  # fmt: skip
    return {
        "v": 1, "token": token, "callId": "room-1", "tags": {"room": "blue"},
        "start": time.time() * 1000 - 9000, "end": 9000, "reason": "closed",
        "config": {"iceServers": [{"urls": [turn_url]}], "iceTransportPolicy": "relay"},
        "states": [[0, "signaling", "stable"], [5, "signaling", "have-local-offer"],
                   [40, "signaling", "stable"], [60, "iceConnection", "checking"],
                   [300, "iceConnection", "connected"], [310, "connection", "connected"]],
        "candidates": [{"t": 50, "side": "local", **relay}],
        "selected": [{"t": 320, "local": relay, "remote": {"type": "host", "protocol": "udp"}}],
        "samples": [{"t": 400 + i * 2000, "bytesSent": 1000 * i, "bytesReceived": 900 * i}
                    for i in range(5)],
    }  # fmt: skip


def auth_failed(token: str, turn_url: str) -> dict[str, Any]:
    return {
        "v": 1, "token": token, "start": time.time() * 1000 - 6000, "end": 6000,
        "reason": "closed", "tags": {"room": "red"},
        "config": {"iceServers": [{"urls": [turn_url]}], "iceTransportPolicy": "relay"},
        "states": [[0, "signaling", "have-local-offer"], [30, "signaling", "stable"],
                   [40, "iceGathering", "gathering"], [90, "iceGathering", "complete"],
                   [100, "iceConnection", "checking"], [6000, "connection", "closed"]],
        "errors": [{"t": 80, "url": turn_url, "code": 401, "text": "Unauthorized",
                    "family": "ipv4"}],
    }  # fmt: skip


def post(server: RunningServer, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(server.http_url + "/api/v1/telemetry", data=data)
    request.add_header("Content-Type", "text/plain")
    request.add_header("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def metric(server: RunningServer, line_start: str) -> float:
    _, text, _ = http(server, "GET", "/metrics")
    values = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(line_start)]
    return sum(values)


def test_records_are_judged_stored_counted_and_hostile_ones_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    key = cli(server, "keys", "add", "web")
    admin = cli(server, "keys", "add", "ops", "--admin")
    issued = issue(server, key)
    token = issued["telemetryToken"]
    assert token.startswith(issued["requestId"] + ".")
    turn_url = next(u for s in issued["iceServers"] for u in s["urls"] if u.startswith("turn:"))

    # Hostile records: a 4xx each, nothing stored.
    good = relayed(token, turn_url)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with_secret = json.loads(json.dumps(good))
    with_secret["config"]["iceServers"][0]["credential"] = "hunter2"
    secret_url = json.loads(json.dumps(good))
    secret_url["config"]["iceServers"][0]["urls"] = [turn_url + "&password=hunter2"]
    host_address = json.loads(json.dumps(good))
    host_address["candidates"].append({"side": "local", "type": "host", "address": "10.1.2.3"})
    cases = {
        "oversized": (413, None, b'{"v": 1, "pad": "' + b"x" * 40_000 + b'"}'),
        "not json": (422, None, b"{nope"),
        "unknown field": (422, {**good, "extra": 1}, None),
        "wrong type": (422, {**good, "states": "connected"}, None),
        "forged token": (401, {**good, "token": forged}, None),
        "credential key": (422, with_secret, None),
        "credential in url": (422, secret_url, None),
        "private address": (422, host_address, None),
    }
    for name, (want, body, raw) in cases.items():
        status, doc = post(server, body, raw)
        assert status == want, (name, doc)
    status, calls, _ = http(server, "GET", "/admin/v1/calls", key=admin)
    assert status == 200 and calls == []
    assert metric(server, 'iceward_telemetry_refused_total{reason="credentials"}') == 2

    # Judged by the analyzer's rules: relayed over UDP, failed on the credential.
    status, doc = post(server, good)
    assert status == 201 and doc["outcome"] == "connected-relay", doc
    status, doc = post(server, auth_failed(token, turn_url))
    assert status == 201 and doc == {**doc, "outcome": "failed", "cause": "turn-auth-failed"}
    failed_id = doc["id"]

    # The token's use count: MAX_USES records, then 409 and nothing more stored.
    for _ in range(MAX_USES - 2):
        assert post(server, good)[0] == 201
    status, doc = post(server, good)
    assert status == 409, doc
    out = json.loads(cli(server, "calls", "list", "--json", "--limit", "1000"))
    assert len(out) == MAX_USES
    assert {c["outcome"] for c in out} == {"connected-relay", "failed"}
    relay = next(c for c in out if c["outcome"] == "connected-relay")
    assert relay["relayProtocol"] == "udp" and relay["path"] == "relay-host"
    assert relay["region"] == "eu" and relay["node"] == "node-a" and relay["browser"] == "chrome"
    assert relay["tags"] == ["room=blue"] and relay["timeToConnectedMs"] == pytest.approx(300)

    proc = subprocess.run(
        [sys.executable, "-m", "iceward", "calls", "show", failed_id, "--json",
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # a failed call
    bad = subprocess.run(
        [sys.executable, "-m", "iceward", "calls", "list", "--outcome", "lost",
         "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "--outcome" in bad.stderr and "Traceback" not in bad.stderr
    call = json.loads(proc.stdout)
    assert call["findings"][0]["code"] == "turn-auth-failed"
    assert call["issuance"]["requestId"] == issued["requestId"]
    assert call["issuance"]["iceServers"][-1]["credential"] == "<redacted>"

    # Prometheus: by outcome, path, relay protocol, cause; no ids as labels.
    assert metric(server, 'iceward_calls_total{cause="turn-auth-failed",outcome="failed"') == 1
    assert metric(server, 'iceward_calls_total{cause="",outcome="connected-relay"') == MAX_USES - 1
    assert metric(server, "iceward_call_time_to_connected_seconds_count") == MAX_USES - 1
    status, text, _ = http(server, "GET", "/metrics")
    assert "room" not in text and failed_id not in text

    # The dashboard: admin key (HTTP Basic for a browser), rates, causes with fixes, call page.
    status, _, headers = http(server, "GET", "/dashboard")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    basic = "Basic " + base64.b64encode(f"ops:{admin}".encode()).decode()
    status, page, _ = http(server, "GET", "/dashboard", headers={"Authorization": basic})
    assert status == 200
    assert "10.0%" in page  # 1 failed of 10 judged
    assert "turn-auth-failed" in page and "Check the username and credential" in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page
    status, by_day, _ = http(server, "GET", "/dashboard?by=day", headers={"Authorization": basic})
    assert status == 200 and "ICE failure rate by day" in by_day and "10.0%" in by_day
    status, _, _ = http(server, "GET", "/dashboard", headers={"Authorization": "Basic !!"})
    assert status == 401
    status, call_page, _ = http(
        server, "GET", f"/dashboard/calls/{failed_id}", headers={"Authorization": basic}
    )
    assert status == 200 and "Issued iceServers" in call_page and turn_url in call_page
    assert "turn-auth-failed" in call_page and "&lt;redacted&gt;" in call_page


def test_a_source_is_rate_limited(server: RunningServer) -> None:
    """Past the burst, records from one address are refused (429) before they are even parsed."""
    statuses = [post(server, None, b"{}")[0] for _ in range(40)]
    assert 429 in statuses and set(statuses) <= {422, 429}, statuses


def test_token_use_counts_outlive_a_restart(tmp_path: Path) -> None:
    """The counts are committed with the calls: a new process (a fresh Ingest on the same
    store) refuses a token that already posted its records."""
    store = Store(f"sqlite:///{tmp_path / 'calls.db'}")
    key = b"k" * 32
    token = mint(key, "req-1", 600, time.time())
    body = json.dumps(auth_failed(token, "turn:127.0.0.1:3478?transport=udp")).encode()
    first = Ingest.create(store, key, make_registry(), "n")
    for _ in range(MAX_USES):
        assert first.accept(body, "a", "", time.time(), time.monotonic())["outcome"] == "failed"
    assert first.writer.flush()
    second = Ingest.create(store, key, make_registry(), "n")
    with pytest.raises(Refused) as refused:
        second.accept(body, "a", "", time.time(), time.monotonic())
    assert refused.value.status == 409
    assert len(store.list_calls(1000)) == MAX_USES
    store.close()


def test_pairs_checked_unanswered_between_two_nats_name_the_cause(tmp_path: Path) -> None:
    """No TURN, server-reflexive candidates on both sides, every check unanswered: the record's
    pairs let the analyzer's symmetric-NAT rule speak, after no-turn (the field ranking)."""
    store = Store(f"sqlite:///{tmp_path / 'calls.db'}")
    key = b"k" * 32
    srflx = {"type": "srflx", "protocol": "udp", "url": "stun:198.51.100.1:3478"}
    record = {
        "v": 1, "token": mint(key, "req-2", 600, time.time()),
        "start": time.time() * 1000 - 30_000, "end": 30_000, "reason": "failed",
        "config": {"iceServers": [{"urls": ["stun:198.51.100.1:3478"]}]},
        "states": [[0, "signaling", "have-local-offer"], [20, "signaling", "stable"],
                   [30, "iceConnection", "checking"], [300, "iceGathering", "complete"],
                   [15_000, "iceConnection", "disconnected"], [15_000, "connection", "failed"]],
        "candidates": [{"side": "local", **srflx}, {"side": "remote", "type": "srflx",
                                                     "protocol": "udp"}],
        "pairs": [{"local": srflx, "remote": {"type": "srflx", "protocol": "udp"},
                   "state": "in-progress", "requestsSent": 42, "responsesReceived": 0,
                   "vanished": True}],
    }  # fmt: skip
    ingest = Ingest.create(store, key, make_registry(), "n")
    answer = ingest.accept(json.dumps(record).encode(), "a", "", time.time(), time.monotonic())
    assert (answer["outcome"], answer["cause"]) == ("failed", "no-turn")
    assert ingest.writer.flush()
    call = store.get_call(answer["id"])
    assert call is not None
    codes = [f["code"] for f in call["findings"]]
    assert codes[:2] == ["no-turn", "symmetric-nat-no-turn"], codes
    assert any("42 connectivity checks sent, 0 answered" in e for f in call["findings"]
               for e in f["evidence"])  # fmt: skip
    store.close()
