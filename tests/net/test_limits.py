"""Connections that hold descriptors and say nothing: timeouts, the per-source cap, the open-files
limit, and running out of descriptors (real ``iceward serve`` processes, loopback sockets)."""

from __future__ import annotations

import os
import re
import resource
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from iceward.stun import constants as C
from iceward.stun import encode_message, parse_message
from tests.api.test_api import http, metric

from ..conftest import HOST, TEST_WORKERS, RunningServer
from .turnclient import BlockingTurnClient, TurnError, read_stun

MakeServer = Callable[..., RunningServer]


def binding_request() -> tuple[bytes, bytes]:
    txid = os.urandom(12)
    return txid, encode_message(C.BINDING, C.REQUEST, txid, fingerprint=True)


def binding_answered(sock: socket.socket) -> bool:
    """A Binding request over this stream socket gets its success response."""
    txid, request = binding_request()
    try:
        sock.sendall(request)
        reply = parse_message(read_stun(sock))
    except OSError:
        return False
    return reply.transaction_id == txid and reply.cls == C.SUCCESS


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except (ConnectionError, ssl.SSLError):
        pass
    return time.monotonic() - start


def tcp(server: RunningServer, source: str = HOST) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(3)
    sock.connect((HOST, server.port))
    return sock


def tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def dropped(server: RunningServer, reason: str) -> float:
    return metric(http(server, "GET", "/metrics")[1], "iceward_dropped_total", reason=reason)


def test_silent_half_framed_and_tls_silent_connections_are_closed(
    make_server: MakeServer,
) -> None:
    server = make_server("--connection-timeout", "1", "--idle-timeout", "1")
    _, request = binding_request()
    silent = tcp(server)
    half = tcp(server)
    half.sendall(request[:10])  # the header promises more; it never comes
    greeted = tcp(server)  # a whole message first, then half of the next, forever
    assert binding_answered(greeted)
    greeted.sendall(request[:13])
    raw_tls = socket.create_connection((HOST, server.tls_port), timeout=3)
    tls_silent = tls_client().wrap_socket(raw_tls)  # handshake done, then nothing
    no_hello = socket.create_connection((HOST, server.tls_port), timeout=3)  # not even TLS
    try:
        for sock in (silent, half, greeted, tls_silent, no_hello):
            waited = closed_within(sock, 5.0)
            assert waited is not None, f"{sock} still open"
        assert dropped(server, "connection_timeout") >= 3  # silent, half, tls_silent
        assert dropped(server, "idle_timeout") >= 1  # greeted
        assert dropped(server, "tls_handshake") >= 1  # no_hello
    finally:
        for sock in (silent, half, greeted, tls_silent, no_hello):
            sock.close()
    # A connection that speaks is served as before.
    with tcp(server) as fresh:
        assert binding_answered(fresh)


def test_a_connection_times_out_after_the_configured_seconds_not_before(
    make_server: MakeServer,
) -> None:
    server = make_server("--connection-timeout", "2")
    with tcp(server) as sock:
        start = time.monotonic()
        waited = closed_within(sock, 6.0)
        assert waited is not None
        assert 1.9 <= time.monotonic() - start <= 4.0


def test_an_allocation_keeps_its_silent_connection_open(make_server: MakeServer) -> None:
    server = make_server("--connection-timeout", "1", "--idle-timeout", "1")
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland", transport="tcp")
    bystander = tcp(server)
    try:
        client.allocate()
        assert binding_answered(bystander)  # greeted, but no allocation
        time.sleep(2.5)  # both silent for more than idle_timeout
        assert closed_within(bystander, 0.5) is not None
        assert client.refresh(600) == 600  # same connection, still there
    finally:
        client.close()
        bystander.close()
    assert dropped(server, "idle_timeout") >= 1


def test_relayed_data_for_a_client_that_never_reads_is_dropped_and_counted(
    make_server: MakeServer,
) -> None:
    """A TCP client that stops reading holds at most 1 MiB of relayed data in the server's
    write buffer; the rest is dropped like a full UDP socket's and counted. The connection
    itself keeps working once the client reads again."""
    server = make_server()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, server.port))
    client = BlockingTurnClient(
        (HOST, server.port), "alice", "wonderland", transport="tcp", sock=sock
    )
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    try:
        relayed = client.allocate()
        client.create_permission(peer.getsockname())
        client.channel_bind(0x4000, peer.getsockname())
        payload = bytes(1200)
        for _burst in range(80):  # 12 MB in bursts the relay socket's buffer can take
            for _ in range(128):
                peer.sendto(payload, relayed)
            time.sleep(0.002)
        deadline = time.monotonic() + 10
        while dropped(server, "client_backlog") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dropped(server, "client_backlog") > 0
        client.sock.settimeout(5)
        drained = 0
        while drained < (1 << 20):  # what the server held for it arrives in order
            chunk = client.sock.recv(65536)
            assert chunk, "closed"
            drained += len(chunk)
    finally:
        client.close()
        peer.close()


def test_per_source_cap_counts_tcp_and_tls_and_leaves_other_sources_alone(
    make_server: MakeServer,
) -> None:
    # One worker: with several, each takes its share of the cap and the kernel picks the worker.
    server = make_server(
        "--max-connections-per-source", "3", "--connection-timeout", "30", workers=1
    )
    held = [tcp(server), tcp(server)]
    held.append(tls_client().wrap_socket(socket.create_connection((HOST, server.tls_port))))
    try:
        over = tcp(server)
        assert closed_within(over, 2.0) is not None  # the 4th from 127.0.0.1: closed at once
        over.close()
        over_tls = socket.create_connection((HOST, server.tls_port), timeout=3)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_client().wrap_socket(over_tls)
        over_tls.close()
        with tcp(server, source="127.0.0.2") as other:  # another source is still served
            assert binding_answered(other)
        assert binding_answered(held[0]) and binding_answered(held[2])
        assert dropped(server, "connection_cap") >= 2
        held.pop(1).close()  # one closes: its place is free again
        time.sleep(0.3)
        with tcp(server) as again:
            assert binding_answered(again)
    finally:
        for sock in held:
            sock.close()


@contextmanager
def nofile_limit(soft: int, hard: int) -> Iterator[None]:
    """Servers started inside get this RLIMIT_NOFILE (set in the child before exec)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    original = subprocess.Popen
    subprocess.Popen = partial(original, preexec_fn=limit)  # type: ignore[misc]
    try:
        yield
    finally:
        subprocess.Popen = original  # type: ignore[misc]


def processes(pid: int) -> list[int]:
    """The server process and its workers."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def open_files_limit(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/limits").read_text()
    found = re.search(r"Max open files\s+(\d+)\s+(\d+)", text)
    assert found, text
    return int(found.group(1)), int(found.group(2))


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(make_server: MakeServer) -> None:
    with nofile_limit(256, 4096):
        server = make_server()
    pids = processes(server.proc.pid)
    assert len(pids) == (1 if TEST_WORKERS == 1 else 1 + TEST_WORKERS)
    for pid in pids:
        assert open_files_limit(pid) == (4096, 4096), pid
    assert "open files limit raised from 256 to 4096" in server.log_text()


def test_out_of_descriptors_is_logged_once_and_udp_still_answers(make_server: MakeServer) -> None:
    with nofile_limit(128, 128):
        server = make_server("--connection-timeout", "30", "--idle-timeout", "60")
    conns: list[socket.socket] = []
    try:
        for _ in range(150 * TEST_WORKERS + 150):  # well past 128 per process
            try:
                conns.append(tcp(server))
            except OSError:
                pass
        time.sleep(1.5)  # accepted until none is left; the rest shed, sweeps probe
        client = BlockingTurnClient((HOST, server.port), "alice", "wonderland", timeout=3)
        try:
            try:
                client.allocate()  # a relay socket happened to be had
            except TurnError as exc:
                assert exc.code == 508  # not silence
        finally:
            client.close()
        shed = sum(closed_within(c, 0.01) is not None for c in conns)
        assert shed > 0  # connections beyond the table were closed, not left hanging
    finally:
        for c in conns:
            c.close()
    time.sleep(1.0)
    with tcp(server) as fresh:  # descriptors back: served again
        assert binding_answered(fresh)
    assert dropped(server, "fd_pressure") >= 1
    log = server.log_text()
    warnings = log.count("out of file descriptors")
    # One per process that ran out (a summary comes a minute later at the earliest), not one
    # per failed accept; asyncio's own per-accept lines are gone.
    assert 1 <= warnings <= TEST_WORKERS, log[-3000:]
    assert "out of system resource" not in log
    assert log.count("Too many open files") <= TEST_WORKERS
