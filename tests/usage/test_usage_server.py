"""Usage records, reports and byte quotas of a real ``iceward serve`` (a 0.5 s usage interval),
driven by a real TURN client over UDP, read back through the admin API and the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from iceward.usage.quotas import SIGNATURE_HEADER, verify
from tests.api.test_api import cli, eventually, http
from tests.conftest import HOST, RunningServer, require_tool, start_server
from tests.net.turnclient import BlockingTurnClient, TurnError

INTERVAL = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("usage"),
        "--usage-interval", str(INTERVAL), "--relay-ports", "20400-20499",
        "--node-id", "node-a", "--region", "eu", "--region-price", "eu=3",
    )  # fmt: skip
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keys(server: RunningServer) -> tuple[str, str]:
    """(app key, admin key)."""
    return cli(server, "keys", "add", "app"), cli(server, "keys", "add", "ops", "--admin")


def mint(server: RunningServer, key: str, user: str, label: str | None) -> tuple[str, str]:
    body: dict[str, Any] = {"user": user, "ttl": 600}
    if label is not None:
        body["label"] = label
    status, doc, _ = http(server, "POST", "/api/v1/ice-servers", body, key)
    assert status == 200, doc
    turn = next(s for s in doc["iceServers"] if "username" in s)
    return turn["username"], turn["credential"]


class Call:
    """One allocation with a channel to a local peer, relaying whole datagrams both ways."""

    def __init__(self, server: Any, username: str, password: str) -> None:
        """``server``: a :class:`RunningServer`, or a fleet node (its own ``ip``)."""
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind((HOST, 0))
        self.peer.settimeout(2)
        address = (getattr(server, "ip", HOST), server.port)
        self.client = BlockingTurnClient(address, username, password)
        self.relayed = self.client.allocate()
        self.client.channel_bind(0x4000, self.peer.getsockname())

    def exchange(self, count: int, up: int, down: int) -> None:
        """``count`` times: ``up`` bytes to the peer, then ``down`` back (none if 0)."""
        for _ in range(count):
            self.client.send_channel_data(0x4000, b"u" * up)
            self.peer.recvfrom(4096)
            if down:
                self.peer.sendto(b"d" * down, self.relayed)
                self.client.receive_data()

    def relay_until_killed(self, kill: Any, interval: float) -> tuple[list[float], float]:
        """200-byte datagrams to the peer every 5 ms for six usage intervals, then ``kill()``
        (signals sent): when each was relayed, and when the server was killed."""
        sent: list[float] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    self.exchange(1, 200, 0)
                except OSError:
                    return  # the server is gone
                sent.append(time.monotonic())
                time.sleep(0.005)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            time.sleep(6 * interval)
            kill()
            killed = time.monotonic()
        finally:
            stop.set()
            worker.join(10)
            self.close()
        return sent, killed

    def close(self) -> None:
        self.client.close()
        self.peer.close()


def report(server: RunningServer, admin: str, by: str, **query: str) -> dict[str, Any]:
    params = "&".join(f"{k}={v}" for k, v in {"since": "1h", "by": by, **query}.items())
    status, doc, _ = http(server, "GET", f"/admin/v1/usage?{params}", key=admin)
    assert status == 200, doc
    return doc


def group(doc: dict[str, Any], by: str, value: str) -> dict[str, Any] | None:
    return next((g for g in doc["groups"] if g[by] == value), None)


def records(server: RunningServer, label: str) -> list[tuple[int, int, int]]:
    """(final, bytes to peer, bytes to client) of each record of ``label``, oldest first."""
    with sqlite3.connect(server.data_dir / "iceward.db") as db:
        return db.execute(
            "SELECT final, bytes_to_peer, bytes_to_client FROM usage_records WHERE label = ? "
            "ORDER BY id",
            (label,),
        ).fetchall()


def test_report_matches_the_admin_counters_and_interim_records_appear(
    server: RunningServer, keys: tuple[str, str]
) -> None:
    app, admin = keys
    calls = {
        "acme": Call(server, *mint(server, app, "u-acme", "acme")),
        "globex": Call(server, *mint(server, app, "u-globex", "globex")),
    }
    try:
        calls["acme"].exchange(30, 200, 50)
        calls["globex"].exchange(10, 300, 80)
        time.sleep(3 * INTERVAL)  # the calls outlive a few intervals: interim records
        calls["acme"].exchange(20, 200, 50)
        status, live, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
        assert status == 200
        counters = {a["user"]: a["traffic"] for a in live}
        assert counters["u-acme"]["bytes_to_peer"] == 50 * 200

        def caught_up() -> bool:
            doc = report(server, admin, "label")
            return all(
                (g := group(doc, "label", label)) is not None
                and g["bytesToPeer"] == counters[f"u-{label}"]["bytes_to_peer"]
                and g["bytesToClient"] == counters[f"u-{label}"]["bytes_to_client"]
                and g["packetsToPeer"] == counters[f"u-{label}"]["packets_to_peer"]
                and g["packetsToClient"] == counters[f"u-{label}"]["packets_to_client"]
                for label in calls
            )

        assert eventually(caught_up, 5 * INTERVAL + 3), report(server, admin, "label")
        interim = [r for r in records(server, "acme") if r[0] == 0]
        assert len(interim) >= 3, records(server, "acme")
    finally:
        for call in calls.values():
            call.close()
    doc = report(server, admin, "label", pricePerGb="2")
    acme = group(doc, "label", "acme")
    assert acme is not None
    assert acme["allocations"] == 1 and acme["peakConcurrent"] == 1
    assert acme["transportShare"] == {"udp": 1.0}
    assert acme["cost"] == round((50 * 250) / 1e9 * 3, 4)  # the region's price wins
    # The call lived through the 3 intervals slept and more; the report rounds to 0.001 min.
    assert acme["allocationMinutes"] >= round(3 * INTERVAL / 60, 3)
    by_node = report(server, admin, "node")
    assert group(by_node, "node", "node-a") is not None
    assert group(report(server, admin, "region"), "region", "eu") is not None
    # The same figures from the command line, as JSON and CSV.
    cli_doc = json.loads(cli(server, "usage", "--since", "1h", "--by", "label", "--json"))
    cli_acme = group(cli_doc, "label", "acme")
    assert cli_acme is not None and cli_acme["bytesToPeer"] == acme["bytesToPeer"]
    csv_text = cli(server, "usage", "--since", "1h", "--by", "label", "--csv")
    assert csv_text.splitlines()[0].startswith("label,bytesToPeer,bytesToClient,gbToPeer")
    assert any(line.startswith(f"acme,{acme['bytesToPeer']},") for line in csv_text.splitlines())


TOTALS = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)")
UCLIENT_LENGTH = 400


def test_uclient_calls_with_two_labels_match_the_clients_own_counters(
    server: RunningServer, keys: tuple[str, str]
) -> None:
    """coturn's uclient, client to client (-y), once per label at the same time: what it says it
    sent and received is what the report says each label relayed, within 1%."""
    uclient = require_tool("turnutils_uclient")
    app, admin = keys
    runs = {}
    for label in ("umbrella", "cyberdyne"):
        username, password = mint(server, app, f"uc-{label}", label)
        runs[label] = subprocess.Popen(
            [uclient, "-y", "-c", "-m", "1", "-n", "100", "-l", str(UCLIENT_LENGTH), "-z", "5",
             "-u", username, "-w", password, "-p", str(server.port), HOST],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    totals = {}
    for label, proc in runs.items():
        out, _ = proc.communicate(timeout=60)
        found = TOTALS.findall(out)
        assert proc.returncode == 0 and found, out[-2000:]
        totals[label] = (int(found[-1][0]), int(found[-1][1]))

    def matches() -> bool:
        doc = report(server, admin, "label")
        for label, (sent, received) in totals.items():
            g = group(doc, "label", label)
            if g is None or g["allocations"] < 2:
                return False
            if abs(g["bytesToPeer"] - sent * UCLIENT_LENGTH) > 0.01 * sent * UCLIENT_LENGTH:
                return False
            if abs(g["bytesToClient"] - received * UCLIENT_LENGTH) > 0.01 * sent * UCLIENT_LENGTH:
                return False
        return True

    assert eventually(matches, 4 * INTERVAL + 5), (
        totals,
        [g for g in report(server, admin, "label")["groups"] if g["label"] in totals],
    )


def test_block_quota_refuses_new_allocations_and_ends_the_running_one(
    server: RunningServer, keys: tuple[str, str]
) -> None:
    app, admin = keys
    out = cli(server, "quotas", "set", "--label", "initech", "--bytes", "4kB", "--period", "day")
    assert "added quota" in out
    call = Call(server, *mint(server, app, "u-initech", "initech"))
    try:
        call.exchange(10, 500, 10)  # 5 kB: past the limit

        def ended() -> bool:
            _, live, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
            return not any(a["user"] == "u-initech" for a in live)

        assert eventually(ended, 4 * INTERVAL + 3)
    finally:
        call.close()
    username, password = mint(server, app, "u-initech-2", "initech")
    client = BlockingTurnClient((HOST, server.port), username, password)

    def refused() -> TurnError | None:
        try:
            client.allocate()
        except TurnError as exc:
            return exc
        client.refresh(0)
        return None

    try:
        assert eventually(lambda: refused() is not None, 2 * INTERVAL + 3)
        error = refused()
        assert error is not None and error.code == 486
        assert "Byte quota exceeded: label initech" in str(error)
    finally:
        client.close()
    listed = json.loads(cli(server, "quotas", "list", "--json"))
    mine = next(q for q in listed if q.get("label") == "initech")
    assert mine["usedBytes"] >= 5000 and mine["bytes"] == 4000
    _, metrics, _ = http(server, "GET", "/metrics")
    assert 'iceward_quota_refusals_total{quota="bytes"}' in metrics
    assert 'iceward_usage_events_total{event="quota_ended"} 1.0' in metrics
    assert "initech" not in metrics  # no per-label metric labels
    assert "removed 1 quota" in cli(server, "quotas", "remove", "--label", "initech")


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[bytes, str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get(SIGNATURE_HEADER, "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_notify_quota_posts_signed_notices_at_80_and_100_percent(
    server: RunningServer, keys: tuple[str, str]
) -> None:
    app, admin = keys
    receiver = ThreadingHTTPServer((HOST, 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://{HOST}:{receiver.server_address[1]}/hook"
    status, quota, _ = http(
        server, "POST", "/admin/v1/quotas",
        {"user": "u-hooli", "bytes": "10kB", "period": "month", "action": "notify",
         "webhook": url},
        admin,
    )  # fmt: skip
    assert status == 201, quota
    secret = quota["webhookSecret"]
    call = Call(server, *mint(server, app, "u-hooli", None))
    try:
        call.exchange(17, 500, 0)  # 8.5 kB: 85%
        assert eventually(lambda: len(_Receiver.received) == 1, 4 * INTERVAL + 3)
        call.exchange(4, 500, 0)  # 10.5 kB: 105%
        assert eventually(lambda: len(_Receiver.received) == 2, 4 * INTERVAL + 3)
    finally:
        call.close()
        receiver.shutdown()
    levels = []
    for body, signature in _Receiver.received:
        assert verify(secret, body, signature, time.time()), signature
        assert not verify(secret + "x", body, signature, time.time())
        doc = json.loads(body)
        assert doc["user"] == "u-hooli" and doc["limitBytes"] == 10_000
        levels.append(doc["level"])
        timestamp = signature.split(",")[0][2:]
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        assert signature.endswith("sha256=" + mac.hexdigest())  # as the README documents it
    assert levels == [80, 100]
    time.sleep(3 * INTERVAL)
    assert len(_Receiver.received) == 2  # once per level
    assert http(server, "DELETE", f"/admin/v1/quotas/{quota['id']}", key=admin)[0] == 204


def test_cost_model_arithmetic() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", "cost", "--calls", "1000", "--kbps", "50",
         "--relay-share", "0.2", "--price-per-gb", "0.05", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    assert doc["mbpsPeak"] == 20.0  # 200 relayed calls x 50 kbps x 2 directions
    assert doc["gbPerMonth"] == pytest.approx(20e6 / 8 * 30.4375 * 86400 / 1e9, abs=0.1)
    assert doc["costPerMonth"] == pytest.approx(doc["gbPerMonth"] * 0.05, abs=0.01)


def test_cost_from_measured_usage(server: RunningServer, keys: tuple[str, str]) -> None:
    _, admin = keys
    total = report(server, admin, "label")["total"]
    doc = json.loads(cli(server, "cost", "--from-usage", "1h", "--price-per-gb", "1", "--json"))
    relayed = total["bytesToPeer"] + total["bytesToClient"]
    assert relayed > 0
    assert doc["gb"] == pytest.approx(relayed / 1e9, rel=1e-3, abs=1e-6)
    assert doc["mbpsPeak"] > 0
    assert doc["costPerMonth"] == pytest.approx(doc["gbPerMonth"], abs=0.01)
