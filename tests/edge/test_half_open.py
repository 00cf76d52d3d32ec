"""Slowloris at the TLS edge: one source holding 500 half-open TLS connections (a ClientHello
that never ends) uses up its own cap and nobody else's. A legitimate client allocates and relays
over TLS and UDP meanwhile, the 501st connection from the attacker is refused at accept, and the
server closes the 500 itself after the connection timeout, counted by reason and logged once."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from iceward.stun import attributes as A
from iceward.stun import constants as C
from tests.api.test_api import http, metric
from tests.conftest import HOST, RunningServer, start_server
from tests.net.turnclient import BlockingTurnClient

ATTACKER = "127.0.0.3"
HELD = 500  # the default --max-connections-per-source
TIMEOUT = 3.0
# A TLS record header announcing a 512-byte ClientHello, and only its first bytes.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("half-open"), "--connection-timeout", str(TIMEOUT), workers=1
    )
    try:
        yield running
    finally:
        running.stop()


def half_open(server: RunningServer) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ATTACKER, 0))
    sock.settimeout(5)
    sock.connect((HOST, server.tls_port))
    sock.sendall(PARTIAL_HELLO)
    return sock


def server_closed(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def relays(client: BlockingTurnClient, peer: socket.socket) -> bool:
    """Allocate, bind a channel to ``peer`` and get one datagram there."""
    client.allocate()
    peer_address = peer.getsockname()
    client.create_permission(peer_address)
    client.channel_bind(0x4000, peer_address)
    client.send_channel_data(0x4000, b"still served")
    return peer.recvfrom(100)[0] == b"still served"


def test_500_half_open_tls_connections_from_one_source_leave_others_served(
    server: RunningServer,
) -> None:
    held = [half_open(server) for _ in range(HELD)]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    peer.settimeout(3)
    try:
        refused = half_open(server)  # the 501st from the same source
        assert server_closed(refused, 2.0)
        refused.close()

        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        stream = tls.wrap_socket(socket.create_connection((HOST, server.tls_port), timeout=5))
        over_tls = BlockingTurnClient(
            (HOST, server.tls_port), "alice", "wonderland", transport="tls", sock=stream
        )
        over_udp = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
        try:
            assert relays(over_tls, peer)
            assert relays(over_udp, peer)
        finally:
            over_tls.close()
            over_udp.close()

        # The server ends every half-open connection itself once the timeout has passed.
        time.sleep(TIMEOUT)
        still_open = [s for s in held if not server_closed(s, 2.0)]
        assert not still_open, f"{len(still_open)} of {HELD} half-open connections still open"
    finally:
        for sock in held:
            sock.close()
        peer.close()

    metrics = http(server, "GET", "/metrics")[1]
    assert metric(metrics, "iceward_dropped_total", reason="connection_cap") >= 1
    assert metric(metrics, "iceward_dropped_total", reason="tls_handshake") >= HELD
    log = server.log_text()
    assert log.count(f"{ATTACKER} has {HELD} open") == 1, log


def test_the_attackers_cap_is_free_again_once_its_connections_are_closed(
    server: RunningServer,
) -> None:
    time.sleep(0.5)  # the previous test's closes reach the server's per-source count
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland", transport="tcp")
    try:
        client.sock.close()
        client.sock = socket.create_connection(
            (HOST, server.port), timeout=3, source_address=(ATTACKER, 0)
        )
        address = client.allocate((C.LIFETIME, A.encode_u32(60)))
        assert address[0] == HOST
    finally:
        client.close()
