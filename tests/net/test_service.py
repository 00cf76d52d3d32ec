"""End-to-end behaviour of a real ``iceward serve`` process over loopback sockets."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iceward.turn.credentials import mint_rest_credential, rest_password

from ..conftest import HOST, RunningServer, stun_binding
from .turnclient import BlockingTurnClient, TurnError

MakeServer = Callable[..., RunningServer]


def udp_peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(2.0)
    return sock


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_relay_both_ways_with_channel_and_send_indication(
    make_server: MakeServer, transport: str
) -> None:
    server = make_server()
    peer = udp_peer()
    peer_addr = peer.getsockname()
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland", transport=transport)
    try:
        relayed = client.allocate()
        assert relayed[0] == HOST
        client.create_permission(peer_addr)
        client.send_indication(peer_addr, b"via send indication")
        data, source = peer.recvfrom(2048)
        assert (data, source) == (b"via send indication", relayed)
        peer.sendto(b"back as data indication", relayed)
        assert client.receive_data() == (None, b"back as data indication")
        client.channel_bind(0x4001, peer_addr)
        for i in range(50):
            payload = os.urandom(random.randint(1, 1200)) + bytes([i])
            client.send_channel_data(0x4001, payload)
            got, source = peer.recvfrom(2048)
            assert got == payload and source == relayed
            peer.sendto(payload[::-1], relayed)
            assert client.receive_data() == (0x4001, payload[::-1])
        client.refresh(0)
    finally:
        client.close()
        peer.close()
    time.sleep(0.3)
    log = server.log_text()
    assert "allocation end" in log
    assert re.search(r"to_peer_packets=51 .*to_client_packets=51", log), log


def test_send_to_a_refused_peer_is_never_delivered(make_server: MakeServer) -> None:
    server = make_server(allow_loopback=False)
    peer = udp_peer()
    peer.settimeout(0.5)
    peer_addr = peer.getsockname()
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    try:
        client.allocate()
        with pytest.raises(TurnError) as refused:
            client.create_permission(peer_addr)
        assert refused.value.code == 403
        with pytest.raises(TurnError) as refused_channel:
            client.channel_bind(0x4000, peer_addr)
        assert refused_channel.value.code == 403
        client.send_indication(peer_addr, b"must not arrive")
        client.send_channel_data(0x4000, b"nor this")
        with pytest.raises(socket.timeout):
            peer.recvfrom(2048)
    finally:
        client.close()
        peer.close()
    assert "peer refused" in server.log_text() and "loopback" in server.log_text()


def test_malformed_flood_leaves_the_server_answering_with_bounded_memory(
    make_server: MakeServer,
) -> None:
    server = make_server()
    before = rss_kib(server.proc.pid)
    rng = random.Random(7)
    target = (HOST, server.port)
    templates = [b"\x00\x01\x00\x08\x21\x12\xa4\x42", b"\x40\x00\xff\xff", b"\x00\x03"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # From another address than the clients below: a flooding source is held to its
        # request budget, its neighbours are not.
        s.bind(("127.0.0.3", 0))
        deadline = time.monotonic() + 3.0
        sent = 0
        while sent < 30000 and time.monotonic() < deadline:
            head = rng.choice(templates)
            s.sendto(head + rng.randbytes(rng.randint(0, 1400)), target)
            sent += 1
            if sent % 500 == 0:
                time.sleep(0.001)
    # TCP garbage closes that connection, nothing else.
    with socket.create_connection(target, timeout=2) as t:
        t.sendall(b"\xff" * 64)
        t.settimeout(2)
        assert t.recv(10) == b""
    assert stun_binding(server.port, timeout=2.0) is not None
    assert server.proc.poll() is None
    growth = rss_kib(server.proc.pid) - before
    assert growth < 20 * 1024, f"RSS grew by {growth} KiB after {sent} malformed datagrams"
    client = BlockingTurnClient(target, "alice", "wonderland")
    try:
        assert client.allocate()[0] == HOST
    finally:
        client.close()


def test_relay_port_range_is_respected_and_exhaustion_gives_508(make_server: MakeServer) -> None:
    base = random.randrange(42000, 60000, 10)
    server = make_server("--relay-ports", f"{base}-{base + 3}")
    clients = []
    try:
        ports = set()
        for _ in range(4):
            c = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
            clients.append(c)
            ports.add(c.allocate()[1])
        assert ports == set(range(base, base + 4))
        extra = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
        clients.append(extra)
        with pytest.raises(TurnError) as full:
            extra.allocate()
        assert full.value.code == 508
    finally:
        for c in clients:
            c.close()


def test_sigterm_closes_cleanly_and_logs_open_allocations(make_server: MakeServer) -> None:
    server = make_server()
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland", transport="tcp")
    try:
        client.allocate()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
    finally:
        client.close()
    log = server.log_text()
    assert "reason='server shutdown'" in log
    assert "Traceback" not in log


def test_rest_credential_from_the_cli_works_against_the_server(make_server: MakeServer) -> None:
    server = make_server()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iceward",
            "credentials",
            "--secret",
            server.secret,
            "--user",
            "bot",
            "--ttl",
            "120",
            "--port",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    doc = json.loads(out.stdout)
    assert doc["ttl"] == 120
    expiry, user = doc["username"].split(":")
    assert user == "bot" and abs(int(expiry) - time.time() - 120) < 5
    assert doc["password"] == rest_password(server.secret, doc["username"])
    assert f"turn:127.0.0.1:{server.port}?transport=udp" in doc["uris"]
    turn = [s for s in doc["iceServers"] if "username" in s]
    assert turn[0]["credential"] == doc["password"]
    client = BlockingTurnClient((HOST, server.port), doc["username"], doc["password"])
    try:
        client.allocate()
    finally:
        client.close()
    expired = mint_rest_credential(server.secret, "late", 10, time.time() - 100)
    late = BlockingTurnClient((HOST, server.port), expired.username, expired.password)
    try:
        with pytest.raises(TurnError) as refused:
            late.allocate()
        assert refused.value.code == 401
    finally:
        late.close()
    assert "expired" in server.log_text()


def test_no_flags_generates_a_secret_once_and_prints_working_ice_servers(
    make_server: MakeServer,
) -> None:
    server = make_server(secret="", users={})
    secret_file = server.data_dir / "rest-secret"
    assert secret_file.exists() and oct(secret_file.stat().st_mode & 0o777) == "0o600"
    deadline = time.monotonic() + 10
    while "# iceServers above" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # printed just after the listeners are up
    printed = server.log_text()
    doc = json.loads(printed[printed.index("{") : printed.index("\n}") + 2])
    turn = next(s for s in doc["iceServers"] if "username" in s)
    assert any(u.startswith("turns:") for u in turn["urls"])
    client = BlockingTurnClient((HOST, server.port), turn["username"], turn["credential"])
    try:
        client.allocate()
    finally:
        client.close()
    first_secret = secret_file.read_text()
    server.stop()
    make_server("--data-dir", str(server.data_dir), secret="", users={})
    assert secret_file.read_text() == first_secret  # kept, not regenerated


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--relay-ports", "5000-4000"], "relay-ports"),
        (["--relay-ports", "abc"], "LOW-HIGH"),
        (["--user", "nopassword"], "NAME:PASSWORD"),
        (["--listen", "not-an-ip"], "listen"),
        (["--allow-peer", "0.0.0.0/0"], "never"),
        (["--config", "/nonexistent/iceward.toml"], "does not exist"),
        (["--cert", "/tmp/only-cert.pem"], "--cert and --key"),
    ],
)
def test_bad_configuration_exits_2_with_a_message(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_toml_config_file_and_environment(tmp_path: Path, make_server: MakeServer) -> None:
    config = tmp_path / "iceward.toml"
    config.write_text('realm = "from-file"\nuser = ["carol:fromfile"]\n')
    os.environ["ICEWARD_MAX_LIFETIME"] = "1800"
    try:
        server = make_server("--config", str(config), users={}, realm=None)
    finally:
        del os.environ["ICEWARD_MAX_LIFETIME"]
    client = BlockingTurnClient((HOST, server.port), "carol", "fromfile")
    try:
        client.allocate()
        assert client.realm == "from-file"
        assert client.refresh(99999) == 1800  # ICEWARD_MAX_LIFETIME from the environment
    finally:
        client.close()


def test_ipv6_clients_and_dual_family_allocations(make_server: MakeServer) -> None:
    from iceward.stun import attributes as A
    from iceward.stun import constants as C

    server = make_server(
        "--listen",
        "::1",
        "--relay-ip",
        "127.0.0.1",
        "--relay-ip",
        "::1",
        "--allow-peer",
        "::1/128",
    )
    peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    peer.bind(("::1", 0))
    peer.settimeout(2.0)
    client = BlockingTurnClient(("::1", server.port), "alice", "wonderland")
    try:
        relayed = client.allocate_all((C.ADDITIONAL_ADDRESS_FAMILY, A.encode_one_byte(2)))
        assert [h for h, _ in relayed] == ["127.0.0.1", "::1"]
        peer_addr = peer.getsockname()[:2]
        client.channel_bind(0x4000, peer_addr)
        client.send_channel_data(0x4000, b"over ipv6")
        data, source = peer.recvfrom(100)
        assert data == b"over ipv6" and source[:2] == relayed[1]
        peer.sendto(b"back", relayed[1])
        assert client.receive_data() == (0x4000, b"back")
    finally:
        client.close()
        peer.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_tls_certificate(
    tmp_path: Path, make_server: MakeServer, workers: int
) -> None:
    """With several workers the supervisor passes SIGHUP on: every TLS connection, whichever
    worker accepts it, presents the new certificate."""
    import ssl

    from ..conftest import make_test_ca

    first = make_test_ca(tmp_path / "first")
    live_cert, live_key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    live_cert.write_bytes(first.cert.read_bytes())
    live_key.write_bytes(first.key.read_bytes())
    server = make_server(cert=(live_cert, live_key), workers=workers)

    def presented_issuer_ok(ca: Path) -> bool:
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection((HOST, server.tls_port), timeout=3) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost"),
            ):
                return True
        except ssl.SSLCertVerificationError:
            return False

    second = make_test_ca(tmp_path / "second")
    assert presented_issuer_ok(first.ca_cert) and not presented_issuer_ok(second.ca_cert)
    live_cert.write_bytes(second.cert.read_bytes())
    live_key.write_bytes(second.key.read_bytes())
    server.proc.send_signal(signal.SIGHUP)

    def all_new() -> bool:
        return all(presented_issuer_ok(second.ca_cert) for _ in range(12))

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all_new():
        time.sleep(0.1)
    assert all_new()
    assert server.log_text().count("reloaded TLS certificate") == workers


def _allocates(server: RunningServer, username: str, password: str) -> bool:
    client = BlockingTurnClient((HOST, server.port), username, password)
    try:
        client.allocate()
        return True
    except TurnError:
        return False
    finally:
        client.close()


def _iceward(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "iceward", *args], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_static_users_and_the_generated_rest_secret_coexist(make_server: MakeServer) -> None:
    """Adding --user keeps the data dir's REST secret: credentials minted before still work,
    and the credential API still mints (it answered 503 once a static user was given)."""
    import urllib.request

    first = make_server(secret="", users={})
    data_dir = str(first.data_dir)
    minted = json.loads(_iceward("credentials", "--data-dir", data_dir, "--user", "early"))
    first.stop()
    server = make_server("--data-dir", data_dir, secret="", users={"alice": "wonderland"})
    assert _allocates(server, minted["username"], minted["password"])
    assert _allocates(server, "alice", "wonderland")
    key = _iceward("keys", "add", "backend", "--data-dir", data_dir).strip()
    request = urllib.request.Request(
        server.http_url + "/api/v1/ice-servers",
        data=json.dumps({"user": "u1"}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        turn = next(s for s in json.load(response)["iceServers"] if "username" in s)
    assert _allocates(server, turn["username"], turn["credential"])
    deadline = time.monotonic() + 10
    while "# iceServers above" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "static users (alice) work too" in server.log_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_ephemeral_ports_are_reported_in_the_ready_file(
    make_server: MakeServer, workers: int
) -> None:
    """--port 0 and --tls-port -1 (the fixture's): ports the kernel picks, one for UDP and TCP,
    written with the HTTP address to --ready-file once serving; the file goes when it stops."""
    import ssl

    server = make_server(workers=workers)
    ready = server.log_path.parent / "ready.json"
    doc = json.loads(ready.read_text())
    assert doc["port"] == server.port and doc["tls_port"] == server.tls_port
    assert 0 not in (server.port, server.tls_port) and server.port != server.tls_port
    assert doc["http"] == f"127.0.0.1:{server.http_port}"
    assert stun_binding(server.port) is not None
    with socket.create_connection((HOST, server.port), timeout=3):
        pass  # TCP on the UDP port
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((HOST, server.tls_port), timeout=3) as raw,
        context.wrap_socket(raw) as tls,
    ):
        assert tls.version() is not None
    assert server.stop() == 0
    assert not ready.exists()
    assert "Traceback" not in server.log_text()
