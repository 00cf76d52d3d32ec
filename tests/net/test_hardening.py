"""What one authenticated client must not be able to do to the server or to other clients.

Real ``iceward serve`` processes over loopback (native and pure-Python relay paths both, as the
whole relay suite runs twice); the memory figures come from /proc, as an operator would read them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from iceward.net.fastpath import LISTENER, FastPath
from iceward.stun import attributes as A
from iceward.stun import constants as C

from ..conftest import HOST, RunningServer, make_test_ca
from .test_fastpath import engine  # noqa: F401  (fixture)
from .test_service import rss_kib, udp_peer
from .turnclient import BlockingTurnClient, TurnError

MakeServer = Callable[..., RunningServer]


def test_allocate_delete_churn_beside_a_long_lived_allocation_keeps_memory_flat(
    make_server: MakeServer,
) -> None:
    """Each deleted allocation used to stay in the timer heap until its old expiry, holding its
    closed relay socket and a 64 KiB buffer: RSS grew by ~100 MB per 1,500 rounds."""
    # One address allocating as fast as it can: a load, beyond the per-source request budget.
    server = make_server("--log-level", "warning", "--max-requests-per-source", "0", http=False)
    keeper = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    churner = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    try:
        keeper.allocate()
        for _ in range(200):  # warm up
            churner.allocate()
            churner.refresh(0)
        before = rss_kib(server.proc.pid)
        for _ in range(1500):
            churner.allocate()
            churner.refresh(0)
        growth_kib = rss_kib(server.proc.pid) - before
    finally:
        keeper.close()
        churner.close()
    assert growth_kib < 12 * 1024, f"RSS grew {growth_kib} KiB over 1,500 allocate/delete rounds"


def test_memory_per_live_allocation_holds_no_unused_receive_buffer(
    make_server: MakeServer,
) -> None:
    server = make_server("--log-level", "warning", http=False)
    clients = [BlockingTurnClient((HOST, server.port), "alice", "wonderland") for _ in range(20)]
    many: list[BlockingTurnClient] = []
    try:
        for c in clients:  # warm up
            c.allocate()
        before = rss_kib(server.proc.pid)
        for _ in range(400):
            c = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
            many.append(c)
            c.allocate()
        per_allocation = (rss_kib(server.proc.pid) - before) * 1024 / len(many)
    finally:
        for c in clients + many:
            c.close()
    assert per_allocation < 24 * 1024, f"{per_allocation:.0f} bytes per allocation"


def test_removing_the_ipv6_half_of_a_dual_allocation_harms_nobody(
    make_server: MakeServer,
) -> None:
    """Dual allocation, ChannelBind to an IPv6 peer, Refresh(IPv6, LIFETIME 0), then ChannelData
    on that channel: it used to raise KeyError inside the relay loop (on the native path dropping
    the rest of the batch, other clients' packets with it)."""
    server = make_server(
        "--listen", "::1", "--relay-ip", "127.0.0.1", "--relay-ip", "::1", "--allow-peer", "::1/128"
    )
    v6_peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    v6_peer.bind(("::1", 0))
    v6_peer.settimeout(0.3)
    v6_addr = v6_peer.getsockname()[:2]
    bystander_peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    bystander_peer.bind(("::1", 0))
    bystander_peer.settimeout(2.0)
    hostile = BlockingTurnClient(("::1", server.port), "alice", "wonderland")
    bystander = BlockingTurnClient(("::1", server.port), "alice", "wonderland")
    try:
        bystander.allocate((C.REQUESTED_ADDRESS_FAMILY, A.encode_one_byte(C.FAMILY_IPV6)))
        bystander.channel_bind(0x4001, bystander_peer.getsockname()[:2])
        hostile.allocate_all((C.ADDITIONAL_ADDRESS_FAMILY, A.encode_one_byte(C.FAMILY_IPV6)))
        hostile.channel_bind(0x4000, v6_addr)
        hostile.send_channel_data(0x4000, b"before")
        assert v6_peer.recvfrom(100)[0] == b"before"
        txid = b"\x01" * 12
        reply = hostile.request(
            C.REFRESH,
            [
                (C.REQUESTED_ADDRESS_FAMILY, A.encode_one_byte(C.FAMILY_IPV6)),
                (C.LIFETIME, A.encode_u32(0)),
            ],
            txid,
        )
        assert reply.cls == C.SUCCESS
        for i in range(2000):
            hostile.send_channel_data(0x4000, b"after")
            if i % 100 == 0:
                bystander.send_channel_data(0x4001, b"still here %d" % i)
                assert bystander_peer.recvfrom(100)[0] == b"still here %d" % i
        with pytest.raises(TimeoutError):
            v6_peer.recvfrom(100)  # the IPv6 relay is gone: nothing reaches the peer
        with pytest.raises(TurnError) as refused:  # the channel went with its family
            hostile.channel_bind(0x4000, v6_addr)
        assert refused.value.code == 443
        hostile.refresh(600)  # the IPv4 half lives on
    finally:
        for s in (hostile, bystander):
            s.close()
        v6_peer.close()
        bystander_peer.close()
    time.sleep(0.2)
    log = server.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_a_handler_that_raises_does_not_drop_the_rest_of_the_native_batch(
    engine: object,  # noqa: F811
) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((HOST, 0))
    listener.setblocking(False)
    sender = udp_peer()
    seen: list[bytes] = []
    errors: list[int] = []

    def handler(data: bytes, source: tuple[str, int]) -> None:
        if data == b"boom":
            raise KeyError(2)
        seen.append(data)

    async def run() -> None:
        fast = FastPath(engine, asyncio.get_running_loop(), lambda: errors.append(1))
        fast.register(listener.fileno(), LISTENER, handler)
        payloads = [b"a%d" % i for i in range(20)]
        for p in [*payloads[:10], b"boom", *payloads[10:]]:
            sender.sendto(p, listener.getsockname())
        deadline = time.monotonic() + 3
        while len(seen) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        fast.unregister(listener.fileno())
        fast.close()

    try:
        asyncio.run(run())
    finally:
        listener.close()
        sender.close()
    assert seen == [b"a%d" % i for i in range(20)] and errors == [1]


def test_the_servers_own_listening_address_is_refused_as_a_peer(make_server: MakeServer) -> None:
    """Even with loopback peers allowed: a relay to the listener would nest an allocation."""
    server = make_server()
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    other = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    try:
        relayed = client.allocate()
        for port in (server.port, server.tls_port):
            with pytest.raises(TurnError) as refused:
                client.channel_bind(0x4000, (HOST, port))
            assert refused.value.code == 403
        # Two allocations on one server relaying to each other (two relayed callers) still work.
        their_relay = other.allocate()
        client.channel_bind(0x4000, their_relay)
        other.create_permission(relayed)
        client.send_channel_data(0x4000, b"relay to relay")
        assert other.receive_data() == (None, b"relay to relay")
    finally:
        client.close()
        other.close()
    assert "the server's own address" in server.log_text()


def test_sighup_with_a_mismatched_key_keeps_serving_the_old_certificate(
    tmp_path: Path, make_server: MakeServer
) -> None:
    first = make_test_ca(tmp_path / "first")
    second = make_test_ca(tmp_path / "second")
    live_cert, live_key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    live_cert.write_bytes(first.cert.read_bytes())
    live_key.write_bytes(first.key.read_bytes())
    server = make_server(cert=(live_cert, live_key))

    def handshake_ok(ca: Path) -> bool:
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection((HOST, server.tls_port), timeout=3) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost"),
            ):
                return True
        except (ssl.SSLError, OSError):
            return False

    assert handshake_ok(first.ca_cert)
    live_cert.write_bytes(second.cert.read_bytes())  # the new certificate, the old key
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "TLS reload failed" not in server.log_text():
        time.sleep(0.05)
    log = server.log_text()
    assert "TLS reload failed, keeping the old certificate" in log
    assert all(handshake_ok(first.ca_cert) for _ in range(5))
    assert str(live_cert) in log  # the message names the files
    live_key.write_bytes(second.key.read_bytes())  # the pair completed: the next reload takes it
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not handshake_ok(second.ca_cert):
        time.sleep(0.05)
    assert handshake_ok(second.ca_cert)


def test_channel_data_header_alone_is_harmless(make_server: MakeServer) -> None:
    """A 4-byte ChannelData header naming a bound channel with a lying length."""
    server = make_server()
    peer = udp_peer()
    client = BlockingTurnClient((HOST, server.port), "alice", "wonderland")
    try:
        client.allocate()
        client.channel_bind(0x4000, peer.getsockname())
        client.send_raw(struct.pack("!HH", 0x4000, 1000))
        client.send_channel_data(0x4000, b"fine")
        assert peer.recvfrom(100)[0] == b"fine"
    finally:
        client.close()
        peer.close()


def test_a_password_guessing_flood_is_throttled_and_logged_once(make_server: MakeServer) -> None:
    """5,000 wrong passwords used to be answered at 2,800/s with one WARNING line each."""
    import os

    from iceward.stun.message import encode_message

    server = make_server("--max-auth-failures", "30")
    guesser = BlockingTurnClient((HOST, server.port), "alice", "not-the-password")
    try:
        with pytest.raises(TurnError):
            guesser.allocate()  # learns the nonce; one failure
        attrs = [
            (C.REQUESTED_TRANSPORT, A.encode_one_byte(C.TRANSPORT_UDP)),
            (C.USERNAME, b"alice"),
            (C.REALM, guesser.realm.encode()),
            (C.NONCE, guesser.nonce.encode()),
        ]
        for _ in range(500):
            guesser.send_raw(
                encode_message(
                    C.ALLOCATE, C.REQUEST, os.urandom(12), attrs, integrity_key=guesser._key()
                )
            )
        guesser.sock.settimeout(0.5)
        answers = 0
        while True:
            try:
                guesser.recv_raw()
            except TimeoutError:
                break
            answers += 1
    finally:
        guesser.close()
    assert answers <= 30, f"{answers} of 500 guesses answered"
    log = server.log_text()
    assert log.count("auth refused") == 1, log.count("auth refused")
    metrics = urllib.request.urlopen(server.http_url + "/metrics", timeout=5).read().decode()
    assert 'iceward_dropped_total{reason="auth_failure_rate"}' in metrics
