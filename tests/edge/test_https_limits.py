"""HTTPS on the TLS port keeps the stream limits: a connection that asks for HTTP and then says
nothing is closed after the connection timeout, and counts against its source's cap while it is
open; with one process and with two workers (where the supervisor serves it)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.api.test_api import http, metric
from tests.conftest import HOST, CertAuthority, RunningServer, make_test_ca, start_server

SOURCE = "127.0.0.2"
TIMEOUT = 1.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_test_ca(tmp_path_factory.mktemp("https-ca"))


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ca: CertAuthority
) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("https-limits"),
        "--connection-timeout",
        str(TIMEOUT),
        "--max-connections-per-source",
        "2",
        cert=(ca.cert, ca.key),
        workers=request.param,
    )
    try:
        yield running
    finally:
        running.stop()


def https(server: RunningServer, ca: CertAuthority) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca.ca_cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection((HOST, server.tls_port), timeout=5, source_address=(SOURCE, 0))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def dropped(server: RunningServer, reason: str) -> float:
    return metric(http(server, "GET", "/metrics")[1], "iceward_dropped_total", reason=reason)


def test_silent_https_is_closed_and_counted_against_its_source(
    server: RunningServer, ca: CertAuthority
) -> None:
    silent = [https(server, ca), https(server, ca)]
    try:
        time.sleep(0.3)  # (with workers, the handover to the supervisor is on its way)
        with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError)):
            https(server, ca).sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # a third
        start = time.monotonic()
        assert all(closed(s) for s in silent)
        assert time.monotonic() - start < TIMEOUT + 2
    finally:
        for sock in silent:
            sock.close()
    deadline = time.monotonic() + 3
    while dropped(server, "connection_timeout") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dropped(server, "connection_timeout") >= 2
    assert dropped(server, "connection_cap") >= 1
    # The source is free again: a request that speaks is answered.
    with https(server, ca) as fresh:
        fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert fresh.recv(64).startswith(b"HTTP/1.1 200")
