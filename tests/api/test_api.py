"""The HTTP API of a real ``iceward serve`` process: credentials, keys, admin, metrics, health."""

from __future__ import annotations

import datetime
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from iceward.turn.credentials import mint_rest_credential, rest_password
from tests.conftest import HOST, RunningServer
from tests.net.turnclient import BlockingTurnClient, TurnError

MakeServer = Callable[..., RunningServer]


def cli(server: RunningServer, *args: str, input_text: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        input=input_text,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def http(
    server: RunningServer,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.http_url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status, hdrs = response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        raw, status, hdrs = err.read(), err.code, {k.lower(): v for k, v in err.headers.items()}
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode()
    return status, payload, hdrs


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def allocates(server: RunningServer, username: str, password: str) -> bool:
    client = BlockingTurnClient((HOST, server.port), username, password)
    try:
        client.allocate()
        return True
    except TurnError:
        return False
    finally:
        client.close()


def test_ice_servers_for_an_app_backend(make_server: MakeServer) -> None:
    server = make_server()
    key = cli(server, "keys", "add", "backend")
    assert key.startswith("iwk_")
    status, doc, headers = http(
        server, "POST", "/api/v1/ice-servers", {"user": "user-42", "ttl": 600}, key
    )
    assert status == 200, doc
    assert doc["ttl"] == 600
    expires = datetime.datetime.fromisoformat(doc["expiresAt"]).timestamp()
    assert abs(expires - time.time() - 600) < 5
    stun = [s for s in doc["iceServers"] if "username" not in s]
    turn = [s for s in doc["iceServers"] if "username" in s]
    assert stun[0]["urls"] == [f"stun:{HOST}:{server.port}"]
    assert set(turn[0]["urls"]) == {
        f"turn:{HOST}:{server.port}?transport=udp",
        f"turn:{HOST}:{server.port}?transport=tcp",
        f"turns:{HOST}:{server.tls_port}?transport=tcp",
    }
    username, credential = turn[0]["username"], turn[0]["credential"]
    assert username.endswith(":user-42")
    assert credential == rest_password(server.secret, username)
    assert allocates(server, username, credential)
    request_id = headers["x-request-id"]
    log = server.log_text()
    assert request_id in log and "'user-42'" in log and "<redacted>" in log
    assert credential not in log
    # Transport hints keep stun: and the asked-for TURN transports only.
    status, doc, _ = http(
        server, "POST", "/api/v1/ice-servers", {"user": "u", "transports": ["tls"]}, key
    )
    assert status == 200
    assert [s["urls"] for s in doc["iceServers"]] == [
        [f"stun:{HOST}:{server.port}"],
        [f"turns:{HOST}:{server.tls_port}?transport=tcp"],
    ]


def test_keys_are_checked_and_revocation_acts_at_once(make_server: MakeServer) -> None:
    server = make_server()
    key = cli(server, "keys", "add", "backend")
    body = {"user": "u"}
    assert http(server, "POST", "/api/v1/ice-servers", body)[0] == 401
    status, doc, _ = http(server, "POST", "/api/v1/ice-servers", body, "iwk_not-a-key")
    assert status == 401 and "detail" in doc
    assert http(server, "POST", "/api/v1/ice-servers", body, key)[0] == 200
    listed = json.loads(cli(server, "keys", "list", "--json"))
    assert [(k["name"], k["revokedAt"]) for k in listed] == [("backend", None)]
    assert key not in json.dumps(listed)
    cli(server, "keys", "revoke", "backend")
    assert http(server, "POST", "/api/v1/ice-servers", body, key)[0] == 401


def test_malformed_bodies_get_422_naming_the_field(make_server: MakeServer) -> None:
    server = make_server()
    key = cli(server, "keys", "add", "backend")
    status, doc, _ = http(server, "POST", "/api/v1/ice-servers", {"user": "u", "ttl": 5}, key)
    assert status == 422
    assert ["body", "ttl"] in [e["loc"] for e in doc["detail"]]
    status, doc, _ = http(server, "POST", "/api/v1/ice-servers", {"ttl": 600}, key)
    assert status == 422 and ["body", "user"] in [e["loc"] for e in doc["detail"]]
    status, doc, _ = http(
        server, "POST", "/api/v1/ice-servers", {"user": "u", "transports": ["sctp"]}, key
    )
    assert status == 422


def test_rate_limit_per_key(make_server: MakeServer) -> None:
    server = make_server("--api-rate", "0.5")
    fast = cli(server, "keys", "add", "fast")
    other = cli(server, "keys", "add", "other")
    codes = [http(server, "POST", "/api/v1/ice-servers", {"user": "u"}, fast)[0] for _ in range(25)]
    assert codes[:20] == [200] * 20  # the burst
    assert 429 in codes[20:]
    assert http(server, "POST", "/api/v1/ice-servers", {"user": "u"}, other)[0] == 200


def test_turn_rest_api_endpoint(make_server: MakeServer) -> None:
    server = make_server()
    key = cli(server, "keys", "add", "janus")
    status, doc, _ = http(server, "GET", f"/api/v1/turn?service=turn&username=janus&key={key}")
    assert status == 200
    assert set(doc) == {"username", "password", "ttl", "uris"}
    assert doc["username"].endswith(":janus") and doc["ttl"] == 86400
    assert f"turn:{HOST}:{server.port}?transport=udp" in doc["uris"]
    assert allocates(server, doc["username"], doc["password"])
    assert http(server, "GET", "/api/v1/turn?service=turn&username=j&key=wrong")[0] == 401
    assert http(server, "GET", f"/api/v1/turn?service=stun&key={key}")[0] == 422


def test_admin_needs_an_admin_key(make_server: MakeServer) -> None:
    server = make_server()
    app_key = cli(server, "keys", "add", "backend")
    admin = cli(server, "keys", "add", "ops", "--admin")
    assert http(server, "GET", "/admin/v1/allocations")[0] == 401
    assert http(server, "GET", "/admin/v1/allocations", key=app_key)[0] == 401
    assert http(server, "GET", "/admin/v1/allocations", key=admin)[0] == 200
    http(server, "POST", "/api/v1/ice-servers", {"user": "logged"}, app_key)
    status, log, _ = http(server, "GET", "/admin/v1/issuance", key=admin)
    assert status == 200 and log[0]["user"] == "logged" and log[0]["apiKey"] == "backend"
    turn = next(s for s in log[0]["iceServers"] if "username" in s)
    assert turn["credential"] == "<redacted>"


def test_admin_from_a_non_loopback_address_is_refused(make_server: MakeServer) -> None:
    server = make_server("--http", "0.0.0.0:0")
    admin = cli(server, "keys", "add", "ops", "--admin")
    found = re.search(r"HTTP API on http://0\.0\.0\.0:(\d+)", server.log_text())
    assert found
    own_ip = socket.gethostbyname(socket.gethostname())
    if own_ip.startswith("127."):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # route lookup only: nothing is sent
            own_ip = s.getsockname()[0]
    if own_ip.startswith("127."):
        pytest.skip("this machine has no non-loopback address to call from")
    request = urllib.request.Request(f"http://{own_ip}:{found.group(1)}/admin/v1/allocations")
    request.add_header("Authorization", f"Bearer {admin}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403


def test_admin_allocations_are_live_and_can_be_deleted(make_server: MakeServer) -> None:
    server = make_server()
    admin = cli(server, "keys", "add", "ops", "--admin")
    silent_peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_peer.bind((HOST, 0))
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    try:
        relayed = client.allocate()
        client.channel_bind(0x4000, silent_peer.getsockname())
        for _ in range(5):
            client.send_channel_data(0x4000, b"x" * 100)
        for _ in range(5):
            silent_peer.recvfrom(200)

        def report() -> dict[str, Any]:
            status, allocations, _ = http(server, "GET", "/admin/v1/allocations", key=admin)
            assert status == 200 and len(allocations) == 1
            return dict(allocations[0])

        assert eventually(lambda: report()["traffic"]["packets_to_peer"] == 5)
        row = report()
        assert row["user"] == "alice" and row["client"]["transport"] == "udp"
        assert row["relayed"] == [f"{relayed[0]}:{relayed[1]}"]
        assert row["channels"] == [
            {"number": 0x4000, "peer": "{}:{}".format(*silent_peer.getsockname())}
        ]
        assert row["traffic"]["bytes_to_peer"] == 500
        assert row["peersSilent"] is True  # data went out, nothing came back
        silent_peer.sendto(b"now it answers", relayed)
        assert client.receive_data() == (0x4000, b"now it answers")
        assert eventually(lambda: report()["peersSilent"] is False)
        status, _, _ = http(server, "DELETE", f"/admin/v1/allocations/{row['id']}", key=admin)
        assert status == 204
        with pytest.raises(TurnError) as gone:
            client.refresh(600)
        assert gone.value.code == 437
        assert http(server, "DELETE", "/admin/v1/allocations/999999", key=admin)[0] == 404
    finally:
        client.close()
        silent_peer.close()


def test_users_added_and_removed_while_running(make_server: MakeServer) -> None:
    server = make_server()
    assert not allocates(server, "bob", "builder")
    cli(server, "users", "add", "bob", "--password", "builder", "--realm", "iceward.test")
    assert eventually(lambda: allocates(server, "bob", "builder"))
    users = json.loads(cli(server, "users", "list", "--json"))
    assert [u["name"] for u in users] == ["bob"]
    db = (server.data_dir / "iceward.db").read_bytes()
    assert b"builder" not in db  # keys, never passwords
    cli(server, "users", "remove", "bob")
    assert eventually(lambda: not allocates(server, "bob", "builder"))
    # The admin API manages the same users.
    admin = cli(server, "keys", "add", "ops", "--admin")
    status, _, _ = http(
        server, "POST", "/admin/v1/users", {"name": "carol", "password": "x"}, key=admin
    )
    assert status == 201
    assert allocates(server, "carol", "x")
    assert http(server, "DELETE", "/admin/v1/users/carol", key=admin)[0] == 204
    assert http(server, "DELETE", "/admin/v1/users/carol", key=admin)[0] == 404
    # A password no TURN client could send (a control character): refused, not a 500.
    status, doc, _ = http(
        server, "POST", "/admin/v1/users", {"name": "dave", "password": "\x1f"}, key=admin
    )
    assert status == 422 and "OpaqueString" in doc["detail"]


def test_secret_rotation_without_downtime(make_server: MakeServer) -> None:
    server = make_server()
    key = cli(server, "keys", "add", "backend")
    new_secret = cli(server, "secrets", "add", "2026-11")
    before = mint_rest_credential(server.secret, "old", 600, time.time())

    def minted() -> tuple[str, str]:
        doc = http(server, "POST", "/api/v1/ice-servers", {"user": "u"}, key)[1]
        turn = next(s for s in doc["iceServers"] if "username" in s)
        return turn["username"], turn["credential"]

    assert eventually(lambda: minted()[1] == rest_password(new_secret, minted()[0]))
    username, credential = minted()
    assert allocates(server, username, credential)
    assert allocates(server, before.username, before.password)  # the old secret still validates
    cli(server, "secrets", "retire", "2026-11")
    assert eventually(lambda: not allocates(server, username, credential))
    assert allocates(server, *minted())  # new credentials come from the remaining secret
    listed = json.loads(cli(server, "secrets", "list", "--json"))
    assert listed[0]["name"] == "2026-11" and listed[0]["retiredAt"]
    assert new_secret not in json.dumps(listed)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and (
            head == name or head.startswith(name + "{")
        ):
            total += float(value)
    return total


def test_metrics_move_while_traffic_flows(make_server: MakeServer) -> None:
    server = make_server()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(2)
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    try:
        relayed = client.allocate()
        client.channel_bind(0x4000, peer.getsockname())
        before = http(server, "GET", "/metrics")[1]
        assert metric(before, "iceward_allocations_active", transport="udp", family="ipv4") == 1
        for _ in range(10):
            client.send_channel_data(0x4000, b"y" * 200)
            peer.recvfrom(300)
            peer.sendto(b"z" * 50, relayed)
            client.receive_data()
        during = http(server, "GET", "/metrics")[1]
        sent = "iceward_relayed_bytes_total"
        assert (
            metric(during, sent, direction="to_peer", transport="udp")
            - metric(before, sent, direction="to_peer", transport="udp")
            == 2000
        )
        assert metric(during, sent, direction="to_client", transport="udp") == 500
        assert metric(during, "iceward_relay_ports", state="in_use") == 1
        client.refresh(0)
    finally:
        client.close()
        peer.close()
    bad = BlockingTurnClient((HOST, server.port), "alice", "wrong")
    try:
        with pytest.raises(TurnError):
            bad.allocate()
    finally:
        bad.close()
    after = http(server, "GET", "/metrics")[1]
    assert (
        metric(after, "iceward_relayed_bytes_total", direction="to_peer", transport="udp") == 2000
    )
    assert metric(after, "iceward_allocations_active") == 0
    assert metric(after, "iceward_allocations_created_total", transport="udp") == 1
    assert metric(after, "iceward_auth_failures_total", reason="bad_integrity") >= 1
    assert metric(after, "iceward_binding_requests_total") >= 1  # the fixture's readiness probe
    assert metric(after, "iceward_api_requests_total", route="/metrics", status="200") >= 2
    assert "alice" not in after  # no user names as labels


def test_health_readiness_and_openapi(make_server: MakeServer) -> None:
    server = make_server()
    assert http(server, "GET", "/healthz")[:2] == (200, {"status": "ok"})
    status, doc, _ = http(server, "GET", "/readyz")
    assert status == 200 and doc["status"] == "ready"
    assert doc["listeners"] is True and doc["store"] is True
    assert doc["workers"]["up"] == doc["workers"]["total"] >= 1
    status, spec, _ = http(server, "GET", "/openapi.json")
    assert status == 200
    assert {"/api/v1/ice-servers", "/api/v1/turn", "/admin/v1/allocations"} <= set(spec["paths"])
    assert http(server, "GET", "/docs")[0] == 200


def test_cors_allow_list(make_server: MakeServer) -> None:
    server = make_server("--cors-origin", "https://app.example")
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    status, _, headers = http(
        server,
        "OPTIONS",
        "/api/v1/ice-servers",
        headers={"Origin": "https://app.example", **preflight},
    )
    assert status == 200
    assert headers.get("access-control-allow-origin") == "https://app.example"
    status, _, headers = http(
        server,
        "OPTIONS",
        "/api/v1/ice-servers",
        headers={"Origin": "https://evil.example", **preflight},
    )
    assert "access-control-allow-origin" not in headers


def test_http_off_and_a_busy_port(make_server: MakeServer) -> None:
    server = make_server(http=False)
    assert "HTTP API on" not in server.log_text()
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "iceward",
                "serve",
                "--listen",
                HOST,
                "--port",
                "0",
                "--tls-port",
                "0",
                "--http",
                f"{HOST}:{port}",
                "--secret",
                "s",
                "--data-dir",
                str(server.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 2
    assert "cannot start" in proc.stderr and "Traceback" not in proc.stderr


def test_validation_errors_never_echo_the_input(make_server: MakeServer) -> None:
    server = make_server()
    key = cli(server, "keys", "add", "backend")
    admin = cli(server, "keys", "add", "ops", "--admin")
    # A body JSON allows but a JSON answer cannot carry (Infinity) is a 422, not a 500.
    request = urllib.request.Request(
        server.http_url + "/api/v1/ice-servers", data=b"[Infinity]", method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {key}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 422
    status, doc, _ = http(
        server, "POST", "/admin/v1/users", {"name": "a:b", "password": "hunter2"}, key=admin
    )
    assert status == 422 and ["body", "name"] in [e["loc"] for e in doc["detail"]]
    assert "hunter2" not in json.dumps(doc)
